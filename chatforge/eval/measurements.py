"""The evaluate stage's measurements: held-out chat loss per model, decoded samples, the
figures gathered from every stage's report, and the per-step curves from MLflow.

The report card itself is rendered by ``chatforge.eval.report_card``; the registry and its gate live
in ``chatforge.eval.registry``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.core.config import field_help, to_dict
from chatforge.eval.benchmarks import BenchmarksConfig
from chatforge.rl.evaluation import EvalSettings

log = logging.getLogger(__name__)

MODELS = ("base", "sft", "policy")
DECODINGS = {   # name -> generate() kwargs; the names appear in reports/samples.md
    "greedy": {"do_sample": False},
    "temperature 0.8, top-p 0.9": {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0},
    "beam search (4 beams)": {"do_sample": False, "num_beams": 4, "early_stopping": True},
}


@dataclass(frozen=True)
class ModelPaths:
    base: Path = field_help(Path("models/base"), "pretrained model")
    sft: Path = field_help(Path("models/sft"), "supervised fine-tuned model")
    reward: Path = field_help(Path("models/reward"), "reward model used in RL")
    judge: Path = field_help(Path("models/judge"), "held-out judge reward model (never used in RL)")
    policy: Path = field_help(Path("models/policy"), "RLHF policy")


@dataclass(frozen=True)
class StageReports:
    prepare_data: Path = field_help(Path("reports/prepare_data.json"), "")
    clean_data: Path = field_help(Path("reports/clean.json"), "")
    train_tokenizer: Path = field_help(Path("reports/train_tokenizer.json"), "")
    pretrain: Path = field_help(Path("reports/pretrain.json"), "")
    sft: Path = field_help(Path("reports/sft.json"), "")
    train_reward: Path = field_help(Path("reports/train_reward.json"), "")
    rlhf: Path = field_help(Path("reports/rlhf.json"), "")
    export: Path = field_help(Path("reports/export.json"), "")


@dataclass(frozen=True)
class GateConfig:
    kl_bound: float = field_help(20.0, "largest KL(policy || SFT) in nats per reply a champion may have")
    min_gain: float = field_help(0.0, "held-out judge reward the candidate must gain over the baseline")
    benchmark_no_regression: bool = field_help(False, "refuse a policy whose benchmark aggregate is below the "
                                                      "baseline's by more than the standard error of the difference")


@dataclass(frozen=True)
class EvaluateConfig:
    models: ModelPaths = field_help(ModelPaths(), "model directories")
    reports: StageReports = field_help(StageReports(), "every stage's report, gathered into eval.json")
    conversations: Path = field_help(Path("data/clean/conversations.jsonl"), "held-out conversations (validation split)")
    prompts: Path = field_help(Path("data/clean/prompts.jsonl"), "held-out prompts (validation split)")
    output: Path = field_help(Path("reports/eval.json"), "the figures (a DVC metrics file)")
    samples: Path = field_help(Path("reports/samples.md"), "held-out prompts answered by each model and decoding")
    report_card: Path = field_help(Path("reports/report.md"), "the report card")
    plots: Path = field_help(Path("reports/plots"), "PNG plots for the report card")
    heldout_conversations: int = field_help(64, "validation conversations for each model's chat loss")
    sample_prompts: int = field_help(3, "held-out prompts shown in samples.md")
    max_new_tokens: int = field_help(40, "tokens per sample")
    max_length: int = field_help(256, "context for chat loss and sampling")
    dialogue: list[dict[str, str]] = field_help([
        {"role": "user", "content": "Hi! My name is Sam and I love playing the guitar."},
        {"role": "assistant", "content": "Nice to meet you, Sam! How long have you been playing?"},
        {"role": "user", "content": "About five years. Do you remember what instrument I play?"},
    ], "a multi-turn conversation whose answer depends on an earlier turn")
    gate: GateConfig = field_help(GateConfig(), "when the new policy becomes the champion")
    champion_eval: EvalSettings = field_help(EvalSettings(max_prompts=32), "candidate vs champion comparison")
    benchmarks: BenchmarksConfig = field_help(BenchmarksConfig(), "lm-evaluation-harness tasks scored on each model")
    register: bool = field_help(True, "log and register the models in the MLflow registry")


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def chat_loss(model, tokenizer, conversations: list[list[dict[str, str]]], max_length: int,
              batch_size: int = 16) -> float:
    """Mean cross-entropy on assistant tokens of held-out conversations (nats per token)."""
    import torch

    from chatforge.train.chat_format import IGNORE_INDEX, encode_chat

    encoded = [encode_chat(m, tokenizer, max_length) for m in conversations]
    encoded = [e for e in encoded if any(e.assistant_mask)]
    total, count = 0.0, 0
    for b in range(0, len(encoded), batch_size):
        batch = encoded[b:b + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [tokenizer.pad_token_id] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e.input_ids) for e in batch])[:, None]).long()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()     # (B, T-1, V)
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((target != IGNORE_INDEX).sum())
    return total / count if count else math.nan


def generate_samples(models: dict[str, Any], tokenizer, prompts: list[list[dict[str, str]]],
                     max_new_tokens: int, max_length: int, seed: int) -> list[dict[str, Any]]:
    """Each prompt answered by each model with each decoding in DECODINGS."""
    import torch

    from chatforge.train.chat_format import encode_chat, stop_token_ids

    stops = sorted(stop_token_ids(tokenizer))
    rows = []
    for messages in prompts:
        ids = encode_chat(messages, tokenizer, max_length, add_generation_prompt=True,
                          reserve=max_new_tokens).input_ids
        answers: dict[str, dict[str, str]] = {}
        for name, model in models.items():
            answers[name] = {}
            for decoding, kwargs in DECODINGS.items():
                torch.manual_seed(seed)
                with torch.no_grad():
                    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         max_new_tokens=max_new_tokens, eos_token_id=stops,
                                         pad_token_id=tokenizer.pad_token_id, **kwargs)
                answers[name][decoding] = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
        rows.append({"messages": messages, "answers": answers})
    return rows


def render_samples(rows: list[dict[str, Any]]) -> str:
    lines = ["# Samples", "",
             "Held-out prompts answered by each model with each decoding (the same seed for every row).", ""]
    for i, row in enumerate(rows, start=1):
        lines += [f"## Prompt {i}", ""]
        for m in row["messages"]:
            lines.append(f"> **{m['role']}**: {m['content']}".replace("\n", " "))
        lines.append("")
        for name, by_decoding in row["answers"].items():
            lines += [f"**{name}**", ""]
            lines += [f"- *{dec}*: {text or '(empty)'}".replace("\n", " ") for dec, text in by_decoding.items()]
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Gathering
# --------------------------------------------------------------------------------------------

def pick(report: dict[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present in ``report`` (dotted keys reach into nested dicts)."""
    for key in keys:
        node: Any = report
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def gather(reports: dict[str, dict[str, Any]], heldout: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The figures of eval.json, from every stage's report plus the held-out measurements."""
    pre, sft, rm, rl = (reports.get(k, {}) for k in ("pretrain", "sft", "train_reward", "rlhf"))
    clean, tok, export = reports.get("clean_data", {}), reports.get("train_tokenizer", {}), reports.get("export", {})
    out: dict[str, Any] = {
        "data": {"documents": pick(clean, "documents.out") or pick(reports.get("prepare_data", {}),
                                                                    "outputs.documents.train"),
                 "tokens": pick(pre, "train_tokens", "tokens_seen")},
        "tokenizer": {"vocab_size": pick(tok, "vocab_size"), "bytes_per_token": pick(tok, "bytes_per_token")},
        "pretrain": {"val_bpb": pick(pre, "val_bpb"), "unigram_bpb": pick(pre, "unigram_bpb"),
                     "val_loss": pick(pre, "val_loss")},
        "sft": {"val_loss": pick(sft, "val_loss", "eval_loss")},
        "reward": {"accuracy": pick(rm, "accuracy"), "judge_accuracy": pick(rm, "judge_accuracy"),
                   "margin_mean": pick(rm, "margin_mean")},
        "rlhf": {k: rl.get(k) for k in ("algorithm", "reward_sft", "reward_policy", "kl", "win_rate",
                                        "win_rate_length_controlled", "proxy_reward_sft", "proxy_reward_policy",
                                        "length_sft", "length_policy", "distinct2_sft", "distinct2_policy")},
        "heldout_chat_loss": heldout,
    }
    if export:
        out["export"] = export
    return out


def benchmark_models(ev: EvaluateConfig) -> dict[str, dict[str, Any]]:
    """lm-eval's tasks on the models that ``ev.benchmarks.models`` names ({} when off)."""
    from chatforge.eval.benchmarks import run_benchmarks

    unknown = [m for m in ev.benchmarks.models if m not in MODELS]
    if unknown:
        raise ValueError(f"evaluate.benchmarks.models: {unknown} are not among {list(MODELS)}")
    return run_benchmarks(ev.benchmarks, {m: getattr(ev.models, m) for m in ev.benchmarks.models})


def read_reports(ev: EvaluateConfig) -> dict[str, dict]:
    """Every stage's report that exists, by stage name (a missing one leaves its section empty)."""
    reports = {}
    for name, path in to_dict(ev.reports).items():
        if Path(path).exists():
            reports[name] = json.loads(Path(path).read_text())
        else:
            log.warning("evaluate: no %s report at %s; its section stays empty", name, path)
    return reports


def measure_models(ev: EvaluateConfig, seed: int) -> tuple[dict[str, float], list[dict[str, Any]], list]:
    """(held-out chat loss of each model, decoded samples, the held-out prompts) from the held-out
    splits of ``ev.conversations`` and ``ev.prompts``."""
    from chatforge.data.records import read_by_split
    from chatforge.train.loading import load_model_and_tokenizer

    conversations = [c["messages"] for c in read_by_split(ev.conversations)["validation"]]
    prompts = [p["messages"] for p in read_by_split(ev.prompts)["validation"]]
    models, heldout = {}, {}
    for name in MODELS:
        models[name], tokenizer = load_model_and_tokenizer(getattr(ev.models, name))
        heldout[name] = chat_loss(models[name], tokenizer, conversations[: ev.heldout_conversations], ev.max_length)
    log.info("held-out chat loss: %s", heldout)
    samples = generate_samples(models, tokenizer, prompts[: ev.sample_prompts] + [ev.dialogue],
                               ev.max_new_tokens, ev.max_length, seed)
    return heldout, samples, prompts
