"""``chatforge serve``: the command line (model, address, key, limits and decoding defaults).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from chatforge.serve.app import create_app
from chatforge.serve.launch import AnnouncingServer
from chatforge.serve.schema import ServerLimits

log = logging.getLogger(__name__)

API_KEY_ENV = "CHATFORGE_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from chatforge.serve.chat_cli import add_decoding_arguments, add_model_arguments

    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set)")
    p.add_argument("--name", help="the model id in /v1/models and in replies (default: the --model value)")
    limits = ServerLimits()
    p.add_argument("--max-tokens-limit", type=int, default=limits.max_tokens,
                   help="most max_tokens a request may ask for")
    p.add_argument("--max-messages", type=int, default=limits.max_messages, help="most messages in one request")
    p.add_argument("--max-request-bytes", type=int, default=limits.max_request_bytes, help="largest request body")
    add_decoding_arguments(p)



def run(args: argparse.Namespace) -> int:
    from chatforge.core.tracking import setup_logging
    from chatforge.serve.chat_cli import load_model_and_decoding

    setup_logging()
    try:
        limits = ServerLimits(args.max_tokens_limit, args.max_messages, args.max_request_bytes)
    except ValueError as err:
        print(f"chatforge serve: {err}", file=sys.stderr)
        return 2
    loaded = load_model_and_decoding(args, "serve")
    if loaded is None:
        return 2
    chat_model, defaults = loaded
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(set --api-key or %s)", args.host, API_KEY_ENV)
    app = create_app(chat_model, api_key=api_key, limits=limits, defaults=defaults, model_id=args.name)
    try:
        AnnouncingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()
    except KeyboardInterrupt:                # uvicorn shuts down on Ctrl-C, then re-raises it
        pass
    print("chatforge serve: stopped")
    return 0
