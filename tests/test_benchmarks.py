"""Benchmarks through lm-evaluation-harness: tiny local multiple-choice tasks written here (the
loglikelihood path in seconds), the shipped GSM8K task over ../shared/data, the CORE-style
aggregate, and the errors a wrong config gets.
"""

import gzip
import json
import math

import pytest
from conftest import CHAT_PAIRS, SHARED_DATA

from chatforge.eval.benchmarks import (
    BenchmarksConfig,
    BenchmarkTask,
    aggregate,
    centered,
    run_benchmarks,
    score_model,
    task_manager,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GSM8K = SHARED_DATA / "gsm8k-test.jsonl.gz"
REPLIES = [a for _, a in CHAT_PAIRS]


def write_task(folder, name: str, docs: list[dict], chat_prompt: bool = False) -> None:
    """A multiple-choice task over a local JSONL file, as a user would write one."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """reply_mc: which reply follows the user's message (the trained model's four pairs), 4 choices;
    mixed_mc: 2, 3 and 4 choices, for the random baseline."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    write_task(folder, "reply_mc", [{"question": u, "choices": REPLIES, "label": i}
                                    for i, (u, _) in enumerate(CHAT_PAIRS)])
    write_task(folder, "mixed_mc", [
        {"question": "The quick brown fox", "choices": ["jumps over the lazy dog.", "reads."], "label": 0},
        {"question": "How are you", "choices": ["doing today?", "数据", "fox"], "label": 0},
        {"question": "The weather is", "choices": ["lovely today", "模型", "the", "brown"], "label": 0},
    ])
    return folder


def test_centered_accuracy_and_aggregate():
    assert centered(0.625, 0.05, 0.25) == pytest.approx((0.5, 0.05 / 0.75))
    agg = aggregate({"a": {"accuracy": 0.625, "stderr": 0.03, "random": 0.25},
                     "b": {"accuracy": 0.1, "stderr": 0.04, "random": 0.0}})
    assert agg["value"] == pytest.approx((0.5 + 0.1) / 2)
    assert agg["stderr"] == pytest.approx(math.sqrt(0.04 ** 2 + 0.04 ** 2) / 2)
    assert agg["tasks"] == 2
    with pytest.raises(ValueError, match="random baseline"):
        centered(0.5, 0.1, 1.0)


def test_chat_task_scores_a_trained_model_far_above_an_untrained_one(tasks_dir, trained_chat_dir, tiny_model_dir):
    cfg = BenchmarksConfig(tasks=[BenchmarkTask(task="reply_mc", chat=True), BenchmarkTask(task="mixed_mc")],
                           include_paths=[tasks_dir], batch_size=8)
    res = run_benchmarks(cfg, {"trained": trained_chat_dir, "untrained": tiny_model_dir})
    trained, untrained = res["trained"]["tasks"]["reply_mc"], res["untrained"]["tasks"]["reply_mc"]
    assert trained["samples"] == untrained["samples"] == 4
    assert trained["random"] == pytest.approx(0.25)
    assert trained["accuracy"] == 1.0 and trained["centered"] == 1.0        # it learned these four replies
    assert untrained["accuracy"] < 1.0
    assert trained["metric"] == "acc,none" and trained["chat"] is True and trained["stderr"] >= 0
    mixed = res["trained"]["tasks"]["mixed_mc"]
    assert mixed["random"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)     # mean 1/choices over the docs
    agg = res["trained"]["aggregate"]
    assert agg["tasks"] == 2
    assert agg["value"] == pytest.approx((trained["centered"] + mixed["centered"]) / 2)


def test_loglikelihoods_match_a_direct_computation(tasks_dir, tiny_model_dir):
    """lm-eval's choice on each doc is the argmax of the summed log-probabilities of the choice's
    tokens after the question and a space, computed here by hand."""
    import torch

    from chatforge.eval.benchmarks import hf_lm
    from chatforge.train.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    docs = [json.loads(line) for line in (tasks_dir / "mixed_mc.jsonl").read_text().splitlines()]
    right = 0
    for doc in docs:
        ctx = tok(doc["question"], add_special_tokens=False).input_ids
        scores = []
        for choice in doc["choices"]:
            whole = tok(doc["question"] + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)     # (T, V)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    cfg = BenchmarksConfig(tasks=[BenchmarkTask(task="mixed_mc")], include_paths=[tasks_dir])
    got = score_model(hf_lm(model, tok, 4), cfg, task_manager(cfg))["mixed_mc"]
    assert got["accuracy"] == pytest.approx(right / len(docs))


class ReferenceSolver:
    """An lm-eval LM that answers each GSM8K question with the test set's own worked solution, so
    the shipped task's "#### answer" extraction must score every problem right."""

    def __new__(cls, solutions: dict[str, str]):
        from lm_eval.api.model import LM

        class Solver(LM):
            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for req in requests:
                    question = req.args[0].removeprefix("Question: ").removesuffix("\nAnswer:")
                    out.append(" " + solutions[question])
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Solver()


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k-test.jsonl.gz beside the repo")
def test_gsm8k_local_extracts_the_answer_after_hashes(tiny_model_dir):
    with gzip.open(GSM8K, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 1319
    solutions = {r["question"]: r["answer"] for r in rows}
    task = BenchmarkTask(task="gsm8k_local", metric="exact_match", filter="strict-match", limit=5,
                         data_files=GSM8K)
    cfg = BenchmarksConfig(tasks=[task])
    solved = score_model(ReferenceSolver(solutions), cfg, task_manager(cfg))["gsm8k_local"]
    assert solved["accuracy"] == 1.0 and solved["samples"] == 5 and solved["random"] == 0.0
    # the same task on a real (untrained) model: it runs, and scores what an untrained model scores
    real = run_benchmarks(BenchmarksConfig(tasks=[BenchmarkTask(
        task="gsm8k_local", metric="exact_match", filter="strict-match", limit=2, max_gen_toks=8,
        data_files=GSM8K)]), {"base": tiny_model_dir})["base"]["tasks"]["gsm8k_local"]
    assert real["samples"] == 2 and real["accuracy"] == 0.0


def test_wrong_configs_get_errors_that_name_the_problem(tasks_dir, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="listed twice"):
        BenchmarksConfig(tasks=[BenchmarkTask(task="a"), BenchmarkTask(task="a")])
    cfg = BenchmarksConfig(tasks=[BenchmarkTask(task="mixed_mc", metric="f1")], include_paths=[tasks_dir])
    with pytest.raises(KeyError, match=r"no metric 'f1,none'.*acc,none"):
        run_benchmarks(cfg, {"base": tiny_model_dir})
    missing = tmp_path / "nowhere.jsonl"
    cfg = BenchmarksConfig(tasks=[BenchmarkTask(task="mixed_mc", data_files=missing)], include_paths=[tasks_dir])
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        run_benchmarks(cfg, {"base": tiny_model_dir})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        run_benchmarks(BenchmarksConfig(tasks=[BenchmarkTask(task="x")], include_paths=[missing]),
                       {"base": tiny_model_dir})
    assert run_benchmarks(BenchmarksConfig(enabled=False, tasks=[BenchmarkTask(task="x")]), {}) == {}
