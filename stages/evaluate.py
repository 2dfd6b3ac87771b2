"""Evaluate: the report card, the held-out figures, and the model registry with gated promotion.

Reads every model (models/{base,sft,reward,judge,policy}), the held-out splits of
data/clean/{conversations,prompts}.jsonl and every stage's report. Writes reports/eval.json (a
DVC metrics file; with each model's lm-eval benchmark scores), reports/samples.md, reports/report.md
and reports/plots/. Registers the models
as chatforge-{base,sft,reward,policy} (alias candidate) and moves chatforge-policy@champion when
the gate passes. Params: seed, evaluate.
Run: dvc repro evaluate   or   python -m stages.evaluate --set evaluate.register=false
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge.core.config import load_config
from chatforge.core.files import atomic_write_text
from chatforge.core.tracking import setup_logging, stage_run
from chatforge.eval.champion import register_and_gate
from chatforge.eval.measurements import (
    EvaluateConfig,
    benchmark_models,
    gather,
    measure_models,
    read_reports,
    render_samples,
)
from chatforge.eval.report_card import write_report_card

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    seed: int
    evaluate: EvaluateConfig


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    ev = cfg.evaluate
    with stage_run("evaluate", cfg) as run:
        start = time.perf_counter()
        reports = read_reports(ev)
        heldout, samples, prompts = measure_models(ev, cfg.seed)
        atomic_write_text(ev.samples, render_samples(samples))
        figures = gather(reports, heldout)
        figures["benchmarks"] = benchmark_models(ev)
        gate = None
        if ev.register and "rlhf" in reports:
            gate = register_and_gate(ev, reports["rlhf"], prompts, cfg.seed, benchmarks=figures["benchmarks"])
            figures["gate"] = {k: v for k, v in gate.items() if k != "versions"}
        write_report_card(ev, figures, reports, gate, Path.cwd())
        figures["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(ev.output, figures)
        for path in (ev.samples, ev.report_card, ev.plots):
            run.log_artifact(path, "report" if path != ev.plots else "report/plots")
        log.info("evaluate: wrote %s, %s and %s", ev.output, ev.samples, ev.report_card)


if __name__ == "__main__":
    main()
