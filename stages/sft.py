"""Supervised fine-tuning of the base model on the clean conversations (loss on assistant tokens).

Reads models/base/ and data/clean/conversations.jsonl (train split to train, validation split for
held-out loss), writes models/sft/ (model + tokenizer) and reports/sft.json. Params: seed, sft.
Run: dvc repro sft   or   python -m stages.sft --set sft.max_steps=5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from chatforge.config import load_config
from chatforge.jsonl import atomic_dir, read_jsonl
from chatforge.sft import SftConfig, train_sft
from chatforge.tracking import setup_logging, stage_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    sft: SftConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    sft = cfg.sft
    records = read_jsonl(sft.input)
    train = [r for r in records if r.get("split", "train") == "train"]
    validation = [r for r in records if r.get("split") == "validation"]
    start = time.perf_counter()
    with stage_run("sft", cfg) as run, atomic_dir(sft.output) as out:
        metrics = train_sft(sft, train, validation, cfg.seed, out)
        metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(sft.report, metrics)


if __name__ == "__main__":
    main()
