"""Train the reward model (used by rlhf) and a held-out judge (used only to evaluate rlhf) on
disjoint parts of the preference pairs; report both models' held-out pairwise accuracy.

Reads models/sft/ and data/clean/preferences.jsonl (or any preference file the readers accept,
e.g. Anthropic HH .jsonl.gz), writes models/reward/, models/judge/ and reports/train_reward.json.
Params: seed, train_reward.
Run: dvc repro train_reward   or   python -m stages.train_reward --set train_reward.max_steps=5
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

from chatforge.config import load_config
from chatforge.jsonl import atomic_dir
from chatforge.preferences import read_preferences, split_preferences
from chatforge.reward import RewardModelConfig, load_reward_model, pairwise_metrics, train_reward_model
from chatforge.tracking import setup_logging, stage_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    train_reward: RewardModelConfig


def main(argv: list[str] | None = None) -> None:
    import mlflow

    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    rc = cfg.train_reward
    loaded = read_preferences(rc.input)
    parts = split_preferences(loaded.records, cfg.seed, rc.judge_fraction, rc.validation_fraction)
    cap = (lambda xs: xs[: rc.max_pairs]) if rc.max_pairs else (lambda xs: xs)
    reward_pairs, judge_pairs, validation = cap(parts.reward), cap(parts.judge), cap(parts.validation)
    log.info("train_reward: %d pairs (%d rejected): reward %d, judge %d, validation %d", len(loaded.records),
             len(loaded.rejected), len(reward_pairs), len(judge_pairs), len(validation))
    report: dict = {"input": str(rc.input), "pairs_rejected": len(loaded.rejected)}
    start = time.perf_counter()
    with stage_run("train_reward", cfg) as run:
        with atomic_dir(rc.output) as out:
            report.update({f"train_{k}": v for k, v in train_reward_model(rc, reward_pairs, cfg.seed, out).items()})
            model, tok = load_reward_model(out)
            metrics, margins = pairwise_metrics(model, tok, validation, rc.eval_batch_size)
            report.update(metrics)
        # The judge logs into a child run: the trainer's params would clash with the reward model's.
        child = mlflow.start_run(run_name="train_reward/judge", nested=True) if run.run_id else nullcontext()
        with child, atomic_dir(rc.judge_output) as out:
            report.update({f"judge_train_{k}": v
                           for k, v in train_reward_model(rc, judge_pairs, cfg.seed + 1, out, "judge").items()})
            model, tok = load_reward_model(out)
            judge, judge_margins = pairwise_metrics(model, tok, validation, rc.eval_batch_size)
            report.update({f"judge_{k}": v for k, v in judge.items() if k != "pairs"})
        if margins:
            # How often the two models order a held-out pair the same way: low agreement means the
            # judge is a real second opinion, not a copy.
            report["judge_agreement"] = sum((a > 0) == (b > 0) for a, b in zip(margins, judge_margins)) / len(margins)
        report["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(rc.report, report)
        log.info("train_reward: held-out accuracy %.3f (margin %.3f), judge %.3f", report.get("accuracy", 0.0),
                 report.get("margin_mean", 0.0), report.get("judge_accuracy", 0.0))


if __name__ == "__main__":
    main()
