"""``chatforge serve``: an OpenAI-compatible chat API and a chat page, for one loaded model.

Routes (``create_app``):

- ``POST /v1/chat/completions``: OpenAI's request and response, plain or ``stream: true``
  (server-sent events: a ``delta.role`` chunk, ``delta.content`` chunks, a chunk with the
  ``finish_reason``, then ``data: [DONE]``), so the official clients work unchanged.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one loaded model.
- ``GET /``: the chat page (``chatforge/static/chat.html``); ``GET /health``: liveness and the
  queue (``busy``, ``waiting``), without a key.

How OpenAI's fields map (the README lists them too): ``max_tokens`` or ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop`` (up to 4 strings, not included in the reply),
``frequency_penalty`` and ``presence_penalty`` (applied as OpenAI defines them) are supported;
``n`` must be 1; ``logprobs`` and ``tools`` are refused. A field left out takes the server's
default (the decoding flags of ``chatforge serve``: greedy unless ``--temperature``), not OpenAI's
temperature 1, so a plain request is reproducible. Extensions: ``top_k``, ``num_beams``,
``repetition_penalty``. ``model`` may name anything: the loaded model answers.

Errors come in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a body
that is not JSON or a field that is wrong (named in ``param``), 401 for a missing or wrong API key
when one is set, 404/405 for unknown routes, 413 for a body over the limit (by Content-Length and
by the bytes actually read), 500 when generation fails. A failure inside a stream, after the
200 has gone out, is sent as an ``error`` event (the openai client raises it as ``APIError``).

Generation is CPU-bound and the model serves one request at a time: an asyncio lock orders the
requests, and every token step runs in a worker thread, so the event loop keeps answering
(``/v1/models``, the page, new requests that queue) while a reply is generated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.config import field_help
from chatforge.generation import ChatModel, Completion, DecodingConfig

log = logging.getLogger(__name__)

API_KEY_ENV = "CHATFORGE_API_KEY"
MAX_STOP_STRINGS = 4                     # OpenAI's limit


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; past a limit the request gets a 4xx that names it."""

    max_tokens: int = field_help(512, "most new tokens a request may ask for (also always below the context)")
    max_messages: int = field_help(256, "most messages in one request")
    max_request_bytes: int = field_help(1_000_000, "largest request body, in bytes")

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_messages", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be at least 1")


class ApiError(Exception):
    """An error reply in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# --------------------------------------------------------------------------------------------
# The request, as OpenAI defines it (strict types: "10" is not a number here, as in OpenAI's API)
# --------------------------------------------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_chat(self) -> dict[str, str]:
        """Our message: OpenAI's "developer" is a system message; text parts are joined by lines."""
        content = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Fields this server has no use for (``user``, ``metadata``,
    ``store``, ...) are ignored, as OpenAI-compatible servers commonly do."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    # chatforge extensions
    top_k: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)


# What a field that takes one of several types must be, for the error message (pydantic reports
# each alternative's failure separately).
UNION_FIELDS = {
    "content": 'a string, or a list of text parts {"type": "text", "text": ...} (images and audio are not supported)',
    "stop": "a string or a list of strings",
}
UNION_MEMBERS = {"str", "list[TextPart]", "list[str]"}


