"""Clean the raw records: web-text cleaning, PII redaction, quality filters, dedup, then validation.

Reads data/raw/{documents,conversations,preferences,prompts}.jsonl; writes data/clean/ (the same
files, "split" kept), data/rejected/clean_data.jsonl (every dropped record with its reason),
reports/clean.json, reports/clean_drops.csv (DVC plot) and reports/clean_validation.json (Great
Expectations results). Documents run as datatrove pipelines on clean_data.executor (local worker
processes by default, Slurm or Ray by params; scratch in executor.work_dir, removed after a run); the
outputs stream into temporary files here while Great Expectations checks them chunk by chunk; they are
renamed into place only after validation passed: a failed expectation fails the stage and leaves the old
outputs.
Params: clean_data.
Run: dvc repro clean_data   or   python -m stages.clean_data --set clean_data.executor.workers=4
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_open
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.cleaning.pipeline import CleanDataConfig, clean_report, clean_to_files
from chatforge.data.cleaning.validate import ChunkValidator, ValidationFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    clean_data: CleanDataConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__).clean_data
    with stage_run("clean_data", cfg) as run:
        check = ChunkValidator(cfg.cleaning.max_chars, cfg.validation)
        try:
            results, validation = clean_to_files(cfg, check)      # streams; renamed into place once validated
        except ValidationFailed:
            run.log_artifact(cfg.validation, "validation")
            raise
        run.log_artifact(cfg.validation, "validation")
        report = clean_report(results)
        report["executor"] = {"kind": cfg.executor.kind, "tasks": cfg.executor.tasks, "workers": cfg.executor.workers}
        report["validation"] = validation
        with atomic_open(cfg.drops_plot) as fh:
            fh.write("filter,dropped\n" + "".join(f"{k},{v}\n" for k, v in sorted(report["drops"].items())))
        run.report(cfg.report, report)
        log.info("clean_data: documents %d -> %d, bytes %d -> %d, %d duplicates, PII %s",
                 report["documents"]["in"], report["documents"]["out"], report["bytes"]["in"],
                 report["bytes"]["out"], report["duplicates"], report["pii"])


if __name__ == "__main__":
    main()
