"""RLHF: tune the SFT model against the trained reward model with a KL penalty to the SFT model.

``rlhf.algorithm`` picks one small function per algorithm (``ALGORITHMS``), all TRL 1.16:

- ``grpo``: GRPOTrainer, online. Samples ``num_generations`` replies per prompt, the reward
  model scores them, advantages are normalised within each prompt's group; ``beta`` > 0 adds
  the per-token KL to the SFT model (TRL's default is 0: no reference model, no KL).
- ``rloo``: RLOOTrainer, online. REINFORCE with the leave-one-out mean of the other samples as
  baseline (Ahmadian et al. 2024, arXiv:2402.14740); ``beta`` is the KL coefficient.
- ``dpo``: DPOTrainer, offline on the reward model's preference pairs, reference = the SFT model
  (``dpo_beta`` is DPO's KL temperature). It never queries the reward model.

The policy is passed to TRL as the SFT *directory*, so TRL can rebuild the frozen reference model
from it (TRL builds the reference from ``config._name_or_path`` when ``beta > 0``). Guards against
the usual RLHF failure modes (KL blow-up and collapse, huggingface/trl#1161; length hacking): the reward is
standardised with statistics frozen after the first samples (the SFT model's own replies),
clipped, optionally penalised per token of length and for replies cut off before <|im_end|>;
reward and KL are logged to MLflow every step; training stops when KL passes ``max_kl``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help
from chatforge.rl.evaluation import EvalSettings
from chatforge.rl.ppo import PPOConfig
from chatforge.train.chat_format import fit_prompt
from chatforge.train.lora import LoraConfig, save_trained, trainer_kwargs
from chatforge.train.trainer_args import training_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RlhfConfig:
    algorithm: Literal["grpo", "rloo", "dpo", "ppo"] = field_help(
        "dpo", "grpo / rloo (TRL, online, reward model as reward), dpo (TRL, offline pairs) or ppo "
        "(chatforge.rl.ppo, InstructGPT-style); see README for the comparison")
    sft: Path = field_help(Path("models/sft"), "policy start and KL reference (a saved model directory)")
    reward: Path = field_help(Path("models/reward"), "reward model optimised by grpo/rloo")
    judge: Path = field_help(Path("models/judge"), "held-out judge: evaluation only, never a training signal")
    prompts: Path = field_help(Path("data/clean/prompts.jsonl"),
                               "RL prompts (train split) and held-out prompts (validation split); a preference "
                               "file gives its pairs' prompts")
    ptx_input: Path = field_help(Path("data/clean/documents.jsonl"),
                                 "pretraining documents (train split) for PPO-ptx, read when ppo.ptx_coef > 0")
    output: Path = field_help(Path("models/policy"), "the tuned policy (with its tokenizer)")
    checkpoints: Path = field_help(Path("checkpoints/rlhf"), "trainer output dir")
    report: Path = field_help(Path("reports/rlhf.json"), "held-out judge reward, win rate, KL, length, distinct-2")
    max_steps: int = field_help(16, "optimizer steps (one optimisation pass per generation batch)")
    batch_size: int = field_help(8, "per step: sampled replies for grpo/rloo (prompts x num_generations), pairs for dpo")
    num_generations: int = field_help(4, "replies per prompt (grpo/rloo); must divide batch_size")
    lr: float = field_help(3.0e-4, "grpo/rloo learning rate (constant after a short warm-up)")
    beta: float = field_help(0.05, "KL coefficient to the SFT model for grpo/rloo (InstructGPT used 0.02)")
    dpo_beta: float = field_help(0.1, "DPO temperature beta (its implicit KL strength)")
    dpo_lr: float = field_help(1.0e-4, "dpo learning rate (offline pairs tolerate more than online RL)")
    temperature: float = field_help(1.0, "sampling temperature of RL rollouts (plain sampling: no top-k/top-p)")
    max_completion_length: int = field_help(32, "tokens per sampled reply")
    max_length: int = field_help(192, "context: prompt + reply; prompts lose turns from the left to fit")
    reward_clip: float = field_help(5.0, "clip the standardised reward to +-this (DeepSpeed-Chat clips at 5)")
    normalization_samples: int = field_help(64, "standardise rewards with mean/std of the first this many replies")
    length_penalty: float = field_help(0.0, "subtracted per reply of max_completion_length tokens (scaled by length)")
    missing_eos_penalty: float = field_help(1.0, "subtracted when a reply is cut off before <|im_end|>")
    max_kl: float = field_help(2.0, "stop early when the logged KL (per token, nats) passes this")
    max_prompts: int = field_help(0, "use at most this many training prompts (0 = all)")
    logging_steps: int = field_help(1, "log reward/KL every N steps (1: every step)")
    evaluation: EvalSettings = field_help(EvalSettings(), "held-out comparison with the SFT model")
    ppo: PPOConfig = field_help(PPOConfig(), "settings of algorithm: ppo (the keys above apply to grpo/rloo/dpo)")
    lora: LoraConfig = field_help(LoraConfig(), "LoRA adapter for grpo/rloo/dpo (the reference is the base with "
                                                "the adapter switched off); not for ppo")

    def __post_init__(self) -> None:
        if self.algorithm in ("grpo", "rloo"):
            if self.beta <= 0:
                raise ValueError("'beta' must be > 0: without a KL penalty the policy is free to hack the reward")
            if self.num_generations < 2 or self.batch_size % self.num_generations:
                raise ValueError(f"'batch_size' ({self.batch_size}) must be a multiple of 'num_generations' "
                                 f"({self.num_generations}, at least 2)")
        if self.algorithm == "ppo" and self.lora.enabled:
            raise ValueError("'lora' is not supported with algorithm ppo: chatforge's PPO (chatforge/rl/ppo.py) "
                             "trains the policy and its value model in full; use dpo, grpo or rloo with LoRA")
        if self.max_completion_length >= self.max_length:
            raise ValueError("'max_completion_length' must be smaller than 'max_length'")


class RewardModelReward:
    """A TRL reward function: the reward model's score, standardised, clipped and penalised.

    Standardisation uses the mean/std of the first ``normalization_samples`` scores (the SFT
    model's own replies at the start of RL), then stays fixed, so the logged reward is comparable
    across steps (a running statistic would hide the improvement it normalises away).
    """

    __name__ = "reward_model"          # TRL names the per-function reward metrics after this

    def __init__(self, reward_dir: Path, cfg: RlhfConfig, eos_id: int):
        from chatforge.train.reward import load_reward_model

        self.model, self.tokenizer = load_reward_model(reward_dir)
        self.cfg, self.eos_id = cfg, eos_id
        self.seen: list[float] = []
        self.mean, self.std = 0.0, 1.0

    def __call__(self, prompts, completions, completion_ids, log_metric: Callable | None = None, **_: Any):
        from chatforge.train.reward import score_replies

        cfg = self.cfg
        replies = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        raw = score_replies(self.model, self.tokenizer, prompts, replies)
        if len(self.seen) < cfg.normalization_samples:
            self.seen.extend(raw)
            n = len(self.seen)
            self.mean = sum(self.seen) / n
            self.std = math.sqrt(sum((x - self.mean) ** 2 for x in self.seen) / n) or 1.0
        rewards = []
        for score, ids in zip(raw, completion_ids):
            r = max(-cfg.reward_clip, min(cfg.reward_clip, (score - self.mean) / self.std))
            r -= cfg.length_penalty * len(ids) / cfg.max_completion_length
            if not len(ids) or int(ids[-1]) != self.eos_id:
                r -= cfg.missing_eos_penalty
            rewards.append(r)
        if log_metric is not None:
            log_metric("reward_model/raw_mean", sum(raw) / len(raw))
        return rewards


def kl_guard(max_kl: float):
    """A callback that stops training once the logged ``kl`` passes ``max_kl``."""
    from transformers import TrainerCallback

    class KLGuard(TrainerCallback):
        stopped_at: int | None = None
        last_kl: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            kl = (logs or {}).get("kl")
            if kl is None or math.isnan(kl):
                return
            self.last_kl = kl
            if kl > max_kl:
                log.warning("rlhf: KL %.3f passed max_kl %.3f at step %d: stopping", kl, max_kl, state.global_step)
                self.stopped_at = state.global_step
                control.should_training_stop = True

    return KLGuard()


def dpo_step_metrics(beta: float, reply_tokens: float):
    """A callback giving DPO the per-step ``reward`` and ``kl`` the online trainers log.

    DPO's implicit reward of a reply is beta * log(pi / pi_sft); ``reward`` is the chosen-minus-
    rejected margin and ``kl`` the mean log-ratio over both replies divided by the mean reply
    length (``reply_tokens``): an offline, per-token stand-in for KL, measured on the data rather
    than on the policy's samples (the held-out evaluation measures the real one).
    """
    from transformers import TrainerCallback

    class DPOStepMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "rewards/chosen" not in logs:
                return
            logs["reward"] = logs["rewards/margins"]
            logs["kl"] = (logs["rewards/chosen"] + logs["rewards/rejected"]) / (2 * beta * reply_tokens)
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_metrics({"reward": logs["reward"], "kl": logs["kl"]}, step=state.global_step)

    return DPOStepMetrics()


@dataclass
class RlhfData:
    sft: Path
    reward: Path
    prompts: list[list[dict[str, str]]]     # training prompts (message lists)
    pairs: list[dict[str, Any]]             # the reward model's training pairs (for dpo)
    ptx_texts: list[str] | None = None      # pretraining documents (for ppo with ptx_coef > 0)


def load_rlhf_data(cfg: RlhfConfig, reward_cfg, seed: int) -> tuple[RlhfData, list[list[dict[str, str]]]]:
    """(the training data, the held-out prompts) for ``cfg.algorithm``. Prompts are split as the reward
    model's pairs are (``reward_cfg``: a ``RewardModelConfig``), and a training prompt from a conversation
    the judge was trained on is dropped (``rlhf.prompts`` may be the preference file itself: RL then runs
    on the reward model's prompts and is evaluated on the validation pairs' prompts, which neither model
    saw). dpo trains on the reward model's own pairs; ppo with ``ptx_coef > 0`` also reads the
    pretraining documents (InstructGPT's PPO-ptx)."""
    from chatforge.data.preferences import (by_split, group_key, read_preferences, read_prompts,
                                            split_preferences)
    from chatforge.data.records import documents_by_split

    prompts = read_prompts(cfg.prompts).records
    vf = reward_cfg.validation_fraction
    splits = split_preferences(read_preferences(reward_cfg.input).records, seed, reward_cfg.judge_fraction, vf)
    judged = {group_key(p["id"]) for p in splits.judge}
    train_records = by_split(prompts, "train", seed, vf)
    train = [p["messages"] for p in train_records if group_key(p["id"]) not in judged]
    if len(train) < len(train_records):
        log.info("rlhf: %d of %d training prompts come from the judge's conversations: not used for RL",
                 len(train_records) - len(train), len(train_records))
    held_out = [p["messages"] for p in by_split(prompts, "validation", seed, vf)]
    pairs = splits.reward if cfg.algorithm == "dpo" else []
    ptx_texts = None
    if cfg.algorithm == "ppo" and cfg.ppo.ptx_coef > 0:
        ptx_texts = documents_by_split(cfg.ptx_input)["train"]
    return RlhfData(sft=cfg.sft, reward=cfg.reward, prompts=train, pairs=pairs, ptx_texts=ptx_texts), held_out


def common_args(cfg: RlhfConfig, seed: int, name: str, learning_rate: float) -> dict[str, Any]:
    return training_args(cfg.checkpoints / name, seed, f"rlhf-{name}", logging_steps=cfg.logging_steps,
                         learning_rate=learning_rate, max_steps=cfg.max_steps, lr_scheduler_type="constant_with_warmup",
                         warmup_steps=0.1)


def online_args(cfg: RlhfConfig) -> dict[str, Any]:
    """Settings GRPO and RLOO share: one optimisation pass per generation batch (on-policy: more
    passes over stale samples is how KL runs away, huggingface/trl#1161)."""
    return dict(per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
                num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                temperature=cfg.temperature, top_k=0, top_p=1.0, beta=cfg.beta, num_iterations=1)


def prompt_dataset(data: RlhfData):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p} for p in data.prompts])


