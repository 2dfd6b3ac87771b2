"""Evaluate: the report card, the held-out figures, and the model registry with gated promotion.

Reads every model (models/{base,sft,reward,judge,policy}), the held-out splits of
data/clean/{conversations,prompts}.jsonl and every stage's report. Writes reports/eval.json (a
DVC metrics file), reports/samples.md, reports/report.md and reports/plots/. Registers the models
as chatforge-{base,sft,reward,policy} (alias candidate) and moves chatforge-policy@champion when
the gate passes. Params: seed, evaluate.
Run: dvc repro evaluate   or   python -m stages.evaluate --set evaluate.register=false
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import load_config, to_dict
from chatforge.evaluation import MODELS, EvaluateConfig, chat_loss, gather, generate_samples, render_samples
from chatforge.jsonl import atomic_write_text, read_jsonl
from chatforge.registry import (CHAMPION, alias_version, apply_decision, decide_promotion, dvc_lock_hash,
                                register_model)
from chatforge.report import environment
from chatforge.report_card import make_plots, render_report_card, stage_curves, stage_wall_seconds
from chatforge.rlhf_eval import evaluate_policy, load_policy
from chatforge.tracking import git_commit, setup_logging, stage_run

log = logging.getLogger(__name__)

REGISTERED = {"base": ("chatforge-base", "pretrain"), "sft": ("chatforge-sft", "sft"),
              "reward": ("chatforge-reward", "train_reward"), "policy": ("chatforge-policy", "rlhf")}


@dataclass(frozen=True)
class Params:
    seed: int
    evaluate: EvaluateConfig


def read_reports(ev: EvaluateConfig) -> dict[str, dict]:
    reports = {}
    for name, path in to_dict(ev.reports).items():
        if Path(path).exists():
            reports[name] = json.loads(Path(path).read_text())
        else:
            log.warning("evaluate: no %s report at %s; its section stays empty", name, path)
    return reports


def champion_baseline(ev: EvaluateConfig, heldout_prompts: list, rlhf: dict, seed: int) -> tuple[float, float, str]:
    """(candidate reward, baseline reward, baseline name): vs the current champion when there is one
    (both re-scored by the judge on the same held-out prompts), else vs SFT from the rlhf report."""
    import mlflow

    version = alias_version("chatforge-policy", CHAMPION)
    if version is None:
        return rlhf["reward_policy"], rlhf["reward_sft"], "sft"
    with tempfile.TemporaryDirectory() as tmp:
        parts = mlflow.transformers.load_model(f"models:/chatforge-policy@{CHAMPION}", return_type="components")
        parts["model"].save_pretrained(tmp)
        parts["tokenizer"].save_pretrained(tmp)
        m = evaluate_policy(ev.models.policy, Path(tmp), ev.models.judge, None, heldout_prompts, ev.champion_eval, seed)
    return m["reward_policy"], m["reward_sft"], f"champion v{version}"


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = load_config(Params, argv, description=__doc__)
    ev = cfg.evaluate
    with stage_run("evaluate", cfg) as run:
        start = time.perf_counter()
        reports = read_reports(ev)
        conversations = [c["messages"] for c in read_jsonl(ev.conversations) if c["split"] == "validation"]
        prompts = [p["messages"] for p in read_jsonl(ev.prompts) if p["split"] == "validation"]
        models, heldout = {}, {}
        for name in MODELS:
            models[name], tokenizer = load_policy(getattr(ev.models, name))
            heldout[name] = chat_loss(models[name], tokenizer, conversations[: ev.heldout_conversations], ev.max_length)
        log.info("held-out chat loss: %s", heldout)
        samples = generate_samples(models, tokenizer, prompts[: ev.sample_prompts] + [ev.dialogue],
                                   ev.max_new_tokens, ev.max_length, cfg.seed)
        atomic_write_text(ev.samples, render_samples(samples))
        figures = gather(reports, heldout)

        gate = None
        if ev.register and "rlhf" in reports:
            cand, base, baseline = champion_baseline(ev, prompts, reports["rlhf"], cfg.seed)
            versions = {}
            for key, (name, stage) in REGISTERED.items():
                tags = {"git_commit": git_commit(), "dvc_stage": stage, "dvc_lock_hash": dvc_lock_hash(Path("dvc.lock"), stage)}
                versions[name] = register_model(getattr(ev.models, key), name, tags=tags, chat=key != "reward").version
            decision = decide_promotion(cand, base, baseline, reports["rlhf"]["kl"], ev.gate.kl_bound, ev.gate.min_gain)
            apply_decision("chatforge-policy", versions["chatforge-policy"], decision)
            gate = {**decision.to_json(), "versions": versions}
            figures["gate"] = {k: v for k, v in gate.items() if k != "versions"}
            log.info("gate: %s", decision.reason)

        curves = {"pretrain": stage_curves("pretrain", ("loss", "eval_loss")),
                  "sft": stage_curves("sft", ("loss", "eval_loss")),
                  "rlhf": stage_curves("rlhf", tuple(k for k in ("reward", "proxy_reward", "kl", "train/kl")))}
        if ev.plots.exists():
            shutil.rmtree(ev.plots)
        plots = make_plots(ev.plots, curves, (reports.get("clean_data") or {}).get("drops") or {})
        walls = stage_wall_seconds(("pretrain", "sft", "train_reward", "rlhf"))
        card = render_report_card(figures, reports, gate, environment(Path.cwd()), plots, Path.cwd(), ev.report_card, walls)
        atomic_write_text(ev.report_card, card)
        figures["wall_seconds"] = round(time.perf_counter() - start, 1)
        run.report(ev.output, figures)
        for path in (ev.samples, ev.report_card, ev.plots):
            run.log_artifact(path, "report" if path != ev.plots else "report/plots")
        log.info("evaluate: wrote %s, %s and %s", ev.output, ev.samples, ev.report_card)


if __name__ == "__main__":
    main()
