"""Clean the raw records: web-text cleaning, PII redaction, quality filters, dedup, then validation.

Reads data/raw/{documents,conversations,preferences,prompts}.jsonl; writes data/clean/ (the same
files, "split" kept), data/rejected/clean_data.jsonl (every dropped record with its reason),
reports/clean.json, reports/clean_drops.csv (DVC plot) and reports/clean_validation.json (Great
Expectations results). Documents run as datatrove pipelines on clean_data.executor (local worker
processes by default, Slurm or Ray by params; scratch in executor.work_dir, removed after a run); the
outputs are written here, atomically, and only after validation: a failed expectation fails the stage
before any output is written.
Params: clean_data.
Run: dvc repro clean_data   or   python -m stages.clean_data --set clean_data.executor.workers=4
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_open, write_jsonl
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.cleaning.pipeline import CleanDataConfig, clean_all, clean_report
from chatforge.data.cleaning.validate import validate_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    clean_data: CleanDataConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__).clean_data
    with stage_run("clean_data", cfg) as run:
        results = clean_all(cfg)
        report = clean_report(results)
        report["executor"] = {"kind": cfg.executor.kind, "tasks": cfg.executor.tasks, "workers": cfg.executor.workers}
        outputs = {kind: r.kept for kind, r in results.items()}
        try:
            report["validation"] = validate_outputs(outputs, cfg.cleaning.max_chars, cfg.validation)
        finally:
            run.log_artifact(cfg.validation, "validation")
        for kind, kept in outputs.items():
            write_jsonl(cfg.output_dir / f"{kind}.jsonl", kept)
        write_jsonl(cfg.rejects, [rej for r in results.values() for rej in r.rejected])
        with atomic_open(cfg.drops_plot) as fh:
            fh.write("filter,dropped\n" + "".join(f"{k},{v}\n" for k, v in sorted(report["drops"].items())))
        run.report(cfg.report, report)
        log.info("clean_data: documents %d -> %d, bytes %d -> %d, %d duplicates, PII %s",
                 report["documents"]["in"], report["documents"]["out"], report["bytes"]["in"],
                 report["bytes"]["out"], report["duplicates"], report["pii"])


if __name__ == "__main__":
    main()
