"""Pretraining: next-token prediction on packed documents with the transformers Trainer, from scratch
or continued from a pretrained base model (``pretrain.base``, written by the base_model stage).

Reads in order: config, seed and threads, training arguments (this joins the process group when
launched by torchrun/accelerate), data (tokenised and packed once, cached), model, Trainer
(AdamW, linear warmup then cosine to ``min_lr_ratio``, gradient clipping and accumulation,
checkpoints every ``save_steps``), resume from the last complete checkpoint, train, score the
held-out split, save the model with its tokenizer, sample a few continuations.

With a base model the architecture comes from its checkpoint (the ``model:`` section is unused), the
held-out split is scored before training as well as after, and ``max_tokens: 0`` adopts the base as
is (no step taken; the report still scores it).

The global batch (sequences per optimizer step) is a param of its own; the accumulation steps
follow from it, the per-device batch and the number of processes. So one process and two
processes with the same params take the same optimizer steps on the same data, and a run may be
resumed with a different launcher.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help, save_config, to_dict
from chatforge.core.files import atomic_dir, atomic_open
from chatforge.core.launcher import Launcher, world
from chatforge.train.base_model import has_model, read_lineage, write_lineage
from chatforge.train.checkpoints import (
    checkpoint_step,
    completion_callback,
    last_complete_checkpoint,
    prepare_checkpoint_dir,
)
from chatforge.train.model import ModelConfig, build_model, count_parameters
from chatforge.train.packing import data_digest, file_digest, pretraining_blocks, token_corpus
from chatforge.train.perplexity import HeldOutScore, score_model, token_byte_lengths, unigram_counts, unigram_score

log = logging.getLogger(__name__)

# Params that do not change the training trajectory: a checkpoint stays resumable when they change.
NOT_IN_FINGERPRINT = {"output", "report", "loss_curve", "val_curve", "cache_dir", "launcher", "nproc_per_node",
                      "accelerate_config", "num_threads", "dataloader_workers", "max_eval_blocks", "sample_prompts",
                      "sample_tokens", "save_steps", "save_total_limit", "logging_steps"}


@dataclass(frozen=True)
class PretrainConfig:
    """The ``pretrain:`` params section."""

    input: Path = field_help(Path("data/tokens"), "the tokenize stage's token shards (or, tokenised here into "
                                                  "cache_dir: documents JSONL with a train/validation split)")
    tokenizer: Path = field_help(Path("models/tokenizer"), "the trained tokenizer directory")
    base: Path | None = field_help(None, "the base_model output (params.yaml: models/pretrained): when it holds "
                                         "a model, pretraining continues from it instead of starting from scratch")
    output: Path = field_help(Path("models/base"), "the trained model, saved with its tokenizer")
    checkpoint_dir: Path = field_help(Path("checkpoints/pretrain"), "resumable checkpoints (a DVC persist out)")
    cache_dir: Path = field_help(Path("data/cache/pretrain"), "token shards of a documents input (not used "
                                                              "when input is already token shards)")
    report: Path = field_help(Path("reports/pretrain.json"), "val loss/bpb, unigram bpb, tokens, throughput")
    loss_curve: Path = field_help(Path("reports/pretrain_loss.csv"), "training loss by step (a DVC plot)")
    val_curve: Path = field_help(Path("reports/pretrain_val.csv"), "validation loss by step (a DVC plot)")

    block_size: int = field_help(128, "tokens per packed training sequence (<= model.context_length)")
    batch_size: int = field_help(8, "sequences per device per forward/backward (micro-batch)")
    global_batch_size: int = field_help(16, "sequences per optimizer step, over all devices and accumulation")
    max_tokens: int = field_help(1_000_000, "token budget: steps = max_tokens / (global_batch_size * block_size); "
                                            "0 with a base model = adopt it as is")
    lr: float = field_help(3.0e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = field_help(0.1, "the cosine ends at lr * min_lr_ratio")
    warmup_fraction: float = field_help(0.05, "share of the steps spent warming up linearly from 0")
    weight_decay: float = field_help(0.1, "AdamW decoupled weight decay (not on norms and biases)")
    beta1: float = field_help(0.9, "AdamW beta1")
    beta2: float = field_help(0.95, "AdamW beta2 (0.95 as in GPT-3 / nanoGPT)")
    grad_clip: float = field_help(1.0, "clip the global gradient norm to this")
    dtype: Literal["float32", "bfloat16", "float16"] = field_help("float32", "mixed-precision compute dtype")
    torch_compile: bool = field_help(False, "torch.compile the model")

    logging_steps: int = field_help(10, "log training loss every N steps")
    eval_steps: int = field_help(50, "score the periodic validation subset every N steps (0: only at the end)")
    eval_blocks: int = field_help(32, "validation blocks in the periodic evaluation")
    max_eval_blocks: int = field_help(4096, "validation blocks in the final evaluation (0: all)")
    save_steps: int = field_help(50, "write a resumable checkpoint every N steps")
    save_total_limit: int = field_help(2, "checkpoints kept (at least 2, see chatforge/train/checkpoints.py)")

    launcher: Launcher = field_help("python", "python (one process), torchrun (DDP) or accelerate (FSDP/ZeRO)")
    nproc_per_node: int = field_help(1, "processes per node for torchrun")
    accelerate_config: Path | None = field_help(None, "accelerate config file for launcher=accelerate")
    num_threads: int = field_help(0, "torch CPU threads per process (0: torch's default)")
    dataloader_workers: int = field_help(0, "DataLoader worker processes")

    sample_prompts: list[str] = field_help(["Hello", "How was your weekend?", "I think"],
                                           "prompts continued by the trained model (logged to MLflow)")
    sample_tokens: int = field_help(40, "new tokens per sample")

    def __post_init__(self) -> None:
        if self.global_batch_size % self.batch_size:
            raise ValueError("'global_batch_size' must be a multiple of 'batch_size'")
        if self.save_total_limit < 2:
            raise ValueError("'save_total_limit' must be at least 2 (the newest complete checkpoint must survive)")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("'warmup_fraction' must be in [0, 1)")
        if self.launcher == "accelerate" and self.accelerate_config is None:
            raise ValueError("launcher 'accelerate' needs 'accelerate_config' (see profiles/accelerate/)")

    @property
    def max_steps(self) -> int:
        return max(1, self.max_tokens // (self.global_batch_size * self.block_size))

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"pretrain.global_batch_size={self.global_batch_size} is not a multiple of "
                             f"batch_size x processes = {self.batch_size} x {world_size}")
        return self.global_batch_size // per_step


@dataclass(frozen=True)
class PretrainResult:
    report: dict[str, Any]
    samples: list[tuple[str, str]]


def collate_blocks(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Packed blocks -> a batch; the labels are the inputs (the model shifts them by one)."""
    import numpy as np
    import torch

    ids = torch.from_numpy(np.stack([np.asarray(f["input_ids"], dtype=np.int64) for f in features]))   # (B, T)
    return {"input_ids": ids, "labels": ids}


