"""Train the reward model (used by rlhf) and a held-out judge (used only to evaluate rlhf) on
disjoint parts of the preference pairs; report both models' held-out pairwise accuracy beside untrained
baselines on the same pairs (word overlap, IDF overlap, length, PMI of the SFT model).

Reads models/sft/ and data/clean/preferences.jsonl (or any preference file the readers accept,
e.g. Anthropic HH .jsonl.gz), writes models/reward/, models/judge/ and reports/train_reward.json.
Params: seed, train_reward.
Run: dvc repro train_reward   or   python -m stages.train_reward --set train_reward.max_steps=5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.preferences import read_preferences, split_preferences
from chatforge.eval.reward_baselines import reward_baselines
from chatforge.train.loading import load_model_and_tokenizer
from chatforge.train.reward import RewardModelConfig, agreement, train_and_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    train_reward: RewardModelConfig


def main(argv: list[str] | None = None) -> None:
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
            metrics, margins = train_and_score(rc, reward_pairs, validation, cfg.seed, out)
            report.update(metrics)
        with run.child("judge"), atomic_dir(rc.judge_output) as out:
            judge, judge_margins = train_and_score(rc, judge_pairs, validation, cfg.seed + 1, out, "judge")
            report.update({f"judge_{k}": v for k, v in judge.items() if k != "pairs"})
        if margins:
            report["judge_agreement"] = agreement(margins, judge_margins)
        # Untrained scorers on the same held-out pairs: what the reward model's accuracy must beat.
        report.update(reward_baselines(reward_pairs, validation, *load_model_and_tokenizer(rc.sft),
                                       batch_size=rc.eval_batch_size, max_length=rc.max_length))
        report["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(rc.report, report)
        log.info("train_reward: held-out accuracy %.3f (margin %.3f), judge %.3f; untrained baselines: %s",
                 report.get("accuracy", 0.0), report.get("margin_mean", 0.0), report.get("judge_accuracy", 0.0),
                 {k.removeprefix("baseline_"): round(v, 3) for k, v in report.items() if k.startswith("baseline_")})


if __name__ == "__main__":
    main()