def train_grpo(cfg: RlhfConfig, data: RlhfData, seed: int, tokenizer, callbacks: list):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(**common_args(cfg, seed, "grpo", cfg.lr), **online_args(cfg))
    return GRPOTrainer(model=str(data.sft), reward_funcs=RewardModelReward(data.reward, cfg, tokenizer.eos_token_id),
                       args=args, train_dataset=prompt_dataset(data), processing_class=tokenizer, callbacks=callbacks,
                       **trainer_kwargs(cfg.lora, "CAUSAL_LM"))


def train_rloo(cfg: RlhfConfig, data: RlhfData, seed: int, tokenizer, callbacks: list):
    from trl import RLOOConfig, RLOOTrainer

    args = RLOOConfig(**common_args(cfg, seed, "rloo", cfg.lr), **online_args(cfg))
    return RLOOTrainer(model=str(data.sft), reward_funcs=RewardModelReward(data.reward, cfg, tokenizer.eos_token_id),
                       args=args, train_dataset=prompt_dataset(data), processing_class=tokenizer, callbacks=callbacks,
                       **trainer_kwargs(cfg.lora, "CAUSAL_LM"))


def train_dpo(cfg: RlhfConfig, data: RlhfData, seed: int, tokenizer, callbacks: list):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows, reply_tokens = [], 0
    for pair in data.pairs:
        prompt = fit_prompt(pair["prompt"], tokenizer, cfg.max_length, cfg.max_completion_length)
        if prompt is not None:
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                         "rejected": [{"role": "assistant", "content": pair["rejected"]}]})
            reply_tokens += len(tokenizer.encode(pair["chosen"])) + len(tokenizer.encode(pair["rejected"]))
    if not rows:
        raise ValueError("dpo: no preference pair fits max_length")
    args = DPOConfig(**common_args(cfg, seed, "dpo", cfg.dpo_lr), per_device_train_batch_size=cfg.batch_size,
                     beta=cfg.dpo_beta, max_length=cfg.max_length)
    return DPOTrainer(model=str(data.sft), args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer, **trainer_kwargs(cfg.lora, "CAUSAL_LM"),
                      callbacks=[dpo_step_metrics(cfg.dpo_beta, reply_tokens / (2 * len(rows)) + 1), *callbacks])


