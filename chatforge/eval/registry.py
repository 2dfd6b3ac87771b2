"""The MLflow model registry: register the pipeline's models and move the ``champion`` alias by a gate.

Models are logged with ``mlflow.transformers.log_model`` (tokenizer included, ``pip_requirements``
explicit because requirement inference imports torchvision, which the CPU stack lacks) and
registered as ``chatforge-base``, ``chatforge-sft``, ``chatforge-reward`` and ``chatforge-policy``.
Each new version gets the alias ``candidate`` and tags naming the git commit and the dvc.lock hash
of the stage that produced it. ``champion`` moves to a new policy only when ``decide_promotion``
says so: its held-out reward beats the current champion's (or the SFT model's when there is no
champion) with the KL to SFT within the bound, and, when the gate asks for it, its benchmark
aggregate has not fallen below the baseline's by more than the standard error of the difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import chatforge.train.reply_probe as reply_probe
import chatforge.train.token_match as token_match

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str


@dataclass(frozen=True)
class BenchmarkCheck:
    """The candidate's benchmark aggregate against the baseline's, each with its standard error."""

    candidate: float
    candidate_stderr: float
    baseline: float
    baseline_stderr: float
    baseline_name: str       # "champion v<N>" or "sft"

    @property
    def tolerance(self) -> float:
        """The standard error of the difference (the two aggregates taken as independent)."""
        return math.sqrt(self.candidate_stderr ** 2 + self.baseline_stderr ** 2)

    @property
    def regressed(self) -> bool:
        return not self.candidate >= self.baseline - self.tolerance          # a NaN counts as a regression


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate_reward: float
    baseline_reward: float
    baseline: str            # "champion v<N>" or "sft"
    kl: float
    kl_bound: float
    benchmark: BenchmarkCheck | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.benchmark is not None:
            out["benchmark"]["tolerance"] = self.benchmark.tolerance
            out["benchmark"]["regressed"] = self.benchmark.regressed
        return out


def decide_promotion(candidate_reward: float, baseline_reward: float, baseline: str, kl: float,
                     kl_bound: float, min_gain: float = 0.0, benchmark: BenchmarkCheck | None = None) -> GateDecision:
    """Promote when the candidate's held-out reward beats the baseline's by more than ``min_gain``,
    its KL to the SFT model is within ``kl_bound`` and (with ``benchmark``) its benchmark aggregate
    has not regressed beyond the standard error."""
    gain = candidate_reward - baseline_reward
    if not kl <= kl_bound:                                   # also refuses a NaN KL
        reason = f"KL {kl:.4f} is over the bound {kl_bound:.4f}"
    elif not gain > min_gain:
        reason = f"held-out reward {candidate_reward:.4f} does not beat {baseline} ({baseline_reward:.4f}) by > {min_gain}"
    elif benchmark is not None and benchmark.regressed:
        reason = (f"benchmark aggregate {benchmark.candidate:.4f} fell below {benchmark.baseline_name}'s "
                  f"{benchmark.baseline:.4f} by more than its standard error {benchmark.tolerance:.4f}")
    else:
        reason = f"held-out reward {candidate_reward:.4f} beats {baseline} ({baseline_reward:.4f}) at KL {kl:.4f} <= {kl_bound}"
        if benchmark is not None:
            reason += (f"; benchmark aggregate {benchmark.candidate:.4f} vs {benchmark.baseline_name}'s "
                       f"{benchmark.baseline:.4f} (within {benchmark.tolerance:.4f})")
        return GateDecision(True, reason, candidate_reward, baseline_reward, baseline, kl, kl_bound, benchmark)
    return GateDecision(False, reason, candidate_reward, baseline_reward, baseline, kl, kl_bound, benchmark)


def dvc_lock_hash(lock_file: Path, stage: str) -> str:
    """A short hash of the stage's entry in dvc.lock (its deps, params and outs), or '' without one."""
    import yaml

    if not lock_file.exists():
        return ""
    entry = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage)
    if entry is None:
        return ""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def pip_requirements() -> list[str]:
    """The packages a served model needs, pinned to what is installed."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "tokenizers", "mlflow", "accelerate")]


def register_model(model_dir: Path, name: str, *, tags: dict[str, str], chat: bool = True) -> RegisteredModel:
    """Log a model directory (model + tokenizer) to the active run and register it as ``name``.

    ``chat`` models are logged with task ``llm/v1/chat`` (an OpenAI-style chat ``predict``, so
    ``mlflow models serve`` answers chat requests); the reward model as text classification.
    The new version gets the ``candidate`` alias and ``tags``.
    """
    import mlflow
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from chatforge.train.base_model import describe_lineage, read_lineage

    # mlflow looks the model's name_or_path up on the Hub (card, licence file). A relative
    # "models/sft" is a valid repo id, so it retried over the network for ~30 s per model; an
    # absolute path is not, and fails at once. The card is ours, so nothing is fetched for it.
    path = str(model_dir.resolve())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat:
        model, task = AutoModelForCausalLM.from_pretrained(path), "llm/v1/chat"
    else:
        model, task = AutoModelForSequenceClassification.from_pretrained(path), "text-classification"
    # What the model is: its base (a pretrained checkpoint or chatforge's own pretraining), then each
    # stage with its data and, for LoRA, the adapter saved beside the merged weights. Our MIT licence is
    # claimed only for weights trained from scratch; a base model's weights keep their own licence.
    lineage = read_lineage(model_dir)
    licence = "" if lineage.get("base") else "license: mit\n"
    card = ModelCard(f"---\n{licence}library_name: transformers\ntags: [chatforge]\n---\n# {name}\n\n"
                     f"{describe_lineage(lineage)}\n\nMade by the chatforge pipeline ({task}); "
                     "see its report card.\n")
    info = mlflow.transformers.log_model(
        {"model": model, "tokenizer": tokenizer}, name=name.removeprefix("chatforge-"), task=task,
        pip_requirements=pip_requirements(), registered_model_name=name, model_card=card,
    )
    version = str(info.registered_model_version)
    # A reward model's heads (chatforge.train.reply_probe, chatforge.train.token_match) are not part of
    # the transformers flavour: each is logged beside the model and a version tag says where.
    for head in (reply_probe, token_match):
        if head_files := [f for f in (head.WEIGHTS, head.SETTINGS) if (model_dir / f).exists()]:
            kind = head.__name__.rpartition(".")[2]
            artifact_path = f"{name.removeprefix('chatforge-')}-{kind.replace('_', '-')}"
            for f in head_files:
                mlflow.log_artifact(str(model_dir / f), artifact_path=artifact_path)
            tags = {**tags, kind: f"runs:/{mlflow.active_run().info.run_id}/{artifact_path}"}
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CANDIDATE, version)
    log.info("registered %s version %s (alias %s)", name, version, CANDIDATE)
    return RegisteredModel(name, version, f"models:/{name}/{version}")


def alias_version(name: str, alias: str) -> str | None:
    """The version that ``name@alias`` points at, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def apply_decision(name: str, version: str, decision: GateDecision) -> None:
    """Move ``champion`` when the gate says so; record the decision on the version either way."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "gate", "promoted" if decision.promote else "refused")
    client.set_model_version_tag(name, version, "gate_reason", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("%s version %s is the new %s: %s", name, version, CHAMPION, decision.reason)
    else:
        log.info("%s version %s stays %s: %s", name, version, CANDIDATE, decision.reason)