def validation_error(err: ValidationError) -> ApiError:
    """The first problem pydantic found, with the field's dotted path as ``param``."""
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')}).",
                        code="invalid_json")
    loc = [str(p) for p in first["loc"]]
    member = next((i for i, p in enumerate(loc) if p in UNION_MEMBERS), None)
    if member is not None:
        param = ".".join(loc[:member])
        return ApiError(400, f"Invalid value for '{param}': it must be {UNION_FIELDS[loc[member - 1]]}.", param,
                        "invalid_type")
    param = ".".join(loc) or None
    if first["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if first["type"] == "too_short" and param == "messages":
        return ApiError(400, "'messages' must contain at least one message.", param, "invalid_value")
    where = f"'{param}'" if param else "the request body"
    return ApiError(400, f"Invalid value for {where}: {first['msg']}.", param, "invalid_value")


def decoding_for(req: ChatRequest, defaults: DecodingConfig, limits: ServerLimits,
                 context_length: int) -> DecodingConfig:
    """The request's decoding settings on top of the server's defaults; ApiError when out of bounds."""
    if req.n not in (None, 1):
        raise ApiError(400, f"n={req.n} is not supported: this server returns one choice (n=1).", "n", "invalid_value")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this server.", "logprobs", "unsupported_parameter")
    if req.tools:
        raise ApiError(400, "tools (function calling) are not supported by this server.", "tools",
                       "unsupported_parameter")
    if len(req.messages) > limits.max_messages:
        raise ApiError(400, f"Too many messages: {len(req.messages)}; this server takes at most "
                            f"{limits.max_messages} per request.", "messages", "too_many_messages")
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    limit = min(limits.max_tokens, context_length - 1)
    if asked is not None and asked > limit:
        raise ApiError(400, f"{param}={asked} is over this server's limit of {limit} new tokens (the model's context "
                            f"is {context_length} tokens).", param, "invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise ApiError(400, f"'stop' takes up to {MAX_STOP_STRINGS} non-empty strings.", "stop", "invalid_value")
    given = {
        "max_new_tokens": min(asked or defaults.max_new_tokens, limit),
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "num_beams": req.num_beams,
        "repetition_penalty": req.repetition_penalty, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty, "seed": req.seed, "stop": tuple(stop) or None,
    }
    try:
        return replace(defaults, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise ApiError(400, f"Invalid decoding settings: {err}.", code="invalid_value") from err


# --------------------------------------------------------------------------------------------
# One model, one generation at a time
# --------------------------------------------------------------------------------------------

class ModelRunner:
    """Runs the model's generations one at a time, each token step in a worker thread."""

    def __init__(self, chat_model: ChatModel):
        self.chat_model = chat_model
        self.lock = asyncio.Lock()           # FIFO: requests are served in the order they came
        self.waiting = 0                     # requests queued behind the one generating

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    async def complete(self, messages: list[dict[str, str]], cfg: DecodingConfig) -> Completion:
        async with self.turn():
            return await run_in_threadpool(self.chat_model.complete, messages, cfg)

    async def stream(self, messages: list[dict[str, str]], cfg: DecodingConfig) -> AsyncIterator[str | Completion]:
        """Text deltas, then the Completion. Closing it mid-way stops the generation after the
        step in progress and frees the model for the next request."""
        async with self.turn():
            items = self.chat_model.stream(messages, cfg)
            try:
                while (item := await run_in_threadpool(next, items, None)) is not None:
                    yield item
            finally:
                items.close()


class EventStream(StreamingResponse):
    """A StreamingResponse that closes its generator however the response ends. Starlette leaves
    a generator whose client went away to the garbage collector, and with it the model lock."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------

def create_app(chat_model: ChatModel, *, api_key: str | None = None, limits: ServerLimits = ServerLimits(),
               defaults: DecodingConfig | None = None, model_id: str | None = None) -> FastAPI:
    """The FastAPI app serving ``chat_model``; ``defaults`` are the decoding settings of requests
    that leave a field out (greedy with at most 128 new tokens, or half the context, when None)."""
    model_id = model_id or chat_model.name
    defaults = defaults or DecodingConfig(max_new_tokens=min(128, chat_model.context_length // 2))
    runner = ModelRunner(chat_model)
    started = int(time.time())
    page = resources.files("chatforge").joinpath("static/chat.html").read_text(encoding="utf-8")
    app = FastAPI(title="chatforge", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        messages = {404: (f"Unknown route: {request.method} {request.url.path}.", "not_found"),
                    405: (f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed")}
        message, code = messages.get(err.status_code, (str(err.detail), None))
        return ApiError(err.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, f"Internal server error: {type(err).__name__}: {err}", type="server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not given:
            raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key",
                           type="authentication_error")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", type="authentication_error")

    async def read_body(request: Request) -> bytes:
        limit = limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, f"Invalid Content-Length header: {declared!r}.", code="invalid_request")
            if int(declared) > limit:
                raise ApiError(413, f"The request body is {int(declared)} bytes; this server takes at most {limit}.",
                               code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():         # also bounds a chunked body, which declares no length
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"The request body is over this server's limit of {limit} bytes.",
                               code="request_too_large")
        return bytes(body)

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": started, "owned_by": "chatforge"}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "busy": runner.busy, "waiting": runner.waiting}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{model_id}'.", "model",
                           "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_body(request)
        try:
            req = ChatRequest.model_validate_json(body)
        except ValidationError as err:
            raise validation_error(err) from None
        cfg = decoding_for(req, defaults, limits, chat_model.context_length)
        messages = [m.as_chat() for m in req.messages]
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model_id}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            head["object"] = "chat.completion.chunk"
            return EventStream(stream_events(runner, messages, cfg, head, include_usage))
        try:
            done = await runner.complete(messages, cfg)
        except Exception as err:                    # one failed generation must not end the server
            log.exception("generation failed for %s", reply_id)
            raise ApiError(500, f"Generation failed: {type(err).__name__}: {err}", type="server_error") from err
        return {
            **head,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": usage(done),
        }

    return app


def usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def stream_events(runner: ModelRunner, messages: list[dict[str, str]], cfg: DecodingConfig,
                        head: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of one streamed reply, as OpenAI sends them."""
    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    async with contextlib.aclosing(runner.stream(messages, cfg)) as items:
        try:
            async for item in items:
                if isinstance(item, Completion):
                    yield chunk({}, item.finish_reason)
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(item)})
                else:
                    yield chunk({"content": item})
        except Exception as err:                    # the 200 is out: report it the way OpenAI's stream does
            log.exception("generation failed for %s", head["id"])
            yield sse(ApiError(500, f"Generation failed: {type(err).__name__}: {err}", type="server_error").body())
            return
    yield sse("[DONE]")


# --------------------------------------------------------------------------------------------
# chatforge serve
# --------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from chatforge.chat import add_decoding_arguments, add_model_arguments

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


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing its URL once the socket is bound (``--port 0`` picks a free port)."""

    url = ""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}/"
            print(f"chatforge serve: listening on {self.url} (chat page {self.url}, API {self.url}v1)", flush=True)


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0):
    """Run ``app`` with uvicorn on a thread until the block ends; yields the base URL
    (``http://127.0.0.1:PORT/``). For tests, notebooks and benchmarks."""
    server = AnnouncingServer(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="chatforge-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield server.url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run(args: argparse.Namespace) -> int:
    from chatforge.chat import load_model_and_decoding
    from chatforge.tracking import setup_logging

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
