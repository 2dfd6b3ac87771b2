"""Loading a saved model directory: the one place that turns a path into (model, tokenizer).

Every model directory the pipeline writes is a standard Hugging Face directory, so loading is
``from_pretrained``; what this adds is a clear error when the path is not a model directory (the
usual cause: the stage that writes it has not run), fp32 by default (CPU training and ONNX export
want it) and eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Head = Literal["causal_lm", "reward"]


def require_model_dir(path: Path, hint: str = "") -> Path:
    """``path`` if it holds a ``config.json``, else a ``FileNotFoundError`` that says what to do."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json); "
                                + (hint or "run the stage that writes it first (dvc repro) or point the param at one"))
    return path


def load_model(path: Path, *, head: Head = "causal_lm", dtype: str = "float32", device=None, hint: str = ""):
    """The model saved at ``path`` in eval mode (a causal LM, or a reward model with its scalar head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = require_model_dir(path, hint)
    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    model = cls.from_pretrained(str(path), dtype=getattr(torch, dtype))
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_model_and_tokenizer(path: Path, **kwargs):
    """(model, tokenizer) saved together at ``path`` (see ``load_model`` for the keyword arguments)."""
    from chatforge.train.tokenizer import load_tokenizer

    return load_model(path, **kwargs), load_tokenizer(path)
