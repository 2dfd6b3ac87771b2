"""``chatforge chat``: the REPL keeps the conversation, /reset forgets it, /exit and end of input quit,
old turns are dropped with a notice, and the model can come from an MLflow registry alias."""

import argparse
import io
import subprocess
import sys

import pytest
from conftest import REPO

from chatforge.inference.decoding import ChatModel, DecodingConfig, load_chat_model
from chatforge.serve import chat_cli as chat

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    chat.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def prompts(monkeypatch):
    """Every conversation the REPL sends to the model, as (messages, prompt length in tokens)."""
    seen = []
    original = ChatModel.prompt_ids

    def spy(self, messages, max_new_tokens):
        ids, dropped = original(self, messages, max_new_tokens)
        seen.append(([dict(m) for m in messages], len(ids)))
        return ids, dropped

    monkeypatch.setattr(ChatModel, "prompt_ids", spy)
    return seen


def run_chat(monkeypatch, capsys, script: str, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code = chat.run(parse(*argv))
    return code, capsys.readouterr().out


def test_two_turns_reset_one_more_exit(trained_chat_dir, prompts, monkeypatch, capsys):
    script = "hello\nhow are you?\n/reset\nhello\n/exit\nnever read\n"
    code, out = run_chat(monkeypatch, capsys, script, "--model", str(trained_chat_dir), "--system", "Be brief.",
                         "--max-new-tokens", "24")
    assert code == 0
    direct = load_chat_model(trained_chat_dir)
    cfg = DecodingConfig(max_new_tokens=24)
    system = {"role": "system", "content": "Be brief."}
    first = direct.complete([system, {"role": "user", "content": "hello"}], cfg).text
    assert first != ""
    # The reply printed is the model's; piped input is echoed after the prompt.
    assert f"you> hello\nassistant> {first}\n" in out
    assert "(conversation cleared)" in out and "never read" not in out

    sent = [messages for messages, _ in prompts]
    assert sent[0] == [system, {"role": "user", "content": "hello"}]
    # The second turn carries the first exchange; after /reset only the system message stays.
    assert sent[1] == [*sent[0], {"role": "assistant", "content": first}, {"role": "user", "content": "how are you?"}]
    assert sent[2] == sent[0]
    lengths = [n for _, n in prompts]
    assert lengths[1] > lengths[0] == lengths[2]


def test_end_of_input_and_commands(tiny_model_dir, prompts, monkeypatch, capsys):
    code, out = run_chat(monkeypatch, capsys, "\n/help\n/bogus\nhi", "--model", str(tiny_model_dir),
                         "--max-new-tokens", "4")
    assert code == 0                                    # no /exit: the end of input ends the session
    assert "/reset" in out and "unknown command /bogus" in out
    # Blank lines and commands are not sent.
    assert [m for m, _ in prompts] == [[{"role": "user", "content": "hi"}]]
    assert out.count("assistant> ") == 1 and "[cut at the token limit]" in out    # a random model never stops


def test_old_turns_are_dropped_with_a_notice(tiny_model_dir, prompts, monkeypatch, capsys):
    long = "tell me about the weather and the park and the lazy dog today " * 2
    script = "".join(f"{long}{i}\n" for i in range(4)) + "/exit\n"
    code, out = run_chat(monkeypatch, capsys, script, "--model", str(tiny_model_dir), "--max-new-tokens", "48")
    assert code == 0
    assert all(n + 48 <= 128 for _, n in prompts)
    notices = [line for line in out.splitlines() if "no longer fit the 128-token context" in line]
    assert notices, out
    # Said when more turns drop out, not on every turn after.
    assert len(notices) < len(prompts)


@pytest.mark.parametrize("argv, words", [
    (["--max-new-tokens", "128"], "leaves no room for the prompt"),
    (["--beams", "2", "--temperature", "0.5"], "temperature 0 with num_beams"),
    (["--top-p", "0"], "top_p"),
])
def test_bad_decoding_flags_say_which(tiny_model_dir, argv, words, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert chat.run(parse("--model", str(tiny_model_dir), *argv)) == 2
    assert words in capsys.readouterr().err


def test_missing_model_says_what_to_pass(tmp_path, capsys):
    assert chat.run(parse("--model", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert "not a model directory" in err and "models:/chatforge-policy@champion" in err


def test_onnx_defaults_to_the_export_directory():
    assert chat.model_source(parse("--onnx")) == str(chat.DEFAULT_EXPORT)
    assert chat.model_source(parse()) == str(chat.DEFAULT_MODEL)
    assert chat.model_source(parse("--onnx", "--model", "elsewhere")) == "elsewhere"


def hello_reply(model_dir) -> str:
    reply = load_chat_model(model_dir).complete([{"role": "user", "content": "hello"}],
                                                DecodingConfig(max_new_tokens=24))
    assert reply.text
    return reply.text


def test_chat_with_a_registered_model_by_alias(trained_chat_dir, mlflow_uri, monkeypatch, capsys):
    import mlflow

    from chatforge.eval.registry import register_model

    with mlflow.start_run():
        version = register_model(trained_chat_dir, "chatforge-policy", tags={"git_commit": "abc"})
    mlflow.MlflowClient().set_registered_model_alias("chatforge-policy", "champion", version.version)
    code, out = run_chat(monkeypatch, capsys, "hello\n/exit\n", "--model", "models:/chatforge-policy@champion",
                         "--max-new-tokens", "24")
    assert code == 0, out
    assert "chatforge chat: models:/chatforge-policy@champion" in out
    assert f"assistant> {hello_reply(trained_chat_dir)}\n" in out      # the registered weights answer as the directory does


def test_chat_command_in_a_subprocess(trained_chat_dir):
    r = subprocess.run([sys.executable, "-m", "flows.cli", "chat", "--model", str(trained_chat_dir),
                        "--max-new-tokens", "24"],
                       input="hello\n/exit\n", capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"you> hello\nassistant> {hello_reply(trained_chat_dir)}\nyou> /exit\n" in r.stdout
    assert "Loading weights" not in r.stdout + r.stderr      # no progress bar in the transcript
