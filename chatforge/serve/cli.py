"""``chatforge serve``: the command line (model, address, key, limits and decoding defaults).

The key comes from ``$CHATFORGE_API_KEY`` or ``--api-key-file`` (``--api-key`` works too, but a
command line is visible to every user of the machine in ``ps``). A server bound beyond loopback
without a key refuses to start unless ``--allow-no-key`` says that is meant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import uvicorn

from chatforge.serve.app import create_app
from chatforge.serve.guard import allowed_hosts_for, is_loopback
from chatforge.serve.launch import AnnouncingServer
from chatforge.serve.schema import ServerLimits

log = logging.getLogger(__name__)

API_KEY_ENV = "CHATFORGE_API_KEY"
# ServerLimits fields and their flags (max_tokens kept its older flag name).
LIMIT_FLAGS = {"max_tokens": "--max-tokens-limit"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from chatforge.serve.chat_cli import add_decoding_arguments, add_model_arguments

    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1 (better: ${API_KEY_ENV} or "
                                     "--api-key-file, which `ps` does not show)")
    p.add_argument("--api-key-file", type=Path, help="read the API key from this file (its first line)")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve on a non-loopback --host without an API key (refused otherwise)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the server answers to besides the loopback names and --host "
                        "(repeatable; '*' for any, e.g. behind a proxy that checks it)")
    p.add_argument("--name", help="the model id in /v1/models and in replies (default: the --model value)")
    g = p.add_argument_group("limits (a request past one gets a 400 naming it; a full queue a 429)")
    for f in dataclasses.fields(ServerLimits):
        flag = LIMIT_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        g.add_argument(flag, dest=f.name, type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default {f.default})")
    add_decoding_arguments(p)


def api_key_from(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"{args.api_key_file}: the API key file is empty")
        return lines[0].strip()
    if args.api_key:
        log.warning("--api-key is visible to every user of this machine (ps); set %s or use --api-key-file",
                    API_KEY_ENV)
    return args.api_key or os.environ.get(API_KEY_ENV) or None


def run(args: argparse.Namespace) -> int:
    from chatforge.core.tracking import setup_logging
    from chatforge.serve.chat_cli import load_model_and_decoding

    setup_logging()
    try:
        limits = ServerLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerLimits)})
        api_key = api_key_from(args)
    except (ValueError, OSError) as err:
        print(f"chatforge serve: {err}", file=sys.stderr)
        return 2
    if api_key is None and not is_loopback(args.host) and not args.allow_no_key:
        print(f"chatforge serve: refusing to serve on {args.host} without an API key: anyone who can reach it "
              f"could use the model. Set {API_KEY_ENV} (or --api-key-file), or pass --allow-no-key if that is "
              "meant.", file=sys.stderr)
        return 2
    loaded = load_model_and_decoding(args, "serve")
    if loaded is None:
        return 2
    chat_model, defaults = loaded
    if api_key is None and not is_loopback(args.host):
        log.warning("serving on %s without an API key (--allow-no-key)", args.host)
    app = create_app(chat_model, api_key=api_key, limits=limits, defaults=defaults, model_id=args.name,
                     allowed_hosts=allowed_hosts_for(args.host, args.allowed_host))
    try:
        AnnouncingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()
    except KeyboardInterrupt:                # uvicorn shuts down on Ctrl-C, then re-raises it
        pass
    print("chatforge serve: stopped")
    return 0
