"""Reward models: TRL's RewardTrainer (pairwise Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected))
on a sequence-classification head over the SFT model, optionally with a learned token-match head
beside it (chatforge.train.token_match; the tiny default trains only that), and scoring replies with a
trained one.

The same code trains two models on disjoint pairs (see chatforge.data.preferences): the *reward model*
that RL optimises against, and the held-out *judge* (the "gold" reward model of the reward
over-optimisation studies, Gao et al. 2022, arXiv:2210.10760) that only evaluation uses. Pairs are
tokenized here with ``encode_chat``, so a long prompt loses whole turns from the left instead of
the pair being dropped (TRL filters pairs longer than max_length).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from chatforge.core.config import field_help
from chatforge.train.chat_format import encode_chat, reply_pair
from chatforge.train.lora import LoraConfig, save_trained, trainer_kwargs
from chatforge.train.reply_probe import ReplyProbeConfig
from chatforge.train.token_match import TokenMatchConfig
from chatforge.train.trainer_args import training_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardModelConfig:
    sft: Path = field_help(Path("models/sft"), "model to start from (the SFT model, with its tokenizer)")
    input: Path = field_help(Path("data/clean/preferences.jsonl"),
                             "preference pairs: ours, Anthropic HH or TRL format; .jsonl or .jsonl.gz")
    output: Path = field_help(Path("models/reward"), "the reward model used by rlhf (with its tokenizer)")
    judge_output: Path = field_help(Path("models/judge"), "the held-out judge, used only to evaluate rlhf")
    checkpoints: Path = field_help(Path("checkpoints/train_reward"), "trainer output dir")
    report: Path = field_help(Path("reports/train_reward.json"), "held-out accuracy and margins of both models")
    judge_fraction: float = field_help(0.5, "share of training pairs (by conversation) given to the judge instead")
    validation_fraction: float = field_help(0.1, "held-out share for files whose records carry no 'split'")
    max_length: int = field_help(128, "tokens per prompt + reply; long prompts lose turns from the left")
    epochs: float = field_help(1.0, "passes over the pairs")
    max_steps: int = field_help(40, "optimizer steps per model; 0 = run the epochs")
    batch_size: int = field_help(16, "pairs per device per step")
    lr: float = field_help(2.0e-3, "peak learning rate (cosine decay)")
    weight_decay: float = field_help(0.0, "AdamW weight decay")
    center_rewards_coefficient: float = field_help(
        0.01, "pulls mean reward to 0 (Eisenstein et al. 2023); keeps the RL reward scale stable")
    max_pairs: int = field_help(0, "use at most this many pairs of each part (0 = all)")
    eval_batch_size: int = field_help(32, "sequences per forward pass when scoring")
    logging_steps: int = field_help(10, "log loss/accuracy/margin to MLflow every N steps")
    lora: LoraConfig = field_help(LoraConfig(), "LoRA adapter (the scalar head trains in full) instead of all weights")
    reply_probe: ReplyProbeConfig = field_help(ReplyProbeConfig(), "a linear probe on the reply's mean hidden state "
                                                                   "in place of the last token's score")
    token_match: TokenMatchConfig = field_help(TokenMatchConfig(), "a learned token-match head added to the score")

    def __post_init__(self) -> None:
        if not 0.0 < self.judge_fraction < 1.0:
            raise ValueError("'judge_fraction' must be in (0, 1): the judge and the reward model both need pairs")
        if not (self.trains_transformer or self.reply_probe.enabled or self.token_match.enabled):
            raise ValueError("set 'epochs' > 0 or 'max_steps' > 0, or enable 'reply_probe' or 'token_match' "
                             "(the transformer's head untrained scores nothing)")

    @property
    def trains_transformer(self) -> bool:
        """epochs and max_steps both 0: only the heads are fitted (reply probe, token match)."""
        return self.max_steps > 0 or self.epochs > 0


def encode_pairs(pairs: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """Pairs -> TRL's pre-tokenized reward format ``{"chosen_ids", "rejected_ids"}``."""
    return [{"chosen_ids": encode_chat(reply_pair(p["prompt"], p["chosen"]), tokenizer, max_length).input_ids,
             "rejected_ids": encode_chat(reply_pair(p["prompt"], p["rejected"]), tokenizer, max_length).input_ids}
            for p in pairs]


