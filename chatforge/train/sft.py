"""Supervised fine-tuning: TRL's SFTTrainer on chat-formatted conversations, loss on assistant
tokens only.

Conversations are tokenized here (``chatforge.train.chat_format.encode_chat``), not by TRL, so that a
conversation longer than the context is cut from the left at a turn boundary (TRL's own
truncation keeps the start and would cut the replies we train on). The dataset handed to
SFTTrainer is pre-tokenized with a ``labels`` column (-100 outside assistant replies), which TRL
uses as is. Held-out loss and perplexity are measured on the validation conversations before and
after training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.core.config import field_help
from chatforge.train.chat_format import encode_chat
from chatforge.train.lora import LoraConfig, save_trained, trainable_parameters, trainer_kwargs
from chatforge.train.trainer_args import training_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SftConfig:
    base: Path = field_help(Path("models/base"), "pretrained model directory (with its tokenizer)")
    input: Path = field_help(Path("data/clean/conversations.jsonl"), "conversations with a 'split' field")
    output: Path = field_help(Path("models/sft"), "fine-tuned model directory (with its tokenizer)")
    checkpoints: Path = field_help(Path("checkpoints/sft"), "trainer output dir (checkpoints when save_steps > 0)")
    report: Path = field_help(Path("reports/sft.json"), "held-out loss and perplexity")
    max_length: int = field_help(192, "tokens per conversation; longer ones lose whole turns from the left")
    epochs: float = field_help(1.0, "passes over the training conversations (ignored when max_steps > 0)")
    max_steps: int = field_help(40, "optimizer steps; 0 = run the epochs")
    batch_size: int = field_help(8, "conversations per device per step")
    grad_accum: int = field_help(1, "gradient accumulation steps")
    lr: float = field_help(1.0e-3, "peak learning rate (cosine decay)")
    warmup_ratio: float = field_help(0.05, "share of steps spent warming up")
    weight_decay: float = field_help(0.0, "AdamW weight decay")
    max_train: int = field_help(0, "use at most this many training conversations (0 = all)")
    max_eval: int = field_help(200, "use at most this many validation conversations (0 = all)")
    logging_steps: int = field_help(10, "log loss to MLflow every N steps")
    save_steps: int = field_help(0, "checkpoint every N steps into 'checkpoints' (0 = none)")
    lora: LoraConfig = field_help(LoraConfig(), "LoRA adapter instead of full fine-tuning (chatforge/train/lora.py)")

    def __post_init__(self) -> None:
        if self.max_length < 16:
            raise ValueError("'max_length' must be at least 16")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set 'epochs' > 0 or 'max_steps' > 0")


def encode_conversations(conversations: list[dict[str, Any]], tokenizer, max_length: int) -> tuple[list[dict], dict]:
    """Conversations -> ``{"input_ids", "labels"}`` rows, plus counts of what truncation did.

    A conversation whose kept part has no assistant token (its last reply alone is longer than
    the context and was cut away) would train nothing and is skipped.
    """
    rows, counts = [], {"conversations": len(conversations), "truncated": 0, "hard_cut": 0, "skipped": 0}
    for conv in conversations:
        enc = encode_chat(conv["messages"], tokenizer, max_length)
        if not any(enc.assistant_mask):
            counts["skipped"] += 1
            continue
        counts["truncated"] += enc.dropped_messages(conv["messages"]) > 0 or enc.cut_tokens > 0
        counts["hard_cut"] += enc.cut_tokens > 0
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return rows, counts


def sft_arguments(cfg: SftConfig, seed: int, **overrides: Any):
    """TRL SFTConfig for our settings (MLflow reporting, per-step logging)."""
    from trl import SFTConfig

    return SFTConfig(**training_args(
        cfg.checkpoints, seed, "sft", logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        max_length=cfg.max_length, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, eval_strategy="no", **overrides,
    ))


def train_sft(cfg: SftConfig, train: list[dict[str, Any]], validation: list[dict[str, Any]], seed: int,
              output_dir: Path) -> dict[str, Any]:
    """Fine-tune ``cfg.base`` on ``train``; save model + tokenizer to ``output_dir``; return metrics."""
    import resource
    import time

    from datasets import Dataset
    from trl import SFTTrainer

    from chatforge.train.base_model import write_lineage

    from chatforge.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.base)
    train = train[: cfg.max_train] if cfg.max_train else train
    validation = validation[: cfg.max_eval] if cfg.max_eval else validation
    train_rows, train_counts = encode_conversations(train, tokenizer, cfg.max_length)
    val_rows, val_counts = encode_conversations(validation, tokenizer, cfg.max_length)
    if not train_rows:
        raise ValueError(f"{cfg.input}: no training conversation with an assistant reply fits max_length "
                         f"{cfg.max_length}")
    log.info("sft: %d train / %d validation conversations (%d truncated at a turn boundary, %d skipped)",
             len(train_rows), len(val_rows), train_counts["truncated"], train_counts["skipped"])
    trainer = SFTTrainer(
        model=str(cfg.base),          # a path, so the saved config records where the model came from
        args=sft_arguments(cfg, seed),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        **trainer_kwargs(cfg.lora, "CAUSAL_LM"),
    )
    trainable, total = trainable_parameters(trainer.model)
    log.info("sft: %.2fM of %.2fM parameters trainable (%s)", trainable / 1e6, total / 1e6,
             "LoRA" if cfg.lora.enabled else "full fine-tuning")
    metrics: dict[str, Any] = {"train_conversations": len(train_rows), "validation_conversations": len(val_rows),
                               "truncated_conversations": train_counts["truncated"] + val_counts["truncated"],
                               "skipped_conversations": train_counts["skipped"] + val_counts["skipped"]}
    if val_rows:
        before = trainer.evaluate()["eval_loss"]
        metrics.update(base_eval_loss=before, base_perplexity=math.exp(min(before, 50.0)))
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    batch_tokens = cfg.batch_size * cfg.grad_accum * sum(len(r["input_ids"]) for r in train_rows) / len(train_rows)
    metrics.update(train_loss=result.training_loss, steps=result.global_step, trainable_parameters=trainable,
                   total_parameters=total, train_seconds=round(seconds, 2),
                   train_tokens_per_second=round(result.global_step * batch_tokens / max(seconds, 1e-9), 1),
                   # peak resident memory of this process so far (Linux reports KiB), training included
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if val_rows:
        after = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=after, perplexity=math.exp(min(after, 50.0)))
        log.info("sft: held-out loss %.3f -> %.3f (perplexity %.1f -> %.1f)", before, after,
                 metrics["base_perplexity"], metrics["perplexity"])
    metrics.update(save_trained(trainer, cfg.base, output_dir, cfg.lora, "CAUSAL_LM"))
    tokenizer.save_pretrained(output_dir)
    write_lineage(output_dir, cfg.base, stage="sft", data=str(cfg.input), steps=result.global_step,
                  method=f"LoRA r={cfg.lora.r}" if cfg.lora.enabled else "full fine-tuning",
                  adapter=metrics.get("adapter"))
    return metrics
