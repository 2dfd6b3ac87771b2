"""The registry gate, both ways, on a real sqlite MLflow registry."""

import math
from pathlib import Path

import pytest

from chatforge.eval.registry import (
    CANDIDATE,
    CHAMPION,
    BenchmarkCheck,
    alias_version,
    apply_decision,
    decide_promotion,
    dvc_lock_hash,
    register_model,
)


def test_decide_promotion_rules():
    assert decide_promotion(0.5, 0.2, "sft", kl=0.1, kl_bound=1.0).promote
    refused = decide_promotion(0.5, 0.2, "sft", kl=2.0, kl_bound=1.0)
    assert not refused.promote and "over the bound" in refused.reason
    assert not decide_promotion(0.2, 0.2, "champion v1", kl=0.1, kl_bound=1.0).promote      # a tie is no win
    assert not decide_promotion(0.5, 0.2, "sft", kl=math.nan, kl_bound=1.0).promote
    assert not decide_promotion(0.25, 0.2, "sft", kl=0.1, kl_bound=1.0, min_gain=0.1).promote
    # the benchmark aggregate may fall by at most the standard error of the difference (0.05 here)
    within = BenchmarkCheck(0.17, 0.03, 0.2, 0.04, "sft")
    assert within.tolerance == pytest.approx(0.05) and not within.regressed
    assert decide_promotion(0.5, 0.2, "sft", kl=0.1, kl_bound=1.0, benchmark=within).promote
    beyond = decide_promotion(0.5, 0.2, "sft", kl=0.1, kl_bound=1.0, benchmark=BenchmarkCheck(0.14, 0.03, 0.2, 0.04, "sft"))
    assert not beyond.promote and "benchmark aggregate 0.1400 fell below sft's 0.2000" in beyond.reason
    assert beyond.to_json()["benchmark"]["regressed"] is True
    assert BenchmarkCheck(math.nan, 0.03, 0.2, 0.04, "sft").regressed


def test_gate_promotes_then_refuses_on_real_registry(tiny_model_dir, mlflow_uri):
    import mlflow

    with mlflow.start_run():
        first = register_model(tiny_model_dir, "chatforge-policy", tags={"git_commit": "abc"})
    assert alias_version("chatforge-policy", CANDIDATE) == first.version
    assert alias_version("chatforge-policy", CHAMPION) is None
    apply_decision("chatforge-policy", first.version, decide_promotion(0.4, 0.1, "sft", 0.2, 1.0))
    assert alias_version("chatforge-policy", CHAMPION) == first.version

    with mlflow.start_run():
        second = register_model(tiny_model_dir, "chatforge-policy", tags={"git_commit": "def"})
    decision = decide_promotion(0.3, 0.4, f"champion v{first.version}", 0.2, 1.0)
    apply_decision("chatforge-policy", second.version, decision)
    assert alias_version("chatforge-policy", CHAMPION) == first.version        # refused: champion stays
    assert alias_version("chatforge-policy", CANDIDATE) == second.version
    mv = mlflow.MlflowClient().get_model_version("chatforge-policy", second.version)
    assert mv.tags["gate"] == "refused" and "does not beat champion" in mv.tags["gate_reason"]
    assert mv.tags["git_commit"] == "def"

    chat = mlflow.pyfunc.load_model(f"models:/chatforge-policy@{CHAMPION}")
    answer = chat.predict({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert answer[0]["choices"][0]["message"]["role"] == "assistant"


def test_dvc_lock_hash(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  sft:\n    cmd: python -m stages.sft\n")
    assert len(dvc_lock_hash(lock, "sft")) == 16 and dvc_lock_hash(lock, "rlhf") == ""
    assert dvc_lock_hash(tmp_path / "none.lock", "sft") == ""


def test_reward_model_is_registered_with_its_heads(tiny_model_dir, tmp_path, mlflow_uri):
    """The heads are not part of the transformers flavour: each is logged beside the model, and the
    version's ``token_match`` and ``reply_probe`` tags point at files that load back into the same head."""
    import shutil

    import mlflow
    import torch

    from chatforge.train.reply_probe import ReplyProbe, ReplyProbeConfig
    from chatforge.train.token_match import TokenMatchConfig, TokenMatchHead
    from chatforge.train.tokenizer import load_tokenizer

    reward = tmp_path / "reward"
    shutil.copytree(tiny_model_dir, reward)
    head = TokenMatchHead(len(load_tokenizer(reward)), TokenMatchConfig(enabled=True))
    probe = ReplyProbe(32, ReplyProbeConfig(enabled=True), max_length=64)
    with torch.no_grad():
        head.weight[:5] = torch.arange(5.0)
        probe.weight[:5] = torch.arange(5.0)
    head.save(reward)
    probe.save(reward)
    with mlflow.start_run():
        version = register_model(reward, "chatforge-reward", tags={}, chat=False)
    tags = mlflow.MlflowClient().get_model_version("chatforge-reward", version.version).tags
    loaded = TokenMatchHead.load(Path(mlflow.artifacts.download_artifacts(tags["token_match"])))
    assert torch.equal(loaded.weight, head.weight)
    loaded_probe = ReplyProbe.load(Path(mlflow.artifacts.download_artifacts(tags["reply_probe"])))
    assert torch.equal(loaded_probe.weight, probe.weight) and loaded_probe.max_length == 64
    with mlflow.start_run():                                           # a model without a head gets no tag
        plain = register_model(tiny_model_dir, "chatforge-sft", tags={})
    assert not {"token_match", "reply_probe"} & set(mlflow.MlflowClient().get_model_version("chatforge-sft",
                                                                                          plain.version).tags)