def train_reward_model(cfg: RewardModelConfig, pairs: list[dict[str, Any]], seed: int, output_dir: Path,
                       name: str = "reward") -> dict[str, float]:
    """Train a reward model from ``cfg.sft`` on ``pairs``; save it with its tokenizer; return train metrics."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from chatforge.train.base_model import write_lineage
    from chatforge.train.tokenizer import load_tokenizer

    if not pairs:
        raise ValueError(f"{cfg.input}: no training pairs for the {name} model")
    tokenizer = load_tokenizer(cfg.sft)
    if not cfg.trains_transformer:
        return save_untrained(cfg, tokenizer, len(pairs), seed, output_dir, name)
    args = RewardConfig(**training_args(
        cfg.checkpoints / name, seed, name, logging_steps=cfg.logging_steps,
        max_length=cfg.max_length, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=0.05, weight_decay=cfg.weight_decay,
        center_rewards_coefficient=cfg.center_rewards_coefficient or None,
    ))
    trainer = RewardTrainer(model=str(cfg.sft), args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list(encode_pairs(pairs, tokenizer, cfg.max_length)),
                            **trainer_kwargs(cfg.lora, "SEQ_CLS"))
    result = trainer.train()
    # Scored later as it was trained: every scorer reads this length (see score_replies).
    lora = save_trained(trainer, cfg.sft, output_dir, cfg.lora, "SEQ_CLS", {"reward_max_length": cfg.max_length})
    tokenizer.save_pretrained(output_dir)
    write_lineage(output_dir, cfg.sft, stage=f"train_reward ({name})", data=str(cfg.input), pairs=len(pairs),
                  steps=result.global_step, method=f"LoRA r={cfg.lora.r}" if cfg.lora.enabled else "full fine-tuning",
                  adapter=lora.get("adapter"))
    log.info("%s model: %d pairs, %d steps, train loss %.4f", name, len(pairs), result.global_step,
             result.training_loss)
    return {"train_pairs": len(pairs), "steps": result.global_step, "train_loss": result.training_loss}


def save_untrained(cfg: RewardModelConfig, tokenizer, pairs: int, seed: int, output_dir: Path,
                   name: str) -> dict[str, float]:
    """The SFT model with a new scalar head, saved as is: the reward model's transformer when only the
    heads are fitted (the reply probe reads its hidden states; without one the token-match mix gives
    the transformer weight 0). The head's initialisation is seeded, so the directory is the same on
    every run (DVC sees no change)."""
    from transformers import AutoModelForSequenceClassification, set_seed

    from chatforge.train.base_model import write_lineage
    from chatforge.train.loading import require_model_dir

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(require_model_dir(cfg.sft)), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.reward_max_length = cfg.max_length
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_lineage(output_dir, cfg.sft, stage=f"train_reward ({name})", data=str(cfg.input), pairs=pairs, steps=0,
                  method=f"{heads(cfg)} only (the transformer is the SFT model, untrained for reward)")
    log.info("%s model: transformer not trained (train_reward.epochs and max_steps are 0)", name)
    return {"train_pairs": pairs, "steps": 0}


class RewardScorer(torch.nn.Module):
    """A reward model's transformer with the heads saved beside it (a reply probe, a token-match head)
    as one module: ``config`` and ``device`` are the transformer's, so callers treat it as the model."""

    def __init__(self, transformer, probe=None, head=None):
        super().__init__()
        self.transformer, self.probe, self.head = transformer, probe, head

    @property
    def config(self):
        return self.transformer.config

    @property
    def device(self):
        return self.transformer.device


