"""The chat page at / in headless Chromium: type, send, see the reply stream in; a second turn keeps
the first; Reset clears; with an API key the page works once the key is entered.

The browser is Debian's chromium (``make test`` installs it with apt-get), driven by Playwright
through ``executable_path``: Playwright's own browser download cannot work on a closed network.
The flags turn off Chromium's background connections, which that network refuses.
"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import GatedStep

from chatforge.inference.decoding import ChatModel, DecodingConfig, load_chat_model
from chatforge.serve.app import create_app
from chatforge.serve.launch import serve_in_background

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000                    # a generous bound for a busy machine; nothing here measures time

pytestmark = [pytest.mark.skipif(not CHROMIUM.exists() and not shutil.which("chromium"),
                                reason=f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium with "
                                       "apt-get (needs root and a Debian mirror), or run `apt-get install -y chromium`"),
             pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def chat_model(trained_chat_dir):
    return load_chat_model(trained_chat_dir)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                    args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def wait_for_replies(page, count: int) -> list[str]:
    """The assistant replies once ``count`` of them have text and none is still streaming."""
    page.wait_for_function(
        """n => { const r = [...document.querySelectorAll('.message.assistant')];
                  return r.length >= n && r.every(e => e.textContent.trim() && !e.classList.contains('pending')); }""",
        arg=count)
    return page.locator(".message.assistant").all_inner_texts()


def test_type_send_and_see_the_reply_stream_in(chat_model, page):
    expected = chat_model.complete([{"role": "user", "content": "hello"}],
                                   DecodingConfig(max_new_tokens=chat_model.context_length // 2)).text
    assert len(expected.split()) > 1
    # The third step waits: the page must show the first two tokens before the reply goes on.
    step = GatedStep(chat_model.step.model, pause_at=3)
    gated = ChatModel(chat_model.tokenizer, step, chat_model.context_length, chat_model.name)
    requests = []
    with serve_in_background(create_app(gated)) as url:
        page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent !== 'connecting…'")
        assert page.inner_text("#model") == chat_model.name

        send(page, "hello")
        assert step.paused.wait(60)
        page.wait_for_function("document.querySelector('.message.assistant').textContent.trim() !== ''")
        partial = page.inner_text(".message.assistant")
        step.gate.set()
        assert expected.startswith(partial) and partial != expected
        assert wait_for_replies(page, 1) == [expected]

        page.fill("#input", "how are you?")
        page.press("#input", "Enter")                       # Enter sends too
        replies = wait_for_replies(page, 2)
        assert page.locator(".message.user").all_inner_texts() == ["hello", "how are you?"]
        assert len(replies) == 2 and replies[0] == expected

    assert all(r["stream"] is True for r in requests)
    # The second request carried the whole conversation kept in the page.
    assert requests[1]["messages"] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": expected},
                                       {"role": "user", "content": "how are you?"}]


def test_reset_forgets_the_conversation(chat_model, page):
    requests = []
    with serve_in_background(create_app(chat_model)) as url:
        page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url)
        send(page, "hello")
        wait_for_replies(page, 1)
        page.click("#reset")
        assert page.locator(".message").count() == 0
        send(page, "how are you?")
        wait_for_replies(page, 1)
    assert requests[-1]["messages"] == [{"role": "user", "content": "how are you?"}]


def test_the_page_with_an_api_key(chat_model, page):
    with serve_in_background(create_app(chat_model, api_key="page-key")) as url:
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('API key')")
        send(page, "hello")
        page.wait_for_selector(".message.error")
        assert "API key" in page.inner_text(".message.error")
        page.click("summary")
        page.fill("#api_key", "page-key")
        page.press("#api_key", "Tab")                       # "change" fires when the field loses focus
        page.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(chat_model.name)}")
        send(page, "hello")
        assert wait_for_replies(page, 1)[0] != ""
