"""Typed config loading: every error names the file and the key."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from chatforge.core.config import ConfigError, field_help, flatten, load_config, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = field_help(3.0e-4, "learning rate")
    steps: int = field_help(10, "steps")
    mode: Literal["a", "b"] = field_help("a", "a choice")
    out: Path = field_help(Path("models/x"), "output dir")


@dataclass(frozen=True)
class Item:
    kind: str = field_help(help="required")
    limit: int = field_help(0, "")


@dataclass(frozen=True)
class Section:
    inner: Inner = field_help(Inner(), "nested")
    items: list[Item] = field_help([], "list of dataclasses")
    flag: bool = field_help(False, "")

    def __post_init__(self):
        if self.flag and not self.items:
            raise ValueError("'flag' needs at least one item")


@dataclass(frozen=True)
class Params:
    seed: int
    section: Section


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return ["--params", str(path)]


def test_loads_typed_values_and_defaults(tmp_path):
    argv = write(tmp_path, "seed: 3\nsection:\n  inner: {lr: 1.0e-3}\n  items: [{kind: x}]\nother: {ignored: 1}\n")
    cfg = load_config(Params, argv)
    assert cfg.seed == 3 and cfg.section.inner.lr == 1e-3 and cfg.section.inner.steps == 10
    assert cfg.section.items[0] == Item("x", 0) and isinstance(cfg.section.inner.out, Path)
    with pytest.raises(Exception):
        cfg.seed = 4                                         # frozen


def test_unknown_key_names_key_and_file(tmp_path):
    argv = write(tmp_path, "seed: 1\nsection:\n  inner: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'section.inner.lrr'"):
        load_config(Params, argv)


def test_wrong_type_names_key(tmp_path):
    argv = write(tmp_path, "seed: 1\nsection:\n  inner: {steps: ten}\n")
    with pytest.raises(ConfigError, match=r"key 'section.inner.steps' must be int, got str 'ten'"):
        load_config(Params, argv)


def test_yaml_exponent_string_gets_a_hint(tmp_path):
    argv = write(tmp_path, "seed: 1\nsection:\n  inner: {lr: 3e-4}\n")
    with pytest.raises(ConfigError, match=r"write 3.0e-4"):
        load_config(Params, argv)


def test_bool_is_not_an_int_and_literal_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="'seed' must be int"):
        load_config(Params, write(tmp_path, "seed: true\nsection: {}\n"))
    with pytest.raises(ConfigError, match=r"'section.inner.mode' must be one of \['a', 'b'\]"):
        load_config(Params, write(tmp_path, "seed: 1\nsection: {inner: {mode: c}}\n"))


def test_missing_required_key_and_list_item(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'seed'"):
        load_config(Params, write(tmp_path, "section: {}\n"))
    with pytest.raises(ConfigError, match=r"missing required key 'section.items\[0\].kind'"):
        load_config(Params, write(tmp_path, "seed: 1\nsection: {items: [{limit: 2}]}\n"))


def test_cross_key_check_names_section(tmp_path):
    with pytest.raises(ConfigError, match="section 'section': 'flag' needs at least one item"):
        load_config(Params, write(tmp_path, "seed: 1\nsection: {flag: true}\n"))


def test_overrides_are_type_checked(tmp_path):
    argv = write(tmp_path, "seed: 1\nsection: {}\n")
    cfg = load_config(Params, argv + ["--set", "section.inner.lr=3e-4", "--set", "section.inner.steps=7"])
    assert cfg.section.inner.lr == 3e-4 and cfg.section.inner.steps == 7
    with pytest.raises(ConfigError, match=r"with --set overrides.*'section.inner.steps' must be int"):
        load_config(Params, argv + ["--set", "section.inner.steps=7.5"])
    with pytest.raises(ConfigError, match="reads sections.*not 'pretrain'"):
        load_config(Params, argv + ["--set", "pretrain.lr=1.0"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(Params, argv + ["--set", "section.flag"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_config(Params, ["--params", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Params, write(tmp_path, "seed: [1\n"))


def test_to_dict_and_flatten_round_trip(tmp_path):
    cfg = load_config(Params, write(tmp_path, "seed: 1\nsection: {items: [{kind: x}]}\n"))
    data = to_dict(cfg)
    assert data["section"]["inner"]["out"] == "models/x"
    flat = flatten(data)
    assert flat["section.inner.lr"] == 3e-4 and flat["section.items"] == '[{"kind": "x", "limit": 0}]'


def test_repo_params_file_loads_for_prepare_data():
    from stages.prepare_data import Params as PrepareParams

    cfg = load_config(PrepareParams, ["--params", str(Path(__file__).resolve().parents[1] / "params.yaml")])
    assert cfg.prepare_data.sources[0].kind == "chitchat"


def test_git_commit_is_dirty_for_code_changes_but_not_for_dvc_lock(tmp_path):
    import subprocess

    from chatforge.core.tracking import git_commit

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "stages").mkdir()
    for name in ("dvc.lock", "params.yaml", "stages/a.py"):
        (tmp_path / name).write_text("v1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    sha = git("rev-parse", "HEAD")
    (tmp_path / "dvc.lock").write_text("v2\n")                  # dvc repro rewrites it after every stage
    assert git_commit(tmp_path / "stages") == sha
    (tmp_path / "params.yaml").write_text("v2\n")
    assert git_commit(tmp_path / "stages") == sha + "-dirty"    # seen from a subfolder too