def heads(cfg: RewardModelConfig) -> str:
    """The heads fitted beside the transformer, in words (for the lineage and the logs)."""
    names = [name for name, on in (("reply probe", cfg.reply_probe.enabled), ("token-match head", cfg.token_match.enabled))
             if on]
    return " and ".join(names) or "no head"


def load_reward_model(path: Path) -> tuple[RewardScorer, Any]:
    """(scorer, tokenizer) from a reward model directory: the transformer in eval mode with its reply
    probe and token-match head when they were trained."""
    import chatforge.train.reply_probe as reply_probe
    import chatforge.train.token_match as token_match
    from chatforge.train.loading import load_model_and_tokenizer

    transformer, tokenizer = load_model_and_tokenizer(path, head="reward")
    probe = reply_probe.ReplyProbe.load(path) if (Path(path) / reply_probe.WEIGHTS).exists() else None
    head = token_match.TokenMatchHead.load(path) if (Path(path) / token_match.WEIGHTS).exists() else None
    return RewardScorer(transformer, probe, head).eval(), tokenizer


def scoring_length(model) -> int:
    """The tokens a reward model reads: the ``max_length`` it was trained with (its context if unknown)."""
    return int(getattr(model.config, "reward_max_length", None) or model.config.max_position_embeddings)


def score_replies(model, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
                  batch_size: int = 32) -> list[float]:
    """The reward of each (prompt, reply) from ``load_reward_model``'s scorer: the transformer's score
    (its reply probe's when it has one), mixed with the token-match head's when it has one (see
    chatforge.train.token_match)."""
    head = getattr(model, "head", None)
    if head is None:
        return base_scores(model, tokenizer, prompts, replies, batch_size)
    alpha, beta = head.mix.tolist()
    match = head.score(prompts, replies, tokenizer)
    if alpha == 0.0:
        return [beta * m for m in match]
    return [alpha * t + beta * m for t, m in zip(base_scores(model, tokenizer, prompts, replies, batch_size), match)]


def base_scores(model, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
                batch_size: int = 32) -> list[float]:
    """The transformer's part of the reward: the reply probe on its hidden states when the scorer has
    one, else its sequence-classification (last token) score."""
    transformer = getattr(model, "transformer", model)
    if (probe := getattr(model, "probe", None)) is not None:
        return probe.score(transformer, tokenizer, prompts, replies, batch_size)
    return transformer_scores(transformer, tokenizer, prompts, replies, batch_size)


def transformer_scores(model, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str],
                       batch_size: int = 32) -> list[float]:
    """The sequence-classification score of each (prompt, reply), cut at a turn boundary to the length
    the model was trained on (``scoring_length``): a model trained on the last exchange never sees more."""
    max_length = scoring_length(model)
    seqs = [encode_chat(reply_pair(p, r), tokenizer, max_length).input_ids for p, r in zip(prompts, replies)]
    scores: list[float] = []
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=model.device)   # (B, T)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=model.device)
            # LlamaForSequenceClassification reads the logit at the last non-pad token.
            scores.extend(model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist())   # (B,)
    return scores


def pairwise_metrics(model, tokenizer, pairs: list[dict[str, Any]],
                     batch_size: int = 32) -> tuple[dict[str, float], list[float]]:
    """Held-out accuracy (share of pairs with r_chosen > r_rejected) and the margin distribution;
    also returns the per-pair margins."""
    chosen, rejected = pair_scores(partial(score_replies, model, tokenizer, batch_size=batch_size), pairs)
    margins = [c - r for c, r in zip(chosen, rejected)]
    if not margins:
        return {"pairs": 0}, []
    q = statistics.quantiles(margins, n=10) if len(margins) > 1 else [margins[0]] * 9
    return {"pairs": len(margins), "accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin_mean": statistics.fmean(margins), "margin_std": statistics.pstdev(margins),
            "margin_p10": q[0], "margin_p50": q[4], "margin_p90": q[8],
            "reward_chosen_mean": statistics.fmean(chosen), "reward_rejected_mean": statistics.fmean(rejected)}, margins