ALGORITHMS = {"grpo": train_grpo, "rloo": train_rloo, "dpo": train_dpo}


def fit_prompts(prompts: list[list[dict[str, str]]], tokenizer, cfg: RlhfConfig) -> list[list[dict[str, str]]]:
    """Prompts cut at a turn boundary to leave room for a reply; ones that cannot fit are dropped."""
    fitted = [fit_prompt(p, tokenizer, cfg.max_length, cfg.max_completion_length) for p in prompts]
    kept = [p for p in fitted if p is not None]
    if len(kept) < len(fitted):
        log.info("rlhf: %d prompts too long for max_length %d even at their last turn: skipped",
                 len(fitted) - len(kept), cfg.max_length)
    return kept


def train_ppo_policy(cfg: RlhfConfig, data: RlhfData, output_dir: Path) -> dict[str, Any]:
    """algorithm: ppo, our own InstructGPT-style PPO; per-step metrics go to the active MLflow run."""
    import mlflow

    from chatforge.rl.ppo import train_ppo

    def log_step(metrics: dict[str, float], step: int) -> None:
        if mlflow.active_run():
            mlflow.log_metrics(metrics, step=step)

    summary = train_ppo(data.sft, data.reward, data.prompts, cfg.ppo, output_dir, ptx_texts=data.ptx_texts,
                        checkpoint_dir=cfg.checkpoints, log_fn=log_step)
    return {**summary, "train_prompts": len(data.prompts), "train_pairs": 0}


