"""Supervised fine-tuning of the base model on the clean conversations (loss on assistant tokens).

Reads models/base/ and data/clean/conversations.jsonl (train split to train, validation split for
held-out loss), writes models/sft/ (model + tokenizer) and reports/sft.json. Params: seed, sft.
Run: dvc repro sft   or   python -m stages.sft --set sft.max_steps=5
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.records import read_by_split
from chatforge.train.sft import SftConfig, train_sft

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    sft: SftConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    sft = cfg.sft
    splits = read_by_split(sft.input)
    start = time.perf_counter()
    with stage_run("sft", cfg) as run, atomic_dir(sft.output) as out:
        metrics = train_sft(sft, splits["train"], splits["validation"], cfg.seed, out)
        metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(sft.report, metrics)


if __name__ == "__main__":
    main()