def train_and_score(cfg: RewardModelConfig, pairs: list[dict[str, Any]], validation: list[dict[str, Any]],
                    seed: int, output_dir: Path, name: str = "reward") -> tuple[dict[str, Any], list[float]]:
    """Train a reward model into ``output_dir`` (the transformer, then the reply probe and the
    token-match head when enabled) and score it on the held-out ``validation`` pairs: ({"train_*": ...,
    accuracy, margin, ...}, the margin of each held-out pair). With the token-match head,
    ``transformer_accuracy`` and ``token_match_accuracy`` say what each part scores alone."""
    report = {f"train_{k}": v for k, v in train_reward_model(cfg, pairs, seed, output_dir, name).items()}
    model, tokenizer = load_reward_model(output_dir)
    if cfg.reply_probe.enabled:
        report.update(add_reply_probe(cfg, model, tokenizer, pairs, seed, output_dir))
        model, tokenizer = load_reward_model(output_dir)
    if cfg.token_match.enabled:
        report.update(add_token_match(cfg, model, tokenizer, pairs, validation, seed, output_dir))
        model, tokenizer = load_reward_model(output_dir)
    metrics, margins = pairwise_metrics(model, tokenizer, validation, cfg.eval_batch_size)
    return {**report, **metrics}, margins


def add_reply_probe(cfg: RewardModelConfig, model, tokenizer, pairs: list[dict[str, Any]], seed: int,
                    output_dir: Path) -> dict[str, float]:
    """Fit the reply probe on ``pairs`` over the transformer's hidden states and save it into
    ``output_dir``; returns its penalty and cross-validated figures."""
    from chatforge.train.reply_probe import fit_reply_probe

    probe = fit_reply_probe(model.transformer, tokenizer, pairs, cfg.reply_probe, scoring_length(model), seed,
                            cfg.eval_batch_size)
    probe.save(output_dir)
    return {f"reply_probe_{k}": v for k, v in probe.fit_report.items() if k != "train_pairs"}


def add_token_match(cfg: RewardModelConfig, model, tokenizer, pairs: list[dict[str, Any]],
                    validation: list[dict[str, Any]], seed: int, output_dir: Path) -> dict[str, float]:
    """Train the token-match head on ``pairs``, fit its mix with the trained transformer and save it
    into ``output_dir``; returns each part's held-out accuracy and the mix."""
    from chatforge.train.token_match import fit_mix, fit_token_match

    head, loss = fit_token_match(pairs, tokenizer, cfg.token_match, seed)

    def transformer(prompts, replies):
        return base_scores(model, tokenizer, prompts, replies, cfg.eval_batch_size)

    def match(prompts, replies):
        return head.score(prompts, replies, tokenizer)

    report = {"token_match_train_loss": loss, "token_match_accuracy": win_share(*pair_scores(match, validation))}
    if cfg.trains_transformer:
        fit_mix(head, pair_scores(transformer, pairs), pair_scores(match, pairs))
        report["transformer_accuracy"] = win_share(*pair_scores(transformer, validation))
    head.save(output_dir)
    alpha, beta = head.mix.tolist()
    return {**report, "mix_transformer": alpha, "mix_token_match": beta}


def pair_scores(score: Callable[[list[list[dict[str, str]]], list[str]], list[float]],
                pairs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(chosen replies' scores, rejected replies' scores) of ``pairs`` by a batch scorer
    ``score(prompts, replies)``."""
    prompts = [p["prompt"] for p in pairs]
    return score(prompts, [p["chosen"] for p in pairs]), score(prompts, [p["rejected"] for p in pairs])


def win_share(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs whose chosen score is above the rejected one (a tie counts half)."""
    if not chosen:
        return float("nan")
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(chosen)


def agreement(margins: list[float], other: list[float]) -> float:
    """How often two reward models order the same held-out pairs the same way. The judge should be a
    real second opinion: agreement near 1 would make it a copy of the reward model."""
    return sum((a > 0) == (b > 0) for a, b in zip(margins, other)) / len(margins)
