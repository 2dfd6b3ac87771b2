"""``chatforge chat``: a multi-turn chat with a model in the terminal.

The session keeps the whole conversation as a list of messages; every turn renders all of it
with the chat template (``ChatModel.stream``), which leaves out the oldest turns once they no
longer fit the context, and the REPL says so when it happens. Tokens print as they come.
``/reset`` starts over (keeping ``--system``), ``/exit`` or end of input (Ctrl-D) quits, and
Ctrl-C stops a reply mid-way (that exchange is not kept).

The decoding flags are shared with ``chatforge serve``, where they set the defaults of requests.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/policy")
DEFAULT_EXPORT = Path("models/export")
DEFAULT_MAX_NEW_TOKENS = 128
COMMANDS = {"/reset": "forget the conversation (the --system message stays)", "/exit": "quit (also /quit, Ctrl-D)",
            "/help": "this list"}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a model directory or an MLflow model URI such as "
                                   f"models:/chatforge-policy@champion (default: {DEFAULT_MODEL}, or "
                                   f"{DEFAULT_EXPORT} with --onnx)")
    p.add_argument("--onnx", action="store_true", help="run the ONNX export (--model is its directory) on ONNX Runtime")


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (greedy unless --temperature > 0 or --beams > 1)")
    g.add_argument("--max-new-tokens", type=int, help=f"most tokens in a reply (default: {DEFAULT_MAX_NEW_TOKENS}, "
                                                       "or half the model's context when that is smaller)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: smallest set with this probability (1 = off)")
    g.add_argument("--beams", type=int, default=1, help="beam search with this many beams (needs temperature 0)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (1 = off)")
    g.add_argument("--seed", type=int, help="sampling seed: the same seed and inputs give the same replies")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", help="a system message that opens the conversation")
    add_decoding_arguments(p)


def model_source(args: argparse.Namespace) -> str:
    return str(args.model or (DEFAULT_EXPORT if args.onnx else DEFAULT_MODEL))


def load_model(args: argparse.Namespace, command: str):
    """The ChatModel the flags name, or None after printing why it could not be loaded."""
    from transformers.utils import logging as hf_logging

    from chatforge.inference.decoding import load_chat_model

    hf_logging.disable_progress_bar()        # the "Loading weights" bar would land in the transcript
    source = model_source(args)
    try:
        return load_chat_model(source, onnx=args.onnx)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"chatforge {command}: cannot load {source}: {err}", file=sys.stderr)
    except Exception as err:                 # mlflow's errors (no such model or alias) have no common base
        from chatforge.core.tracking import tracking_uri

        print(f"chatforge {command}: cannot load {source} from the MLflow store {tracking_uri()}: "
              f"{type(err).__name__}: {err}. `dvc repro evaluate` registers the pipeline's models; "
              "MLFLOW_TRACKING_URI points at another store.", file=sys.stderr)
    return None


def decoding_config(args: argparse.Namespace, context_length: int):
    """The DecodingConfig the flags describe; ValueError names a bad flag's field."""
    from chatforge.inference.decoding import DecodingConfig

    max_new = args.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, context_length // 2)
    if max_new >= context_length:
        raise ValueError(f"--max-new-tokens {max_new} leaves no room for the prompt in the model's "
                         f"{context_length}-token context")
    return DecodingConfig(max_new_tokens=max_new, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          num_beams=args.beams, repetition_penalty=args.repetition_penalty, seed=args.seed)


def describe(cfg) -> str:
    if cfg.num_beams > 1:
        how = f"beam search with {cfg.num_beams} beams"
    elif cfg.temperature == 0:
        how = "greedy"
    else:
        how = f"sampling at temperature {cfg.temperature:g}"
        how += f", top-k {cfg.top_k}" if cfg.top_k else ""
        how += f", top-p {cfg.top_p:g}" if cfg.top_p < 1 else ""
    if cfg.repetition_penalty != 1:
        how += f", repetition penalty {cfg.repetition_penalty:g}"
    return f"{how}, at most {cfg.max_new_tokens} new tokens"


def load_model_and_decoding(args: argparse.Namespace, command: str):
    """(ChatModel, DecodingConfig) the flags name, or None after printing why not (chat and serve)."""
    chat_model = load_model(args, command)
    if chat_model is None:
        return None
    try:
        return chat_model, decoding_config(args, chat_model.context_length)
    except ValueError as err:
        print(f"chatforge {command}: {err}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    loaded = load_model_and_decoding(args, "chat")
    if loaded is None:
        return 2
    chat_model, cfg = loaded
    runtime = "ONNX Runtime" if args.onnx else "PyTorch"
    print(f"chatforge chat: {chat_model.name} on {runtime}, {chat_model.context_length}-token context; "
          f"{describe(cfg)}.")
    print("Type a message; /reset starts over, /exit quits.")
    return chat_loop(chat_model, cfg, args.system)


def read_line(stdin: TextIO, stdout: TextIO, prompt: str = "you> ") -> str | None:
    """One line of input without its newline, or None at the end of input."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        import readline  # noqa: F401  (importing it gives input() line editing and history)

        try:
            return input(prompt)
        except EOFError:
            return None
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    if not line:
        return None
    # Piped input is not echoed by a terminal: write it, so the transcript reads as a chat.
    stdout.write(line if line.endswith("\n") else line + "\n")
    return line.rstrip("\n")


def chat_loop(chat_model, cfg, system: str | None = None, stdin: TextIO | None = None,
              stdout: TextIO | None = None) -> int:
    """The REPL: read a line, stream the reply, keep both; until /exit or end of input."""
    from chatforge.inference.decoding import Completion

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    dropped = 0
    while True:
        try:
            text = read_line(stdin, stdout)
        except KeyboardInterrupt:
            text = None
        if text is None:                     # end of input, or Ctrl-C at the prompt
            stdout.write("\n")
            return 0
        if not text.strip():
            continue
        command = text.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            messages, dropped = list(start), 0
            stdout.write("(conversation cleared)\n")
            continue
        if command == "/help" or (command.startswith("/") and " " not in command):
            if command != "/help":
                stdout.write(f"unknown command {command}\n")
            stdout.write("".join(f"  {name:8} {what}\n" for name, what in COMMANDS.items()))
            continue
        turn = [*messages, {"role": "user", "content": text}]
        stdout.write("assistant> ")
        stdout.flush()
        try:
            for item in chat_model.stream(turn, cfg):
                if isinstance(item, Completion):
                    done = item
                else:
                    stdout.write(item)
                    stdout.flush()
        except KeyboardInterrupt:
            stdout.write("\n(stopped; this exchange is not kept)\n")
            continue
        if not done.text:
            stdout.write("(empty reply)")
        stdout.write("\n" if done.finish_reason == "stop" else " [cut at the token limit]\n")
        if done.dropped_messages > dropped:
            stdout.write(f"(the {done.dropped_messages} oldest messages no longer fit the "
                         f"{chat_model.context_length}-token context and were left out)\n")
        dropped = done.dropped_messages
        messages = [*turn, {"role": "assistant", "content": done.text}]
