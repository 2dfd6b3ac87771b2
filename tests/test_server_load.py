"""``chatforge serve`` under load and against hostile callers, on a real server over loopback:
the wait queue's 429, clients that go away (waiting or generating, streaming or not), the time
limit, 20 clients at once, batched replies equal to one-at-a-time ones, the Host allowlist,
the Content-Type rule, what /health tells without a key, and the command's refusals.

Generations that must run long use the random tiny model (it never says EOS); a ``HeldStep``
holds the engine at a chosen forward pass so that a test can act while a request waits or runs.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from conftest import REPO

from chatforge.inference.decoding import (
    ChatModel,
    DecodingConfig,
    GenerationCancelled,
    TorchStep,
    beam_search,
    load_chat_model,
)
from chatforge.serve.app import create_app
from chatforge.serve.cli import api_key_from
from chatforge.serve.guard import allowed_hosts_for, host_name, is_loopback
from chatforge.serve.launch import serve_in_background
from chatforge.serve.schema import ServerLimits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELLO = [{"role": "user", "content": "hello"}]


class HeldStep(TorchStep):
    """The model's batched step, logging each call's (batch, width) and holding call ``hold_at``
    until ``gate`` opens."""

    def __init__(self, model, hold_at: int | None = None):
        super().__init__(model)
        self.calls: list[tuple[int, int]] = []
        self.hold_at = hold_at
        self.held, self.gate = threading.Event(), threading.Event()

    def forward_batch(self, input_ids, attention_mask, position_ids, kv):
        self.calls.append(tuple(input_ids.shape))
        if len(self.calls) == self.hold_at:
            self.held.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().forward_batch(input_ids, attention_mask, position_ids, kv)


def eventually(check, what: str, seconds: float = 60) -> None:
    """Wait (bounded) until ``check()`` holds; the bound only keeps a broken server from hanging CI."""
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.02)


def raw_request(url: str, body: dict, extra_headers: str = "") -> socket.socket:
    """A POST sent over a plain socket, left open: closing it is a client that goes away."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n{extra_headers}\r\n".encode() + data)
    return sock


def health(url: str) -> dict:
    return httpx.get(url + "health", timeout=30).json()


@pytest.fixture(scope="module")
def random_chat(tiny_model_dir):
    return load_chat_model(tiny_model_dir)


@pytest.fixture(scope="module")
def trained_chat(trained_chat_dir):
    return load_chat_model(trained_chat_dir)


def held_server(chat, hold_at=None, **limits):
    step = HeldStep(chat.step.model, hold_at)
    app = create_app(ChatModel(chat.tokenizer, step, chat.context_length, "held"), limits=ServerLimits(**limits))
    return step, app


LONG = {"messages": HELLO, "max_tokens": 40}


def test_a_full_queue_answers_429_with_retry_after(random_chat):
    step, app = held_server(random_chat, hold_at=2, max_batch=1, max_waiting=1)
    with serve_in_background(app) as url:
        first = raw_request(url, LONG, "Connection: close\r\n")    # generating, held at its second step
        assert step.held.wait(60)
        second = raw_request(url, LONG, "Connection: close\r\n")   # waiting
        eventually(lambda: health(url)["waiting"] == 1, "the second request waits")
        for stream in (False, True):                                # a stream gets its 429 before any 200
            r = httpx.post(url + "v1/chat/completions", json={**LONG, "stream": stream}, timeout=30)
            assert r.status_code == 429, r.text
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "server_busy"
        step.gate.set()
        for sock in (first, second):
            reply = sock.makefile("rb").read()                      # to the end: the server closes after replying
            sock.close()
            assert reply.startswith(b"HTTP/1.1 200")
        assert health(url)["busy"] is False


