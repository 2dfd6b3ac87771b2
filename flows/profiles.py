"""Profiles: override sets in profiles/NAME.yaml, merged into params.yaml.

DVC tracks params.yaml, so a profile is applied by writing its values there (as
``dvc exp run -S`` does): ``git diff params.yaml`` shows what changed, and DVC re-runs exactly
the stages whose params moved. Comments in params.yaml survive (ruamel round-trip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML


def _merge(target: Any, overrides: dict[str, Any], prefix: str, changed: list[str]) -> None:
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, dotted + ".", changed)
        elif target.get(key) != value:
            target[key] = value
            changed.append(dotted)


def apply_profile(root: Path, name: str) -> list[str]:
    """Merge profiles/<name>.yaml into params.yaml; returns the dotted keys that changed."""
    profile = root / "profiles" / f"{name}.yaml"
    if not profile.exists():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise FileNotFoundError(f"{profile}: no such profile (known: {', '.join(known) or 'none'})")
    yaml = YAML()
    yaml.preserve_quotes = True
    params_file = root / "params.yaml"
    params = yaml.load(params_file.read_text(encoding="utf-8"))
    overrides = yaml.load(profile.read_text(encoding="utf-8")) or {}
    changed: list[str] = []
    _merge(params, overrides, "", changed)
    if changed:
        tmp = params_file.with_suffix(".yaml.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            yaml.dump(params, fh)
        tmp.replace(params_file)
    return changed
