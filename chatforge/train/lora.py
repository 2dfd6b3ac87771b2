"""LoRA through PEFT for the training stages (sft, train_reward, rlhf), and merging the adapter back.

TRL's SFT, Reward, DPO, GRPO and RLOO trainers take a ``peft_config`` (and a ``quantization_config``
for QLoRA) and wrap the model themselves; this module builds both from the ``lora:`` params of each
stage. After training, the adapter is saved in ``<output>/adapter/`` (PEFT's own format, small) and
merged into the base weights, so ``<output>`` stays a standard model directory that export, serve,
chat and the registry load with ``from_pretrained`` and no PEFT. The merge reloads the base in full
precision (for QLoRA too: merging into 4-bit weights would round the update away) and applies the
saved adapter, so what is saved is exactly base + adapter.

LoRA: Hu et al. 2021, arXiv:2106.09685; QLoRA: Dettmers et al. 2023, arXiv:2305.14314.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help
from chatforge.core.files import final_path

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
Task = Literal["CAUSAL_LM", "SEQ_CLS"]


@dataclass(frozen=True)
class LoraConfig:
    """The ``lora:`` block of the sft, train_reward and rlhf params sections."""

    enabled: bool = field_help(False, "train a LoRA adapter instead of all weights")
    r: int = field_help(16, "adapter rank")
    alpha: int = field_help(32, "scaling: the update is multiplied by alpha / r")
    dropout: float = field_help(0.05, "dropout on the adapter's input")
    target_modules: list[str] = field_help(["all-linear"], "module names to adapt (q_proj, v_proj, c_attn, ...); "
                                                           "['all-linear']: every linear layer but the output head")
    qlora: bool = field_help(False, "load the frozen base in 4-bit NF4 (bitsandbytes; needs a CUDA GPU)")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError("'r' and 'alpha' must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("'dropout' must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("'target_modules' must name at least one module (or ['all-linear'])")
        if self.qlora and not self.enabled:
            raise ValueError("'qlora' needs 'enabled: true' (QLoRA trains a LoRA adapter on a 4-bit base)")


def peft_config(cfg: LoraConfig, task: Task):
    """The ``peft.LoraConfig`` for ``cfg`` (None when LoRA is off). A reward model's scalar head is new,
    so PEFT trains it in full (task SEQ_CLS puts it in ``modules_to_save``)."""
    if not cfg.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    targets: str | list[str] = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          task_type=task, bias="none")


def quantization_config(cfg: LoraConfig):
    """bitsandbytes 4-bit NF4 settings for QLoRA (None without it); a clear error where it cannot run."""
    if not cfg.qlora:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ValueError("lora.qlora: QLoRA loads the base in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                         "none is visible here. Set lora.qlora: false (plain LoRA runs on CPU).")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError("lora.qlora: needs the bitsandbytes package (pip install bitsandbytes)") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def trainer_kwargs(cfg: LoraConfig, task: Task) -> dict[str, Any]:
    """Keyword arguments for a TRL trainer: ``peft_config`` and ``quantization_config`` when set."""
    out: dict[str, Any] = {}
    if cfg.enabled:
        out["peft_config"] = peft_config(cfg, task)
    if cfg.qlora:
        out["quantization_config"] = quantization_config(cfg)
    return out


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def save_trained(trainer, base: Path, output_dir: Path, cfg: LoraConfig, task: Task,
                 config_updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save what ``trainer`` trained to ``output_dir`` as a standard model directory; with LoRA, the
    adapter goes to ``output_dir/adapter`` and is merged into a full-precision reload of ``base``.
    ``config_updates`` are set on the saved model's config (e.g. the reward model's scoring length)."""
    for key, value in (config_updates or {}).items():
        setattr(trainer.model.config, key, value)
    if not cfg.enabled:
        trainer.save_model(str(output_dir))
        return {}
    adapter_dir = Path(output_dir) / ADAPTER_DIR
    trainer.model.save_pretrained(str(adapter_dir))
    merged = merge_adapter(base, adapter_dir, task)
    for key, value in (config_updates or {}).items():
        setattr(merged.config, key, value)
    merged.save_pretrained(str(output_dir))
    trainable, total = trainable_parameters(trainer.model)
    log.info("lora: adapter (%.2fM trainable of %.1fM) saved to %s and merged into %s", trainable / 1e6,
             total / 1e6, adapter_dir, output_dir)
    return {"adapter": str(final_path(output_dir) / ADAPTER_DIR), "lora_r": cfg.r, "lora_alpha": cfg.alpha,
            "trainable_parameters": trainable, "total_parameters": total}


def merge_adapter(base: Path, adapter_dir: Path, task: Task):
    """``base`` (fp32) with the adapter at ``adapter_dir`` merged into its weights: a plain model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
