"""The library's shape: rooms (subpackages) in layers, no import upward or in a circle, thin stages.

Layers, lowest first: a module may import its own room and any room below it, never one above, so
that the tree reads bottom-up (core is used by everything, serve by nothing in the library).
"""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "chatforge"
LAYERS = ["core", "data", "train", "inference", "rl", "eval", "serve"]
STAGE_MAX_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[str]:
    return sorted(module_name(p) for p in LIBRARY.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every absolute module a file imports, lazy imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the library imports absolutely"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_graph() -> nx.DiGraph:
    """chatforge module -> the chatforge modules it imports."""
    known = set(modules())
    graph = nx.DiGraph()
    for path in LIBRARY.rglob("*.py"):
        src = module_name(path)
        graph.add_node(src)
        for name in imported(path):
            if name in known and name != src and not src.startswith(name + "."):
                graph.add_edge(src, name)
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_room():
    loose = [m for m in modules() if m != "chatforge" and layer(m) is None]
    assert not loose, f"modules outside the subpackages {LAYERS}: {loose}"


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_runs_upward():
    upward = [(a, b) for a, b in import_graph().edges if layer(a) is not None and layer(b) is not None
              and layer(b) > layer(a)]
    assert not upward, "imports from a lower room to a higher one (order: " + " < ".join(LAYERS) + f"): {upward}"


def test_library_never_imports_stages_or_flows():
    bad = [(module_name(p), n) for p in LIBRARY.rglob("*.py") for n in imported(p)
           if n.split(".")[0] in ("stages", "flows")]
    assert not bad, f"chatforge imports stages/flows: {bad}"


def test_every_module_imports_on_its_own():
    """Each module imported in a fresh set of chatforge modules (third-party ones stay cached)."""
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {modules()!r}:\n"
        "    for m in [m for m in sys.modules if m == 'chatforge' or m.startswith('chatforge.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as err:\n        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("stage", sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"))
def test_stage_modules_are_thin(stage):
    lines = len((REPO / "stages" / f"{stage}.py").read_text().splitlines())
    assert lines <= STAGE_MAX_LINES, f"stages/{stage}.py has {lines} lines: move its logic into chatforge/"
