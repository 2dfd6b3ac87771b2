"""``chatforge serve`` against a real running server: the official openai client (plain, streaming,
models), raw HTTP for malformed, oversized and unauthorised requests, a failing generation, the
one-at-a-time queue, and the ``chatforge serve`` command itself in a subprocess.

The model is the tiny one trained for 40 steps (``conftest.train_tiny``), so greedy replies
are real text that ends in EOS ("hello" -> "hi there!").
"""

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from conftest import REPO, GatedStep

from chatforge.inference.decoding import ChatModel, DecodingConfig, TorchStep, load_chat_model
from chatforge.serve.app import create_app
from chatforge.serve.launch import serve_in_background
from chatforge.serve.schema import ServerLimits

KEY = "test-key-123"
LIMITS = ServerLimits(max_tokens=48, max_messages=8, max_request_bytes=16_000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chat_model(trained_chat_dir):
    return load_chat_model(trained_chat_dir)


@pytest.fixture(scope="module")
def server(chat_model):
    """The base URL of a running server with an API key and small limits."""
    app = create_app(chat_model, api_key=KEY, limits=LIMITS, model_id="tiny-chat")
    with serve_in_background(app) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "v1", api_key=KEY, max_retries=0)


HELLO = [{"role": "user", "content": "hello"}]


def test_openai_client_plain_and_streaming_agree(client, chat_model):
    reply = client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=24, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "tiny-chat" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    expected = chat_model.complete(HELLO, DecodingConfig(max_new_tokens=24))
    assert choice.message.content == expected.text != ""
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=24, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1                                   # streamed, not sent in one piece
    assert "".join(pieces) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def test_defaults_are_greedy_and_a_conversation_is_kept(client, chat_model):
    """No temperature in the request: the server's default (greedy), the same reply every time."""
    messages = [{"role": "system", "content": "Be brief."}, *HELLO, {"role": "assistant", "content": "hi there!"},
                {"role": "user", "content": "how are you?"}]
    first = client.chat.completions.create(model="anything", messages=messages)
    again = client.chat.completions.create(model="anything", messages=messages)
    assert first.choices[0].message.content == again.choices[0].message.content
    expected = chat_model.complete(messages, DecodingConfig(max_new_tokens=chat_model.context_length // 2))
    assert first.choices[0].message.content == expected.text
    assert first.usage.prompt_tokens == expected.prompt_tokens > 30          # the whole conversation went in


def test_sampling_with_a_seed_reproduces(client):
    def ask(seed):
        return client.chat.completions.create(model="m", messages=HELLO, max_tokens=16, temperature=1.5, seed=seed,
                                              top_p=0.95, extra_body={"top_k": 50}).choices[0].message.content
    assert ask(7) == ask(7)
    assert len({ask(s) for s in range(6)}) > 1


def test_stop_strings_and_usage_in_the_stream(client):
    plain = client.chat.completions.create(model="m", messages=HELLO, max_tokens=24).choices[0].message.content
    assert " " in plain
    word = plain.split(" ")[1]
    cut = client.chat.completions.create(model="m", messages=HELLO, max_tokens=24, stop=[word])
    assert cut.choices[0].message.content == plain[:plain.index(word)].rstrip()
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=HELLO, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > chunks[-1].usage.completion_tokens > 0


def test_max_tokens_cuts_with_finish_reason_length(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "how are you?"}],
                                           max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    assert client.models.retrieve("tiny-chat").owned_by == "chatforge"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_wrong_or_missing_api_key_is_401(server):
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(server + "v1/chat/completions", json={"messages": HELLO}, headers=auth)
        assert r.status_code == 401, auth
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server + "health").status_code == 200          # liveness needs no key


def post(server, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server + "v1/chat/completions", content=content,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})})


def body(**fields) -> str:
    return json.dumps({"model": "m", "messages": HELLO, **fields})


