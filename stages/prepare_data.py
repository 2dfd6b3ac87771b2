"""Ingest the configured sources into the four record files, with train/validation splits.

Reads prepare_data.sources (every 'path' source inside prepare_data.inputs_dir, the folder dvc.yaml lists
as a dependency, so that editing an input re-runs the stage), writes data/raw/{documents,conversations,preferences,prompts}.jsonl
(each record carries "split": "train" | "validation"), data/rejected/prepare_data.jsonl and
reports/prepare_data.json. Params: seed, prepare_data.
Run: dvc repro prepare_data   or   python -m stages.prepare_data --set prepare_data.validation_fraction=0.2
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import InputError
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.data.ingest import PrepareDataConfig, ingest_to_files, untracked_path_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    prepare_data: PrepareDataConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    pd = cfg.prepare_data
    if outside := untracked_path_sources(pd):
        raise InputError(f"prepare_data.sources: {outside} lie outside prepare_data.inputs_dir '{pd.inputs_dir}', so "
                         "DVC would not re-run the stage when they change; move (or `dvc add`) them into it, or "
                         "point inputs_dir at a folder that holds them (symlinks are not followed by DVC)")
    with stage_run("prepare_data", cfg) as run:
        counts = ingest_to_files(pd, cfg.seed).report()      # streams: records go to the files as they are read
        run.report(pd.report, counts)
        run.log_artifact(pd.rejects, "rejected")
        log.info("prepare_data: %d records in, %d accepted, %d rejected (see %s)", counts["records_in"],
                 counts["records_accepted"], counts["records_rejected"], pd.rejects)


if __name__ == "__main__":
    main()
