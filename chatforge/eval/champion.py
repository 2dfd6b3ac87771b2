"""Registering a run's models and moving ``champion``: which registered model comes from which stage,
what the new policy is compared with, and the gate's decision applied to the registry.

The new policy is compared with the current champion when there is one (both re-scored by the
held-out judge on the same held-out prompts), else with the SFT model, from the rlhf report.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from chatforge.core.tracking import git_commit
from chatforge.eval.measurements import EvaluateConfig
from chatforge.eval.registry import (
    CHAMPION,
    alias_version,
    apply_decision,
    decide_promotion,
    dvc_lock_hash,
    register_model,
)
from chatforge.rl.evaluation import evaluate_policy

log = logging.getLogger(__name__)

# model key in evaluate.models -> (registered name, the DVC stage that writes it)
REGISTERED = {"base": ("chatforge-base", "pretrain"), "sft": ("chatforge-sft", "sft"),
              "reward": ("chatforge-reward", "train_reward"), "policy": ("chatforge-policy", "rlhf")}


def champion_baseline(ev: EvaluateConfig, heldout_prompts: list, rlhf: dict, seed: int) -> tuple[float, float, str]:
    """(candidate reward, baseline reward, baseline name)."""
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


def register_and_gate(ev: EvaluateConfig, rlhf: dict[str, Any], heldout_prompts: list, seed: int,
                      lock_file: Path = Path("dvc.lock")) -> dict[str, Any]:
    """Register every model (alias ``candidate``, tagged with the commit and the stage's dvc.lock hash),
    then move ``champion`` when the gate passes; returns the decision and the versions."""
    cand, base, baseline = champion_baseline(ev, heldout_prompts, rlhf, seed)
    versions = {}
    for key, (name, stage) in REGISTERED.items():
        tags = {"git_commit": git_commit(), "dvc_stage": stage, "dvc_lock_hash": dvc_lock_hash(lock_file, stage)}
        versions[name] = register_model(getattr(ev.models, key), name, tags=tags, chat=key != "reward").version
    decision = decide_promotion(cand, base, baseline, rlhf["kl"], ev.gate.kl_bound, ev.gate.min_gain)
    apply_decision("chatforge-policy", versions["chatforge-policy"], decision)
    log.info("gate: %s", decision.reason)
    return {**decision.to_json(), "versions": versions}
