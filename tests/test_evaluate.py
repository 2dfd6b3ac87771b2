"""evaluate: the report card renders every section, and the stage measures, registers and gates."""

import json
import shutil

import pytest

from chatforge.eval.figures import environment
from chatforge.eval.measurements import gather, render_samples
from chatforge.eval.report_card import make_plots, render_report_card

REPORTS = {
    "prepare_data": {"records_in": 100, "records_accepted": 80, "records_rejected": 20,
                     "outputs": {"documents": {"train": 30, "validation": 3}}},
    "clean_data": {"documents": {"in": 33, "out": 30}, "bytes": {"in": 5000, "out": 4000},
                   "drops": {"gopher_quality": 2, "exact_duplicate": 1}, "pii": {"email": 3}, "duplicates": 1},
    "train_tokenizer": {"vocab_size": 512, "bytes_per_token": 3.1},
    "pretrain": {"val_loss": 4.0, "val_bpb": 1.9, "unigram_bpb": 4.4, "tokens_seen": 12345, "parameters": 50000},
    "sft": {"val_loss": 3.5},
    "train_reward": {"accuracy": 0.61, "judge_accuracy": 0.6, "margin_mean": 0.2},
    "rlhf": {"algorithm": "grpo", "reward_sft": 0.1, "reward_policy": 0.3, "kl": 1.5, "win_rate": 0.6,
             "win_rate_length_controlled": 0.58},
    "export": {"onnx": {"max_abs_diff": 1e-6, "greedy_match": True}, "tensorrt": {"status": "skipped"}},
}


def test_report_card_renders_every_section(tmp_path):
    ev = gather(REPORTS, {"base": 4.2, "sft": 3.4, "policy": 3.5})
    assert ev["pretrain"]["val_bpb"] == 1.9 and ev["rlhf"]["win_rate"] == 0.6 and ev["data"]["documents"] == 30
    curves = {"pretrain": {"loss": [(1, 5.0), (2, 4.0)]}, "rlhf": {"reward": [(1, 0.1), (2, 0.3)], "kl": [(1, 0.0), (2, 1.0)]}}
    plots = make_plots(tmp_path / "reports" / "plots", curves, REPORTS["clean_data"]["drops"])
    assert all(p.exists() and p.stat().st_size > 1000 for p in plots.values()) and len(plots) == 4
    gate = {"promote": True, "reason": "beats sft", "baseline": "sft", "candidate_reward": 0.3,
            "baseline_reward": 0.1, "kl": 1.5, "kl_bound": 20.0, "versions": {"chatforge-policy": "1"}}
    score = {"accuracy": 0.5, "stderr": 0.1, "samples": 20, "random": 0.25, "centered": 1 / 3,
             "centered_stderr": 0.1333, "metric": "acc_norm,none", "num_fewshot": 0, "chat": False}
    ev["benchmarks"] = {m: {"tasks": {"hellaswag": score}, "aggregate": {"value": 1 / 3, "stderr": 0.1333, "tasks": 1}}
                        for m in ("base", "sft", "policy")}
    ev["benchmarks"]["policy"]["aggregate"] = {"value": 0.01, "stderr": 0.1, "tasks": 1}
    gate["benchmark"] = {"candidate": 0.01, "candidate_stderr": 0.1, "baseline": 1 / 3, "baseline_stderr": 0.1333,
                         "baseline_name": "sft", "tolerance": 0.1667, "regressed": True}
    card = render_report_card(ev, REPORTS, gate, environment(tmp_path), plots, tmp_path,
                              tmp_path / "reports" / "report.md", {"pretrain": 12.0})
    assert "| hellaswag | acc_norm,none | 25.0 | 50.0 ± 10.0 (n=20) | 50.0 ± 10.0 (n=20) | 50.0 ± 10.0 (n=20) | " \
           "GPT-2 124M 30.9; SmolLM2-135M-Instruct 43 |" in card
    assert "0.333 ± 0.133 (above chance) | 0.010 ± 0.100 (at chance) | GPT-2 124M (CORE) 0.114 |" in card
    assert "| benchmark aggregate (candidate / baseline) | 0.01 / 0.3333 (sft) |" in card
    for section in ("Headline", "Benchmarks", "Data", "Tokenizer", "Models", "Reward model", "RLHF", "Registry and gate",
                    "Export", "Environment", "Plots"):
        assert f"## {section}" in card
    assert "| validation bits per byte (documents) | 1.9 |" in card and "promoted to champion" in card
    assert "![Loss curves (pretrain and SFT)](plots/loss.png)" in card
    md = render_samples([{"messages": [{"role": "user", "content": "hi"}], "answers": {"sft": {"greedy": "hello"}}}])
    assert "> **user**: hi" in md and "- *greedy*: hello" in md


