"""``chatforge serve``: an OpenAI-compatible chat API and a chat page, for one loaded model.

Routes (``create_app``; each group registered by a function that takes the app and the
``ServerContext``, so that a route module adds its own the same way):

- ``POST /v1/chat/completions``: OpenAI's request and response, plain or ``stream: true``
  (server-sent events: a ``delta.role`` chunk, ``delta.content`` chunks, a chunk with the
  ``finish_reason``, then ``data: [DONE]``), so the official clients work unchanged.
- ``POST /v1/completions``: OpenAI's legacy text completions with ``echo`` and ``logprobs``
  (``chatforge.serve.completions``), so lm-evaluation-harness's ``local-completions`` can score
  the model; chat completions take ``logprobs`` / ``top_logprobs`` too (not with ``stream``).
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one loaded model.
- ``GET /``: the chat page (``chatforge/serve/static/chat.html``); ``GET /health``: liveness and the
  load (``busy``, ``active``, ``waiting``), without a key; the model's id only with the key.

How OpenAI's fields map: ``max_tokens`` or ``max_completion_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop`` (up to 4 strings, not included in the reply), ``frequency_penalty`` and
``presence_penalty`` (applied as OpenAI defines them) are supported; ``logprobs`` and
``top_logprobs`` (not with ``stream``) are supported; ``n`` must be 1; ``tools`` are refused. A field left out takes the server's default (the decoding flags of
``chatforge serve``: greedy unless ``--temperature``), not OpenAI's temperature 1, so a plain request
is reproducible. Extensions: ``top_k``, ``num_beams``, ``repetition_penalty``. ``model`` may name
anything: the loaded model answers.

Errors come in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a body
that is not JSON, a field that is wrong or over a limit (named in ``param``) or a Host that is not
the server's, 401 for a missing or wrong API key when one is set, 404/405 for unknown routes, 413
for a body over the limit, 415 for a POST that is not ``application/json``, 429 with
``Retry-After`` when the batch and its wait queue are full, 504 past the time limit, and 500
"internal error" with an id that the server log has next to the exception. A failure inside a
stream, after the 200 has gone out, is sent as an ``error`` event (the openai client raises it).

Concurrent requests decode together (``chatforge.serve.queue``: continuous batching, a bounded
FIFO, 429 beyond it); a request whose client disconnects, waiting or generating, streaming or
not, stops and frees its place before the next step. The pieces: ``schema`` (the request and the
limits), ``errors``, ``guard`` (Host, Content-Type, binding), ``queue``, ``context`` (what the
routes share), ``streaming`` (server-sent events), ``launch`` (uvicorn) and ``cli``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.inference.decoding import ChatModel, DecodingConfig
from chatforge.serve.completions import add_completion_routes, chat_logprobs
from chatforge.serve.context import ClientGone, ServerContext
from chatforge.serve.errors import ApiError, internal_error, validation_error
from chatforge.serve.guard import LOOPBACK_NAMES, HostAllowlist
from chatforge.serve.queue import ModelRunner
from chatforge.serve.schema import ChatRequest, ServerLimits, decoding_for
from chatforge.serve.streaming import EventStream, stream_events, usage

log = logging.getLogger(__name__)


def create_app(chat_model: ChatModel, *, api_key: str | None = None, limits: ServerLimits = ServerLimits(),
               defaults: DecodingConfig | None = None, model_id: str | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_NAMES) -> FastAPI:
    """The FastAPI app serving ``chat_model``; ``defaults`` are the decoding settings of requests
    that leave a field out (greedy with at most 128 new tokens, or half the context, when None);
    ``allowed_hosts`` the names the server answers to ("*": any)."""
    ctx = ServerContext(
        chat_model=chat_model, runner=ModelRunner(chat_model, limits.max_batch, limits.max_waiting), limits=limits,
        defaults=defaults or DecodingConfig(max_new_tokens=min(128, chat_model.context_length // 2)),
        model_id=model_id or chat_model.name, api_key=api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        ctx.runner.close()

    app = FastAPI(title="chatforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(HostAllowlist, allowed=allowed_hosts)
    app.state.context = ctx
    add_error_handlers(app)
    add_info_routes(app, ctx)
    add_chat_routes(app, ctx)
    add_completion_routes(app, ctx)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        messages = {404: (f"Unknown route: {request.method} {request.url.path}.", "not_found"),
                    405: (f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed")}
        message, code = messages.get(err.status_code, (str(err.detail), None))
        return ApiError(err.status_code, message, code=code).response()

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone) -> Response:
        log.info("%s %s: the client went away; its generation stopped", request.method, request.url.path)
        return Response(status_code=499)           # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        return internal_error(f"{request.method} {request.url.path}", err).response()


def add_info_routes(app: FastAPI, ctx: ServerContext) -> None:
    page = resources.files("chatforge.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        runner = ctx.runner
        out = {"status": "ok", "busy": runner.busy, "active": runner.engine.active, "waiting": runner.waiting}
        if ctx.key_given(request):                 # the id can be a path on this machine
            out["model"] = ctx.model_id
        return out

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        ctx.authorize(request)
        return {"object": "list", "data": [ctx.model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        ctx.authorize(request)
        if name != ctx.model_id:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{ctx.model_id}'.", "model",
                           "model_not_found")
        return ctx.model_card()


def add_chat_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        deadline = time.monotonic() + ctx.limits.request_timeout
        ctx.authorize(request)
        body = await ctx.read_json_body(request)
        try:
            req = ChatRequest.model_validate_json(body)
        except ValidationError as err:
            raise validation_error(err) from None
        cfg = decoding_for(req, ctx.defaults, ctx.limits, ctx.chat_model.context_length)
        messages = [m.as_chat() for m in req.messages]
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": ctx.model_id}
        place = ctx.runner.enter()                 # 429 now, before any reply has gone out
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            head["object"] = "chat.completion.chunk"
            items = ctx.runner.stream(messages, cfg, place)
            return EventStream(stream_events(items, head, include_usage, deadline, ctx.limits.request_timeout),
                               on_close=place.leave)
        try:
            done = await ctx.unless_gone(request, ctx.runner.complete(messages, cfg, place), deadline)
        except (ApiError, ClientGone):
            raise
        except Exception:                          # one failed generation must not end the server
            raise internal_error(f"generation failed for {reply_id}") from None
        finally:
            place.leave()
        logprobs = None
        if req.logprobs:                           # one forward pass over prompt and reply, holding a place
            async with ctx.runner.place():
                logprobs = await run_in_threadpool(chat_logprobs, ctx.chat_model, messages, cfg, done.token_ids,
                                                   req.top_logprobs or 0)
        return {
            **head,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "logprobs": logprobs, "finish_reason": done.finish_reason}],
            "usage": usage(done),
        }
