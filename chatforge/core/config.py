"""Typed, frozen configs loaded from params.yaml.

Every stage declares the params sections it reads as one frozen dataclass whose fields are
top-level sections of params.yaml (``seed``, ``model``, ``pretrain``, ...). ``load_config`` reads
the file, applies ``--set section.key=value`` overrides and checks every value against the
dataclass field types. An unknown key, a missing required key or a wrong type raises
``ConfigError`` naming the file and the dotted key, so a typo never silently becomes a default.

    @dataclass(frozen=True)
    class PretrainParams:
        seed: int
        model: ModelConfig
        pretrain: PretrainConfig

    cfg = load_config(PretrainParams, argv)      # cfg.pretrain.lr, cfg.model.hidden_size
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")


class ConfigError(ValueError):
    """A params file or override that does not match its config class."""


def field_help(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text (TRL style), e.g. ``lr: float = field_help(3.0e-4, "peak LR")``."""
    if default is not dataclasses.MISSING and isinstance(default, (list, dict, set)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"help": help}, **kwargs)


# --------------------------------------------------------------------------------------------
# Building a dataclass from plain data, checking every type on the way
# --------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key`` in ``source``."""

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}{extra}"
        )

    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{source}: key '{key}' must be one of {list(get_args(tp))}, got {value!r}")
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key, source)
            except ConfigError:
                continue
        raise fail()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(" (expected a mapping)")
        return build_dataclass(tp, value, source, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(" (expected a list)")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(" (expected a mapping)")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_convert(k, key_tp, key, source): _convert(v, val_tp, f"{key}.{k}", source)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            raise fail(" (YAML reads 3e-4 as a string: write 3.0e-4)")
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail()
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {tp!r} in its config class")


def build_dataclass(cls: type[T], data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys, missing required keys and wrong types are errors."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{dotted}{unknown[0]}' (known keys in "
            f"'{prefix or cls.__name__}': {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{dotted}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{dotted}{name}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:       # __post_init__ checks that span several keys
        raise ConfigError(f"{source}: section '{prefix or cls.__name__}': {err}") from err


def to_dict(cfg: Any) -> Any:
    """A config as plain JSON-able data (Paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as JSON text), for MLflow params."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    value = json.dumps(data) if isinstance(data, list) else data
    return {prefix.rstrip("."): value}


# --------------------------------------------------------------------------------------------
# params.yaml + overrides
# --------------------------------------------------------------------------------------------

def read_params(path: Path) -> dict[str, Any]:
    """The whole params file as a dict; a missing file or bad YAML names the file."""
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repo root or pass --params FILE)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value read as YAML) to ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {assignment!r}: empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value):    # `--set x.lr=3e-4` means the float
        value = float(value)
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{k}' is not a section")
    node[keys[-1]] = value


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one param, type-checked like the file (repeatable)")
    return parser.parse_args(argv)


def load_config(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """Parse ``--params``/``--set`` from argv and load the sections ``cls`` declares."""
    args = parse_args(argv, description)
    return load_params_file(cls, args.params, args.overrides)


def load_params_file(cls: type[T], path: Path, overrides: list[str] = ()) -> T:
    data = read_params(path)
    section_names = {f.name for f in dataclasses.fields(cls)}
    source = str(path)
    for assignment in overrides:
        section = assignment.split("=", 1)[0].split(".", 1)[0]
        if section not in section_names:
            raise ConfigError(f"--set {assignment!r}: this stage reads sections {sorted(section_names)}, "
                              f"not '{section}'")
        apply_override(data, assignment)
        source = f"{path} (with --set overrides)"
    return build_dataclass(cls, {k: v for k, v in data.items() if k in section_names}, source)


def save_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML next to a stage's outputs."""
    from chatforge.core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def section_classes(cls: type) -> dict[str, Any]:
    """``{section name: its type}`` for a stage's params class (used by the consistency test)."""
    return typing.get_type_hints(cls)