@pytest.fixture
def workspace(tmp_path, tiny_model_dir, tiny_tokenizer):
    """models/, data/clean/ and reports/ as the upstream stages leave them, with tiny models."""
    from transformers import AutoModelForSequenceClassification

    for name in ("base", "sft", "policy"):
        shutil.copytree(tiny_model_dir, tmp_path / "models" / name)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    rm.config.pad_token_id = tiny_tokenizer.pad_token_id
    for name in ("reward", "judge"):
        rm.save_pretrained(tmp_path / "models" / name)
        tiny_tokenizer.save_pretrained(tmp_path / "models" / name)
    data = tmp_path / "data" / "clean"
    data.mkdir(parents=True)
    conv = {"messages": [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine!"}]}
    (data / "conversations.jsonl").write_text("\n".join(json.dumps({"id": f"c{i}", "split": "validation", **conv})
                                                        for i in range(3)) + "\n")
    prompt = {"messages": [{"role": "user", "content": "What is your favourite book?"}]}
    (data / "prompts.jsonl").write_text("\n".join(json.dumps({"id": f"p{i}", "split": "validation", **prompt})
                                                  for i in range(2)) + "\n")
    (tmp_path / "reports").mkdir()
    for name, report in REPORTS.items():
        file = {"clean_data": "clean.json"}.get(name, f"{name}.json")
        (tmp_path / "reports" / file).write_text(json.dumps(report))
    (tmp_path / "params.yaml").write_text(
        "seed: 0\nevaluate:\n  heldout_conversations: 3\n  sample_prompts: 1\n  max_new_tokens: 4\n"
        "  max_length: 64\n  champion_eval: {max_prompts: 2, samples_per_prompt: 1, max_new_tokens: 4, max_length: 64}\n"
        "  gate: {benchmark_no_regression: true}\n"
        "  benchmarks: {include_paths: [tasks], batch_size: 4, tasks: [{task: pick_mc, metric: acc_norm}]}\n")
    # a local multiple-choice task (2 and 3 choices) as a user writes one, over a JSONL file
    (tmp_path / "tasks").mkdir()
    docs = [{"q": "How are you?", "choices": ["Fine!", "数据清洗"], "label": 0},
            {"q": "The quick brown fox", "choices": ["jumps over the lazy dog.", "模型", "the"], "label": 0}] * 3
    (tmp_path / "tasks" / "pick.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks" / "pick_mc.yaml").write_text(
        "task: pick_mc\ndataset_path: json\ndataset_kwargs: {data_files: {test: tasks/pick.jsonl}}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list: [{metric: acc}, {metric: acc_norm}]\n")
    return tmp_path


def test_evaluate_stage_measures_registers_and_gates(workspace, monkeypatch, mlflow_uri):
    import mlflow

    from chatforge.eval.registry import CANDIDATE, CHAMPION, alias_version
    from stages.evaluate import main

    monkeypatch.chdir(workspace)
    main([])                                   # no champion yet: policy vs SFT from the rlhf report -> promote
    ev = json.loads((workspace / "reports/eval.json").read_text())
    assert set(ev["heldout_chat_loss"]) == {"base", "sft", "policy"}
    assert all(v > 0 for v in ev["heldout_chat_loss"].values())
    assert ev["gate"]["promote"] and ev["gate"]["baseline"] == "sft"
    for name in ("chatforge-base", "chatforge-sft", "chatforge-reward", "chatforge-policy"):
        assert alias_version(name, CANDIDATE) == "1"
    assert alias_version("chatforge-policy", CHAMPION) == "1"
    samples = (workspace / "reports/samples.md").read_text()
    assert samples.count("*beam search (4 beams)*") == 2 * 3 and "Do you remember what instrument" in samples
    card = (workspace / "reports/report.md").read_text()
    assert "## Registry and gate" in card and "promoted to champion" in card
    bench = ev["benchmarks"]
    assert set(bench) == {"base", "sft", "policy"}
    pick = bench["policy"]["tasks"]["pick_mc"]
    assert pick["samples"] == 6 and pick["random"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert pick["metric"] == "acc_norm,none" and bench["policy"]["aggregate"]["tasks"] == 1
    # the same weights in base, sft and policy: the same scores, so no regression against SFT
    assert bench["base"]["tasks"]["pick_mc"]["accuracy"] == pick["accuracy"]
    assert ev["gate"]["benchmark"]["baseline_name"] == "sft" and not ev["gate"]["benchmark"]["regressed"]
    assert "## Benchmarks" in card and "| pick_mc | acc_norm,none | 41.7 |" in card
    tags = mlflow.MlflowClient().get_model_version("chatforge-policy", "1").tags
    assert float(tags["benchmark_aggregate"]) == pytest.approx(bench["policy"]["aggregate"]["value"])

    main([])                                   # the same policy again vs the champion: a tie is refused
    ev = json.loads((workspace / "reports/eval.json").read_text())
    assert not ev["gate"]["promote"] and ev["gate"]["baseline"] == "champion v1"
    assert alias_version("chatforge-policy", CHAMPION) == "1" and alias_version("chatforge-policy", CANDIDATE) == "2"
    run = mlflow.search_runs(experiment_names=["chatforge"], output_format="list",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["stage"] == "evaluate" and "gate.promote" in run.data.metrics
    assert ev["gate"]["benchmark"]["baseline_name"] == "champion v1"        # read back from its registry tags
    assert run.data.metrics["benchmarks.policy.aggregate.value"] == pytest.approx(ev["benchmarks"]["policy"]["aggregate"]["value"])
    assert run.data.metrics["benchmarks.sft.tasks.pick_mc.stderr"] == pytest.approx(ev["benchmarks"]["sft"]["tasks"]["pick_mc"]["stderr"])
