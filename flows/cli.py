"""The ``chatforge`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only dispatches, so a subcommand's imports (torch, prefect, ...) are paid only when it
runs. The CLI lives beside the flows because ``chatforge run`` starts the Prefect flow, and the
``chatforge`` library never imports ``flows``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("flows.run_command", "run the whole pipeline (DVC stages through the Prefect flow)"),
    "clean": ("chatforge.data.cleaning.cli", "clean .txt/.html/.jsonl files: boilerplate, PII, quality filters, dedup"),
    "chat": ("chatforge.serve.chat_cli", "chat with a model in the terminal (a model directory, models:/... or --onnx)"),
    "serve": ("chatforge.serve.cli", "serve a model: OpenAI-compatible /v1/chat/completions and a chat page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatforge", description="The ChatGPT recipe as one reproducible pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