def throughput_callback():
    """A TrainerCallback timing optimizer steps only (not evaluation, logging or checkpointing)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds = 0.0
            self.steps = 0
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._t0
            self.steps += 1

    return StepTimer()


def training_arguments(cfg: PretrainConfig, seed: int, world_size: int, report_to: list[str]):
    import torch
    from transformers import TrainingArguments

    periodic_eval = cfg.eval_steps > 0
    return TrainingArguments(
        output_dir=str(cfg.checkpoint_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps(world_size),
        optim="adamw_torch",
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        max_grad_norm=cfg.grad_clip,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_fraction,             # a float in [0, 1) is a share of max_steps
        bf16=cfg.dtype == "bfloat16",
        fp16=cfg.dtype == "float16",
        torch_compile=cfg.torch_compile,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=cfg.eval_steps if periodic_eval else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        # Without use_cpu, accelerate 1.15 on a GPU-less box under torchrun reports DistributedType.NO:
        # no DDP wrapper, no gradient all-reduce, every rank trains on its own shard.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=report_to,
        disable_tqdm=True,
    )


def run_fingerprint(cfg: PretrainConfig, model_cfg: ModelConfig, seed: int) -> dict[str, Any]:
    """What a checkpoint was trained with: training params, architecture, seed, data and tokenizer."""
    train = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    base = read_lineage(cfg.base)["base"] if cfg.base else None
    return {"seed": seed, "model": to_dict(model_cfg), "pretrain": train, "base": base,
            "data_digest": data_digest(cfg.input), "tokenizer_digest": file_digest([cfg.tokenizer])}


def write_curves(log_history: list[dict[str, Any]], loss_csv: Path, val_csv: Path) -> None:
    """The Trainer's log history as two CSV files for ``dvc plots`` (train and validation loss)."""
    with atomic_open(loss_csv) as fh:
        w = csv.writer(fh)
        w.writerow(["step", "train_loss", "lr"])
        for e in log_history:
            if "loss" in e:
                w.writerow([e["step"], round(e["loss"], 5), e.get("learning_rate", "")])
    with atomic_open(val_csv) as fh:
        w = csv.writer(fh)
        w.writerow(["step", "val_loss"])
        for e in log_history:
            if "eval_loss" in e:
                w.writerow([e["step"], round(e["eval_loss"], 5)])