def test_clients_that_go_away_stop_their_generation(random_chat):
    """Four ways to leave: waiting or generating, streaming or not. None of them costs a step
    after it has gone, and the server goes on."""
    step, app = held_server(random_chat, hold_at=3, max_batch=1, max_waiting=8)
    with serve_in_background(app) as url:
        runner = app.state.context.runner
        generating = raw_request(url, {**LONG, "stream": True})
        assert step.held.wait(60)                                    # its third step is held
        waiting_plain = raw_request(url, LONG)
        waiting_stream = raw_request(url, {**LONG, "stream": True})
        eventually(lambda: runner.waiting == 2, "two requests wait")
        waiting_plain.close()
        waiting_stream.close()
        eventually(lambda: runner.waiting == 0, "the waiting clients that left are out of the queue")
        generating.close()
        # The disconnect reaches the engine asynchronously (uvicorn's http.disconnect, then the event loop):
        # wait until the generation is marked cancelled, so that the count below does not race the loop.
        eventually(lambda: all(g.cancelled for g in runner.engine.batch.rows), "the server saw the client leave")
        step.gate.set()
        eventually(lambda: not runner.busy and runner.engine.active == 0, "the generation stopped")
        # Its prefill, one step and the held third call; none after the disconnect was seen.
        assert len(step.calls) == 3 and all(batch == 1 for batch, _ in step.calls), step.calls

        step.calls.clear()
        step.hold_at, step.held, step.gate = 3, threading.Event(), threading.Event()
        plain = raw_request(url, LONG)                               # a plain request, generating
        assert step.held.wait(60)
        plain.close()
        eventually(lambda: all(g.cancelled for g in runner.engine.batch.rows), "the server saw the client leave")
        step.gate.set()
        eventually(lambda: not runner.busy and runner.engine.active == 0, "the plain generation stopped")
        assert len(step.calls) == 3, step.calls
        reply = httpx.post(url + "v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4


def test_the_time_limit_stops_a_request(random_chat):
    step, app = held_server(random_chat, hold_at=2, max_batch=1, request_timeout=1.0)
    with serve_in_background(app) as url:
        runner = app.state.context.runner
        try:
            r = httpx.post(url + "v1/chat/completions", json=LONG, timeout=60)
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
            assert "limit of 1 s" in r.json()["error"]["message"]
        finally:
            step.gate.set()
        eventually(lambda: not runner.busy and runner.engine.active == 0, "the timed-out generation stopped")
        assert len(step.calls) <= 4
        step.hold_at, step.held, step.gate = len(step.calls) + 2, threading.Event(), threading.Event()
        client = openai.OpenAI(base_url=url + "v1", api_key="none", max_retries=0)
        try:
            with pytest.raises(openai.APIError, match="limit of 1 s"):   # in a stream: an error event
                list(client.chat.completions.create(model="m", messages=HELLO, max_tokens=40, stream=True))
        finally:
            step.gate.set()
        eventually(lambda: not runner.busy, "the timed-out stream stopped")


def test_twenty_clients_at_once_are_all_answered_or_refused(trained_chat):
    app = create_app(trained_chat, limits=ServerLimits(max_batch=4, max_waiting=6))
    with serve_in_background(app) as url:
        def ask(i: int):
            body = {"messages": [{"role": "user", "content": ["hello", "how are you?", "你好"][i % 3]}],
                    "max_tokens": 24, "stream": i % 2 == 1}
            r = httpx.post(url + "v1/chat/completions", json=body, timeout=120)
            return r.status_code, r.text

        results: dict[int, tuple[int, str]] = {}
        threads = [threading.Thread(target=lambda i=i: results.update({i: ask(i)})) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 20
        codes = [code for code, _ in results.values()]
        assert set(codes) <= {200, 429} and codes.count(200) >= 10, codes
        for code, text in results.values():
            assert code != 200 or ("[DONE]" in text or '"finish_reason":"stop"' in text.replace(" ", ""))
        assert health(url) == {"status": "ok", "busy": False, "active": 0, "waiting": 0}
        assert httpx.post(url + "v1/chat/completions", json={"messages": HELLO}, timeout=60).status_code == 200


def test_concurrent_greedy_replies_equal_one_at_a_time_replies(trained_chat):
    prompts = [[{"role": "user", "content": c}] for c in
               ["hello", "how are you?", "what is your favourite book?", "你好", "tell me about the weather"]] * 2
    expected = [trained_chat.complete(p, DecodingConfig(max_new_tokens=32)).text for p in prompts]
    step, app = held_server(trained_chat, hold_at=1)               # holds the first prefill until all have come
    with serve_in_background(app) as url:
        client = openai.OpenAI(base_url=url + "v1", api_key="none", max_retries=0)
        replies: dict[int, str] = {}

        def ask(i):
            kwargs = dict(model="m", messages=prompts[i], max_tokens=32)
            if i % 2:
                chunks = client.chat.completions.create(stream=True, **kwargs)
                replies[i] = "".join(c.choices[0].delta.content or "" for c in chunks)
            else:
                replies[i] = client.chat.completions.create(**kwargs).choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        assert step.held.wait(60)
        eventually(lambda: app.state.context.runner.running == len(prompts), "every request has its place")
        step.gate.set()
        for t in threads:
            t.join(120)
    assert [replies[i] for i in range(len(prompts))] == expected
    assert max(batch for batch, _ in step.calls) == len(prompts)         # all ten decoded in the same steps


@pytest.fixture(scope="module")
def keyed(trained_chat):
    app = create_app(trained_chat, api_key="k-123", model_id="/home/someone/models/policy",
                     limits=ServerLimits(max_tokens=48, max_beams=2, max_top_k=50, max_stop_chars=8,
                                         max_message_chars=100))
    with serve_in_background(app) as url:
        yield url


def post(url: str, body: dict | str, **headers) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(url + "v1/chat/completions", content=content, timeout=60,
                      headers={"Authorization": "Bearer k-123", "Content-Type": "application/json", **headers})


@pytest.mark.parametrize("fields, param, words", [
    ({"num_beams": 3}, "num_beams", "limit of 2"),
    ({"top_k": 51, "temperature": 1.0}, "top_k", "limit of 50"),
    ({"stop": ["123456789"]}, "stop", "limit of 8 characters"),
    ({"messages": [{"role": "user", "content": "x" * 101}]}, "messages.0.content", "at most 100"),
    ({"messages": [HELLO[0], {"role": "user", "content": [{"type": "text", "text": "y" * 101}]}]},
     "messages.1.content", "at most 100"),
    ({"max_tokens": 49}, "max_tokens", "limit of 48"),
])
def test_each_limit_is_a_400_naming_its_field(keyed, fields, param, words):
    r = post(keyed, {"messages": HELLO, **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and words in r.json()["error"]["message"]


def test_beams_within_the_limit_are_served_and_a_cancelled_search_stops(keyed, trained_chat):
    r = post(keyed, {"messages": HELLO, "num_beams": 2, "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    cancel = threading.Event()
    cancel.set()
    ids = trained_chat.prompt_ids(HELLO, 8)[0]
    with pytest.raises(GenerationCancelled):
        beam_search(trained_chat.step, ids, DecodingConfig(num_beams=2, max_new_tokens=8), trained_chat.eos_ids, cancel)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_post_that_is_not_json_is_415(keyed, content_type):
    headers = {"Authorization": "Bearer k-123"} | ({"Content-Type": content_type} if content_type else {})
    r = httpx.post(keyed + "v1/chat/completions", content=json.dumps({"messages": HELLO}), headers=headers)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert post(keyed, {"messages": HELLO, "max_tokens": 2}, **{"Content-Type": "application/json; charset=utf-8"}
                ).status_code == 200


def test_a_foreign_host_is_refused(keyed):
    port = urlsplit(keyed).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", ""):
        r = httpx.get(keyed + "v1/models", headers={"Host": host, "Authorization": "Bearer k-123"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
        assert post(keyed, {"messages": HELLO}, Host=host).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(keyed + "v1/models", headers={"Host": host, "Authorization": "Bearer k-123"}).status_code == 200


def test_host_names_and_the_allowlist():
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost" and host_name("a.b") == "a.b"
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))
    assert allowed_hosts_for("0.0.0.0") == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts_for("10.0.0.5", ["chat.lan"]) == ("localhost", "127.0.0.1", "::1", "chat.lan", "10.0.0.5")


def test_health_tells_the_model_only_with_the_key(keyed):
    public = httpx.get(keyed + "health").json()
    assert public["status"] == "ok" and "model" not in public and "/home" not in json.dumps(public)
    assert httpx.get(keyed + "health", headers={"Authorization": "Bearer k-123"}).json()["model"] == \
        "/home/someone/models/policy"


def test_the_key_from_a_file_or_the_environment(tmp_path, monkeypatch):
    import argparse

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("CHATFORGE_API_KEY", "from-env")
    assert api_key_from(argparse.Namespace(api_key=None, api_key_file=key_file)) == "from-file"
    assert api_key_from(argparse.Namespace(api_key=None, api_key_file=None)) == "from-env"
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        api_key_from(argparse.Namespace(api_key=None, api_key_file=key_file))


def test_serve_refuses_a_public_address_without_a_key(trained_chat_dir):
    env = {k: v for k, v in __import__("os").environ.items() if k != "CHATFORGE_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--model", str(trained_chat_dir),
                        "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=env)
    assert r.returncode == 2 and "without an API key" in r.stderr and "--allow-no-key" in r.stderr
