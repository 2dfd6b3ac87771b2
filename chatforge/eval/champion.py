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
    BenchmarkCheck,
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


def benchmark_tags(benchmarks: dict[str, Any], model: str) -> dict[str, str]:
    """The model's benchmark aggregate as registry tags, for the next run's gate to compare with."""
    agg = (benchmarks.get(model) or {}).get("aggregate")
    if not agg:
        return {}
    return {"benchmark_aggregate": repr(agg["value"]), "benchmark_aggregate_stderr": repr(agg["stderr"]),
            "benchmark_tasks": ",".join(sorted(benchmarks[model]["tasks"]))}


def benchmark_check(benchmarks: dict[str, Any]) -> BenchmarkCheck | None:
    """The policy's aggregate against the champion's (from its registry tags, when it was scored on
    the same tasks) or else the SFT model's; None when the policy was not benchmarked."""
    import mlflow

    policy = benchmark_tags(benchmarks, "policy")
    if not policy:
        return None
    version = alias_version("chatforge-policy", CHAMPION)
    if version is not None:
        tags = mlflow.MlflowClient().get_model_version("chatforge-policy", version).tags
        if tags.get("benchmark_tasks") == policy["benchmark_tasks"]:
            return BenchmarkCheck(float(policy["benchmark_aggregate"]), float(policy["benchmark_aggregate_stderr"]),
                                  float(tags["benchmark_aggregate"]), float(tags["benchmark_aggregate_stderr"]),
                                  f"champion v{version}")
    sft = benchmark_tags(benchmarks, "sft")
    if not sft:
        return None
    return BenchmarkCheck(float(policy["benchmark_aggregate"]), float(policy["benchmark_aggregate_stderr"]),
                          float(sft["benchmark_aggregate"]), float(sft["benchmark_aggregate_stderr"]), "sft")


def register_and_gate(ev: EvaluateConfig, rlhf: dict[str, Any], heldout_prompts: list, seed: int,
                      lock_file: Path = Path("dvc.lock"), benchmarks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register every model (alias ``candidate``, tagged with the commit, the stage's dvc.lock hash
    and its benchmark aggregate), then move ``champion`` when the gate passes; returns the decision
    and the versions. ``benchmarks`` is ``benchmark_models``' result."""
    benchmarks = benchmarks or {}
    cand, base, baseline = champion_baseline(ev, heldout_prompts, rlhf, seed)
    check = benchmark_check(benchmarks) if ev.gate.benchmark_no_regression else None
    if ev.gate.benchmark_no_regression and check is None:
        log.warning("gate: evaluate.gate.benchmark_no_regression is on but the policy and the SFT model have no "
                    "benchmark aggregate (evaluate.benchmarks); the benchmark check is skipped")
    versions = {}
    for key, (name, stage) in REGISTERED.items():
        tags = {"git_commit": git_commit(), "dvc_stage": stage, "dvc_lock_hash": dvc_lock_hash(lock_file, stage),
                **benchmark_tags(benchmarks, key)}
        versions[name] = register_model(getattr(ev.models, key), name, tags=tags, chat=key != "reward").version
    decision = decide_promotion(cand, base, baseline, rlhf["kl"], ev.gate.kl_bound, ev.gate.min_gain, check)
    apply_decision("chatforge-policy", versions["chatforge-policy"], decision)
    log.info("gate: %s", decision.reason)
    return {**decision.to_json(), "versions": versions}
