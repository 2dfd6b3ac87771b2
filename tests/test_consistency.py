"""dvc.yaml, params.yaml, stages/ and the flow agree with each other."""

import ast
import importlib
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from chatforge.core.config import load_params_file

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def chatforge_imports(path: Path, seen: set[str] | None = None) -> set[str]:
    """Every chatforge module a file imports, transitively (lazy imports inside functions too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith("chatforge"):
                continue
            file = REPO / (name.replace(".", "/") + ".py")
            package = REPO / name.replace(".", "/") / "__init__.py"
            for f in (file, package):
                if f.exists() and str(f.relative_to(REPO)) not in seen:
                    seen.add(str(f.relative_to(REPO)))
                    chatforge_imports(f, seen)
    return seen


@pytest.mark.parametrize("stage", list(DVC))
def test_stage_module_params_and_deps(stage):
    spec = DVC[stage]
    assert spec["cmd"] == f"python -m stages.{stage}", "a stage's cmd runs the module named as the stage"
    module = importlib.import_module(f"stages.{stage}")
    assert callable(module.main)
    sections = typing.get_type_hints(module.Params)
    assert sorted(spec["params"]) == sorted(sections), "dvc.yaml params must be the sections the stage reads"
    load_params_file(module.Params, REPO / "params.yaml")          # the repo's params load for this stage
    deps = spec["deps"]
    assert f"stages/{stage}.py" in deps
    for mod in chatforge_imports(REPO / "stages" / f"{stage}.py") - {"chatforge/__init__.py"}:
        assert any(mod == d or (d.endswith("/") and mod.startswith(d)) for d in deps), \
            f"dvc.yaml stage '{stage}' imports {mod} but does not depend on it"


def test_every_params_section_is_read_by_a_stage():
    from flows.placement import SECTION, load_orchestration

    read = {s for spec in DVC.values() for s in spec["params"]}
    load_orchestration(REPO)                                    # the one section the flow reads instead
    assert set(PARAMS) <= read | {SECTION}, f"sections no stage reads: {set(PARAMS) - read - {SECTION}}"


def test_flow_order_is_dvc_order():
    from dvc.repo import Repo

    from flows.pipeline import dvc_stage_order

    order = dvc_stage_order(REPO)
    assert sorted(order) == sorted(DVC)
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        produced = {str(out.fs_path): name for name, s in stages.items() for out in s.outs}
        for i, name in enumerate(order):
            for dep in stages[name].deps:
                for out_path, producer in produced.items():
                    if str(dep.fs_path).startswith(out_path) and producer != name:
                        assert order.index(producer) < i, f"{name} runs before {producer}, which makes its input"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_profiles_load_for_every_stage(profile, tmp_path):
    """A profile only sets keys the stages know, with values of the right type."""
    from flows.profiles import apply_profile

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    assert apply_profile(tmp_path, profile), f"profiles/{profile}.yaml changes nothing"
    for stage in DVC:
        load_params_file(importlib.import_module(f"stages.{stage}").Params, tmp_path / "params.yaml")