def train_policy(cfg: RlhfConfig, data: RlhfData, seed: int, output_dir: Path) -> dict[str, Any]:
    """Run ``cfg.algorithm``; save the policy with its tokenizer to ``output_dir``; return training facts."""
    from chatforge.train.base_model import write_lineage
    from chatforge.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(data.sft)
    data.prompts = fit_prompts(data.prompts[: cfg.max_prompts] if cfg.max_prompts else data.prompts, tokenizer, cfg)
    if cfg.algorithm != "dpo" and not data.prompts:
        raise ValueError(f"{cfg.prompts}: no training prompts fit max_length {cfg.max_length}")
    if cfg.algorithm == "ppo":
        summary = train_ppo_policy(cfg, data, output_dir)
        write_lineage(output_dir, data.sft, stage="rlhf (ppo)", data=str(cfg.prompts), steps=cfg.ppo.steps,
                      method="full fine-tuning")
        return summary
    guard = kl_guard(cfg.max_kl)
    trainer = ALGORITHMS[cfg.algorithm](cfg, data, seed, tokenizer, [guard])
    result = trainer.train()
    lora = save_trained(trainer, data.sft, output_dir, cfg.lora, "CAUSAL_LM")
    tokenizer.save_pretrained(output_dir)
    write_lineage(output_dir, data.sft, stage=f"rlhf ({cfg.algorithm})", data=str(cfg.prompts),
                  steps=result.global_step, method=f"LoRA r={cfg.lora.r}" if cfg.lora.enabled else "full fine-tuning",
                  adapter=lora.get("adapter"))
    return {**lora, "algorithm": cfg.algorithm, "steps": result.global_step, "train_loss": result.training_loss,
            "stopped_early": guard.stopped_at is not None, "last_logged_kl": guard.last_kl,
            "train_prompts": len(data.prompts), "train_pairs": len(data.pairs) if cfg.algorithm == "dpo" else 0}