def generate_samples(model_dir: Path, prompts: list[str], max_new_tokens: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, continuation) for each prompt, sampled from the saved model (top-k 50, T=0.8)."""
    import torch

    from chatforge.train.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    torch.manual_seed(seed)
    out = []
    for prompt in prompts:
        # Documents start with <|endoftext|> in training, so a prompt does too.
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.bos_token_id)
        out.append((prompt, tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)))
    return out


def pretrain(cfg: PretrainConfig, model_cfg: ModelConfig, seed: int, *, config_to_save: Any = None,
             report_to: list[str] | None = None, callbacks: list | None = None) -> PretrainResult:
    """Train (or resume) the model of ``model_cfg`` on ``cfg.input``; save it to ``cfg.output``.

    Every process of a distributed run calls this; only rank 0 writes the model, curves and
    samples. ``config_to_save`` is written next to the model as ``chatforge.yaml``.
    """
    import torch
    from torch.utils.data import Subset
    from transformers import Trainer

    from chatforge.train.tokenizer import load_tokenizer

    # -- config, seed, threads ---------------------------------------------------------------
    rank, world_size = world()
    base = cfg.base if cfg.base is not None and has_model(cfg.base) else None
    adopt_only = base is not None and cfg.max_tokens == 0
    if base is None and cfg.max_tokens <= 0:
        raise ValueError("pretrain.max_tokens must be > 0 when there is no base model to adopt (base_model.source)")
    if base is None and cfg.block_size > model_cfg.context_length:
        raise ValueError(f"pretrain.block_size={cfg.block_size} is longer than model.context_length="
                         f"{model_cfg.context_length}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    args = training_arguments(cfg, seed, world_size, report_to or [])
    tokens_per_step = cfg.global_batch_size * cfg.block_size
    log.info("pretrain: %d steps x %d sequences x %d tokens = %.2fM tokens (%d process(es), accumulation %d)",
             cfg.max_steps, cfg.global_batch_size, cfg.block_size, cfg.max_steps * tokens_per_step / 1e6,
             world_size, args.gradient_accumulation_steps)

    # -- checkpoints: resume only what this very run wrote ------------------------------------
    with args.main_process_first(desc="checkpoint dir"):
        if rank == 0:
            prepare_checkpoint_dir(cfg.checkpoint_dir, run_fingerprint(cfg, model_cfg, seed))
    resume = last_complete_checkpoint(cfg.checkpoint_dir)

    # -- data ---------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer)
    # token shards are memory-mapped: every rank opens them itself, and its sampler's indices are the only
    # blocks it reads. Only a documents input is tokenised here (rank 0 first, the others then find the cache).
    with args.main_process_first(desc="tokenize documents"):
        corpus = token_corpus(cfg.input, cfg.tokenizer, cfg.cache_dir)
    data = pretraining_blocks(corpus, cfg.block_size)
    val = data["validation"]
    periodic_val = Subset(val, range(min(cfg.eval_blocks, len(val)))) if cfg.eval_steps > 0 else None

    # -- model and trainer --------------------------------------------------------------------
    if base is not None:
        from chatforge.train.loading import load_model

        model = load_model(base).train()
        if cfg.block_size > model.config.max_position_embeddings:
            raise ValueError(f"pretrain.block_size={cfg.block_size} is longer than the base model's context "
                             f"({model.config.max_position_embeddings} tokens, {base})")
        log.info("pretrain: continuing from %s (%s)", base, read_lineage(base)["base"]["source"])
    else:
        model = build_model(model_cfg, tokenizer, seed)
    n_params = count_parameters(model)
    log.info("pretrain: model %.2fM parameters (%.2fM without embeddings)", n_params / 1e6,
             (n_params - model.get_input_embeddings().weight.numel()) / 1e6)
    timer = throughput_callback()
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=periodic_val,
                      data_collator=collate_blocks, callbacks=[completion_callback(), timer, *(callbacks or [])])

    # -- held-out blocks; a base model is scored before it trains too ----------------------------
    token_bytes = token_byte_lengths(tokenizer)
    n_val = min(len(val), cfg.max_eval_blocks or len(val))
    n_val -= n_val % world_size
    val_blocks = val.blocks(n_val)                                                  # (N, T)
    before = None
    if base is not None:
        before = score_model(trainer.model, val_blocks, token_bytes, cfg.batch_size, args.device,
                             trainer.accelerator.autocast())
        log.info("pretrain: base model held-out loss %.4f, bpb %.4f", before.loss, before.bpb)

    # -- train --------------------------------------------------------------------------------
    if adopt_only:
        train_metrics: dict[str, Any] = {}
    elif resume is not None and checkpoint_step(resume) >= cfg.max_steps:
        # The run had finished: its last checkpoint holds every step. Resumed there, transformers' Trainer
        # would take one step more (it checks max_steps after a step), so the weights and the state are
        # taken from the checkpoint as they are.
        from transformers import TrainerState

        log.info("pretrain: %s already holds all %d steps; nothing to train", resume, cfg.max_steps)
        trainer.model.load_state_dict(type(model).from_pretrained(str(resume)).state_dict())
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        train_metrics = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics
    start_step = trainer.state.global_step - timer.steps
    log.info("pretrain: trained steps %d..%d in %.1f s", start_step, trainer.state.global_step, timer.seconds)

    # -- held-out score (every rank scores its share) --------------------------------------
    score = before if adopt_only else score_model(trainer.model_wrapped, val_blocks, token_bytes, cfg.batch_size,
                                                  args.device, trainer.accelerator.autocast())

    # -- save (collective for FSDP/ZeRO-3: every rank gives its shard) -------------------------
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if rank != 0:
        return PretrainResult({}, [])
    with atomic_dir(cfg.output) as tmp:
        trainer.accelerator.unwrap_model(trainer.model_wrapped).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_lineage(tmp, base, stage="pretrain", data=str(cfg.input),
                      tokens=trainer.state.global_step * tokens_per_step)
        if config_to_save is not None:
            save_config(config_to_save, tmp / "chatforge.yaml")
    write_curves(trainer.state.log_history, cfg.loss_curve, cfg.val_curve)

    # -- baseline, samples, report ---------------------------------------------------------------
    counts = unigram_counts(data["train"].token_chunks(), len(tokenizer))
    unigram = unigram_score(counts, val_blocks, token_bytes)
    samples = generate_samples(cfg.output, cfg.sample_prompts, cfg.sample_tokens, seed)
    report = build_report(trainer.state, train_metrics, score, unigram, tokens_per_step, timer, n_params,
                          start_step, len(data["train"]) * cfg.block_size)
    if base is not None:
        report.update(base=read_lineage(base)["base"]["source"], base_val_loss=round(before.loss, 5),
                      base_val_bpb=round(before.bpb, 5))
    log.info("pretrain: val loss %.4f, val bpb %.4f (unigram %.4f), %.0f tokens/s", report["val_loss"],
             report["val_bpb"], report["unigram_bpb"], report["tokens_per_second"])
    return PretrainResult(report, samples)


def build_report(state, train_metrics: dict[str, Any], score: HeldOutScore, unigram: HeldOutScore,
                 tokens_per_step: int, timer, n_params: int, start_step: int, train_tokens: int) -> dict[str, Any]:
    last_loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), math.nan)
    return {
        "val_loss": round(score.loss, 5),
        "val_perplexity": round(score.perplexity, 3),
        "val_bpb": round(score.bpb, 5),
        "unigram_bpb": round(unigram.bpb, 5),
        "unigram_loss": round(unigram.loss, 5),
        "train_loss": round(last_loss, 5),
        "steps": state.global_step,
        "resumed_from_step": start_step,
        "tokens_seen": state.global_step * tokens_per_step,
        "tokens_per_second": round((state.global_step - start_step) * tokens_per_step / max(timer.seconds, 1e-9), 1),
        "train_seconds": round(timer.seconds, 2),
        "epochs": round(state.global_step * tokens_per_step / max(train_tokens, 1), 3),
        "train_tokens": train_tokens,
        "val_tokens": score.tokens,
        "val_bytes": score.bytes,
        "parameters": n_params,
        "train_runtime_seconds": round(float(train_metrics.get("train_runtime", 0.0)), 2),
    }


def samples_markdown(samples: list[tuple[str, str]]) -> str:
    return "# pretrain samples\n\n" + "\n".join(f"- **{p}**{c}" for p, c in samples) + "\n"
