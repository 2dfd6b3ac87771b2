"""Pretrain the Llama-style model from scratch on the clean documents (next-token prediction), or
continue pretraining the base model that pretrain.base holds (base_model.source set).

Reads pretrain.input (data/clean/documents.jsonl) and pretrain.tokenizer (models/tokenizer/); writes
pretrain.output (models/base/: model + tokenizer + chatforge.yaml), resumable checkpoints in
pretrain.checkpoint_dir (checkpoints/pretrain/, a DVC persist out: a killed run resumes from the last
complete one), pretrain.report (reports/pretrain.json) and the loss curves (DVC plots).
Params: seed, model, pretrain. pretrain.launcher=torchrun|accelerate re-runs this module under
that launcher (DDP with pretrain.nproc_per_node processes; FSDP/ZeRO via pretrain.accelerate_config).
Run: dvc repro pretrain   or   python -m stages.pretrain --set pretrain.max_tokens=200000
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from chatforge.core.config import load_config
from chatforge.core.launcher import relaunch_command, run_launched
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.train.model import ModelConfig
from chatforge.train.pretrain import PretrainConfig, pretrain, samples_markdown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    model: ModelConfig
    pretrain: PretrainConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(Params, argv, description=__doc__)
    pc = cfg.pretrain
    command = relaunch_command(pc.launcher, "stages.pretrain", argv, nproc_per_node=pc.nproc_per_node,
                               accelerate_config=pc.accelerate_config)
    if command:
        raise SystemExit(run_launched(command))
    with stage_run("pretrain", cfg) as run:
        result = pretrain(pc, cfg.model, cfg.seed, config_to_save=cfg,
                          report_to=["mlflow"] if run.run_id else [])
        if result.report:                         # rank 0
            run.report(pc.report, result.report)
            run.log_text(samples_markdown(result.samples), "samples.md")
            run.log_artifact(pc.loss_curve, "curves")
            run.log_artifact(pc.val_curve, "curves")
            for prompt, continuation in result.samples:
                log.info("sample: %r -> %r", prompt, continuation)


if __name__ == "__main__":
    main()