@pytest.mark.parametrize("content, param, words", [
    ("{not json", None, "not valid JSON"),
    ("", None, "not valid JSON"),
    ("[1, 2]", None, "should be an object"),
    (json.dumps({"model": "m"}), "messages", "Missing required parameter"),
    (json.dumps({"messages": "hello"}), "messages", "valid array"),
    (json.dumps({"messages": []}), "messages", "at least one message"),
    (json.dumps({"messages": [{"role": "tool", "content": "x"}]}), "messages.0.role", "'user'"),
    (json.dumps({"messages": [{"role": "user"}]}), "messages.0.content", "Missing"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}), "messages.0.content", "list of text parts"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
     "messages.0.content", "images and audio are not supported"),
    (body(max_tokens="10"), "max_tokens", "valid integer"),
    (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (body(max_tokens=49), "max_tokens", "limit of 48"),
    (body(max_completion_tokens=500), "max_completion_tokens", "limit of 48"),
    (body(temperature=3), "temperature", "less than or equal to 2"),
    (body(temperature="hot"), "temperature", "valid number"),
    (body(top_p=0), "top_p", "greater than 0"),
    (body(stream="yes"), "stream", "valid boolean"),
    (body(n=2), "n", "n=1"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop", "up to 4"),
    (body(stop=7), "stop", "a string or a list of strings"),
    (body(logprobs=True, stream=True), "logprobs", "not supported with stream"),
    (body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "not supported"),
    (body(num_beams=2, temperature=0.7), None, "beam search is deterministic"),
    (body(frequency_penalty=5), "frequency_penalty", "less than or equal to 2"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 9}), "messages", "at most 8"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_bad_requests_are_400_naming_the_field(server, content, param, words):
    r = post(server, content)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


def test_oversized_bodies_are_413(server):
    big = body(messages=[{"role": "user", "content": "x" * 20_000}])
    r = post(server, big)                                       # Content-Length says it
    assert r.status_code == 413 and "16000" in r.json()["error"]["message"]

    def chunks():                                               # no Content-Length at all (chunked)
        for _ in range(20):
            yield b" " * 1_000
    r = httpx.post(server + "v1/chat/completions", content=chunks(),
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_routes_and_methods_in_the_error_shape(server):
    r = httpx.get(server + "v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(server + "v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and "DELETE" in r.json()["error"]["message"]


def test_the_server_still_answers_after_bad_requests(server, client):
    for content in ("{", "[]", body(n=3), body(max_tokens=10_000)):
        assert post(server, content).status_code == 400
    assert post(server, "x" * 20_000).status_code == 413
    reply = client.chat.completions.create(model="m", messages=HELLO, max_tokens=24)
    assert reply.choices[0].message.content != ""


class FlakyStep(TorchStep):
    """The model's step, failing on purpose while ``fail`` is set."""

    fail = False

    def forward_batch(self, *args):
        if self.fail:
            raise RuntimeError("the accelerator caught fire in /secret/path")
        return super().forward_batch(*args)


def test_a_failing_generation_is_500_with_an_id_in_the_log_and_the_server_goes_on(chat_model, caplog):
    step = FlakyStep(chat_model.step.model)
    flaky = ChatModel(chat_model.tokenizer, step, chat_model.context_length, "flaky")
    with serve_in_background(create_app(flaky)) as url:
        client = openai.OpenAI(base_url=url + "v1", api_key="none", max_retries=0)
        step.fail = True
        r = httpx.post(url + "v1/chat/completions", json={"messages": HELLO})
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "Internal error (id " in error["message"] and "secret" not in r.text and "fire" not in r.text
        error_id = error["message"].split("(id ")[1].split(")")[0]
        logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
        assert logged and "caught fire" in str(logged[0].exc_info[1])          # the log has what the reply has not
        with pytest.raises(openai.APIError, match="Internal error") as raised:     # in a stream: an error event
            list(client.chat.completions.create(model="m", messages=HELLO, stream=True))
        assert "fire" not in str(raised.value)
        step.fail = False
        assert client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content != ""


def test_one_request_at_a_time_while_the_server_stays_responsive(chat_model):
    step = GatedStep(chat_model.step.model, pause_at=3)
    gated = ChatModel(chat_model.tokenizer, step, chat_model.context_length, "gated")
    with serve_in_background(create_app(gated)) as url:
        client = openai.OpenAI(base_url=url + "v1", api_key="none", max_retries=0)
        results = {}
        first = threading.Thread(target=lambda: results.update(first=list(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "how are you?"}], max_tokens=12, stream=True,
            stream_options={"include_usage": True}))))
        first.start()
        assert step.paused.wait(60)
        # The first reply is stuck mid-way in its worker thread; the event loop still answers.
        assert httpx.get(url + "health", timeout=30).json()["busy"] is True
        second = threading.Thread(target=lambda: results.update(second=client.chat.completions.create(
            model="m", messages=HELLO, max_tokens=12)))
        second.start()
        while httpx.get(url + "health", timeout=30).json()["waiting"] != 1:    # the second request queues
            assert second.is_alive()
        step.gate.set()
        first.join(60)
        second.join(60)
    assert "".join(c.choices[0].delta.content or "" for c in results["first"][:-1]) != ""
    assert results["second"].choices[0].message.content != ""
    # One step per token; the second request's first step (its prompt) came after every step of the first.
    first_steps = results["first"][-1].usage.completion_tokens
    assert [i for i, width in enumerate(step.calls) if width > 1] == [0, first_steps]
    assert len(step.calls) == first_steps + results["second"].usage.completion_tokens


def test_serve_command_binds_localhost_and_answers(trained_chat_dir):
    """``chatforge serve`` as a user runs it: port 0 picks a free port, the URL is printed."""
    env = {**os.environ, "CHATFORGE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--model", str(trained_chat_dir), "--port", "0",
                             "--max-new-tokens", "24"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        assert "listening on" in lines[-1], "".join(lines)
        url = lines[-1].split("listening on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:"), "".join(lines)
        client = openai.OpenAI(base_url=url + "v1", api_key=KEY, max_retries=0)
        assert client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content != ""
        assert httpx.get(url + "v1/models").status_code == 401             # the key came from the environment
        assert "<title>chatforge</title>" in httpx.get(url).text
    finally:
        proc.send_signal(signal.SIGINT)                                     # Ctrl-C
        out, _ = proc.communicate(timeout=180)                              # a bound for a busy machine, not a measure
    assert proc.returncode == 0 and "chatforge serve: stopped" in out, out


def test_serve_command_refuses_a_missing_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--model", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "not a model directory" in r.stderr
