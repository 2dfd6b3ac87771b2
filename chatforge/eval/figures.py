"""Pieces of the report card: the environment, code size, markdown tables and PNG plots.

The evaluate stage gathers the numbers; this module only formats them, so the report can be
rendered (and tested) from plain dicts.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "tokenizers", "trl", "datasets", "mlflow", "dvc", "prefect", "onnxruntime")


def environment(root: Path) -> dict[str, Any]:
    """Versions, hardware and commit: what a reader needs to reproduce the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    from chatforge.core.tracking import git_commit

    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return {"versions": versions, "cpu": cpu, "cpu_cores": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(), "git_commit": git_commit(root)}


def code_size(root: Path, folders: Sequence[str] = ("chatforge", "stages", "flows", "tests", "bench")) -> dict[str, int]:
    """Lines of Python per top-level folder (tracked files when in git, else all)."""
    try:
        files = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(root)) for p in root.rglob("*.py")]
    sizes = dict.fromkeys(folders, 0)
    for name in files:
        top = name.split("/", 1)[0]
        if top in sizes and (root / name).exists():
            sizes[top] += sum(1 for _ in (root / name).open(encoding="utf-8"))
    return sizes


def fmt(value: Any) -> str:
    """Numbers for humans: 4 significant digits, thousands separators for big integers."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_lines(series: dict[str, Sequence[tuple[float, float]]], title: str, ylabel: str, path: Path,
               xlabel: str = "step") -> Path | None:
    """One PNG with a line per series; None when there is nothing to draw."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for label, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, float], title: str, path: Path, xlabel: str = "count") -> Path | None:
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.4 * len(values) + 1.2), dpi=110)
    names = list(values)
    ax.barh(names, [values[n] for n in names])
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
