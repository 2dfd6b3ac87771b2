"""Tokenise the clean documents into token shards for pretraining (datatrove executors: local, Slurm, Ray).

Reads tokenize.input (data/clean/documents.jsonl, or a directory of .jsonl/.jsonl.gz shards) and
tokenize.tokenizer (models/tokenizer/); writes tokenize.output (data/tokens/: <split>/<task>.bin token
ids, uint16 when the vocabulary fits, else uint32, with <task>.docs.npy document offsets and index.json)
and tokenize.report (reports/tokenize.json). pretrain memory-maps the shards. Params: tokenize.
Run: dvc repro tokenize   or   python -m stages.tokenize --set tokenize.executor.tasks=8
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.tokenize import TokenizeConfig, tokenize_corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    tokenize: TokenizeConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__).tokenize
    with stage_run("tokenize", cfg) as run:
        report = tokenize_corpus(cfg)
        run.report(cfg.report, report)
        log.info("tokenize: %d train + %d validation tokens (%s) in %.1f s, %.0f tokens/s",
                 report["train"]["tokens"], report["validation"]["tokens"], report["dtype"], report["seconds"],
                 report["tokens_per_second"])


if __name__ == "__main__":
    main()
