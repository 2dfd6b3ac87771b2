"""Log-probabilities from the running server: ``/v1/completions`` with ``echo`` and ``logprobs``,
``logprobs`` / ``top_logprobs`` on chat completions, each checked against a forward pass done here,
and lm-evaluation-harness scoring the same local tasks in-process and through the server.
"""

import httpx
import pytest
from conftest import CHAT_PAIRS
from test_benchmarks import write_task

from chatforge.eval.benchmarks import BenchmarksConfig, BenchmarkTask, hf_lm, score_model, task_manager
from chatforge.inference.decoding import load_chat_model
from chatforge.serve.app import create_app
from chatforge.serve.launch import serve_in_background

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def chat_model(trained_chat_dir):
    return load_chat_model(trained_chat_dir)


@pytest.fixture(scope="module")
def server(chat_model):
    with serve_in_background(create_app(chat_model, model_id="tiny-chat")) as url:
        yield url


def direct_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, by a plain forward pass."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)       # (T, V)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_completions_echo_returns_the_prompt_token_logprobs(server, chat_model):
    tok, model = chat_model.tokenizer, chat_model.step.model
    prompt = "The quick brown fox jumps over the lazy dog."
    ids = tok(prompt, add_special_tokens=False).input_ids
    r = httpx.post(server + "v1/completions", json={"model": "x", "prompt": prompt, "max_tokens": 1, "echo": True,
                                                    "logprobs": 2, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert body["object"] == "text_completion" and body["usage"]["prompt_tokens"] == len(ids)
    assert len(lp["tokens"]) == len(ids) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert choice["text"].startswith(prompt) and "".join(lp["tokens"][:len(ids)]) == prompt
    expected = direct_logprobs(model, ids)
    assert lp["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-4)
    for token, logprob, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert token in top and top[token] == pytest.approx(logprob) and len(top) in (2, 3)
        assert max(top.values()) >= logprob - 1e-6
    # greedy: the generated token is the most likely one
    assert lp["token_logprobs"][-1] == pytest.approx(max(lp["top_logprobs"][-1].values()))
    # token ids in, batch of two, max_tokens 0: the prompts are scored and nothing is generated
    r = httpx.post(server + "v1/completions", json={"prompt": [ids, ids[:4]], "max_tokens": 0, "echo": True,
                                                    "logprobs": 0}, timeout=60)
    assert r.status_code == 200, r.text
    first, second = r.json()["choices"]
    assert first["text"] == tok.decode(ids) and first["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert second["index"] == 1 and len(second["logprobs"]["tokens"]) == 4


def test_completions_generate_plain_text_and_refuse_what_they_cannot_do(server, chat_model):
    r = httpx.post(server + "v1/completions", json={"prompt": "How are you", "max_tokens": 5, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    assert 1 <= r.json()["usage"]["completion_tokens"] <= 5
    for bad, param in (({"prompt": "hi", "n": 2}, "n"), ({"prompt": "hi", "stream": True}, "stream"),
                       ({"prompt": "hi", "max_tokens": 0}, "max_tokens"), ({"prompt": [[10**7]]}, "prompt"),
                       ({"prompt": "hi", "logprobs": 6}, "logprobs"), ({"prompt": "hi " * 200}, "prompt"),
                       ({"prompt": []}, "prompt")):
        r = httpx.post(server + "v1/completions", json=bad, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)


def test_chat_completions_logprobs_match_a_forward_pass(server, chat_model):
    r = httpx.post(server + "v1/chat/completions", json={"messages": HELLO, "logprobs": True, "top_logprobs": 3,
                                                         "max_tokens": 16}, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["message"]["content"] == "hi there!"
    assert "".join(c["token"] for c in content).strip() == "hi there!"
    assert all(len(c["top_logprobs"]) == 3 and c["top_logprobs"][0]["logprob"] >= c["logprob"] - 1e-6 for c in content)
    assert all(bytes(c["bytes"]).decode() == c["token"] for c in content)
    prompt, _ = chat_model.prompt_ids(HELLO, 16)
    reply = chat_model.tokenizer(choice["message"]["content"], add_special_tokens=False).input_ids
    expected = direct_logprobs(chat_model.step.model, prompt + reply)[len(prompt) - 1:]
    assert [c["logprob"] for c in content] == pytest.approx(expected, abs=1e-4)
    for bad, param in (({"messages": HELLO, "logprobs": True, "stream": True}, "logprobs"),
                       ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs")):
        r = httpx.post(server + "v1/chat/completions", json=bad, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server-tasks")
    replies = [a for _, a in CHAT_PAIRS]
    write_task(folder, "reply_mc", [{"question": u, "choices": replies, "label": i} for i, (u, _) in enumerate(CHAT_PAIRS)])
    write_task(folder, "words_mc", [
        {"question": q, "choices": c, "label": 0} for q, c in [
            ("The quick brown fox", ["jumps over the lazy dog.", "reads.", "数据"]),
            ("How are you doing", ["today? I'm doing well", "the fox"]),
            ("The weather is lovely today,", ["let's go for a walk in the park.", "大型语言模型", "book"]),
            ("Tokenizers split text", ["into pieces", "the reward", "你好"]),
            ("A language model predicts", ["the next token", "science fiction", "today"]),
            ("What is your", ["favourite book?", "brown fox", "reward model"])]])
    return folder


def test_lm_eval_scores_the_same_through_the_server_as_in_process(server, trained_chat_dir, chat_model, tasks_dir):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    cfg = BenchmarksConfig(tasks=[BenchmarkTask(task="reply_mc", chat=True), BenchmarkTask(task="words_mc")],
                           include_paths=[tasks_dir], batch_size=4)
    manager = task_manager(cfg)
    in_process = score_model(hf_lm(chat_model.step.model, chat_model.tokenizer, 4), cfg, manager)
    remote = LocalCompletionsAPI(base_url=server + "v1/completions", model="tiny-chat", tokenizer_backend="huggingface",
                                 tokenizer=str(trained_chat_dir), max_length=chat_model.context_length, batch_size=4,
                                 max_retries=1)
    served = score_model(remote, cfg, manager)
    for task in ("reply_mc", "words_mc"):
        assert served[task]["samples"] == in_process[task]["samples"] > 0
        assert abs(served[task]["accuracy"] - in_process[task]["accuracy"]) <= 0.005, (task, served, in_process)
    assert in_process["reply_mc"]["accuracy"] == 1.0
