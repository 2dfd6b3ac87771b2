"""``chatforge serve``: an OpenAI-compatible chat API and a chat page, for one loaded model.

Routes (``create_app``):

- ``POST /v1/chat/completions``: OpenAI's request and response, plain or ``stream: true``
  (server-sent events: a ``delta.role`` chunk, ``delta.content`` chunks, a chunk with the
  ``finish_reason``, then ``data: [DONE]``), so the official clients work unchanged.
- ``POST /v1/completions``: OpenAI's legacy text completions with ``echo`` and ``logprobs``
  (``chatforge.serve.completions``), so lm-evaluation-harness's ``local-completions`` can score
  the model; chat completions take ``logprobs`` / ``top_logprobs`` too (not with ``stream``).
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one loaded model.
- ``GET /``: the chat page (``chatforge/serve/static/chat.html``); ``GET /health``: liveness and the
  queue (``busy``, ``waiting``), without a key.

How OpenAI's fields map (the README lists them too): ``max_tokens`` or ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop`` (up to 4 strings, not included in the reply),
``frequency_penalty`` and ``presence_penalty`` (applied as OpenAI defines them) are supported;
``logprobs`` and ``top_logprobs`` (not with ``stream``) are supported;
``n`` must be 1; ``tools`` are refused. A field left out takes the server's
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

The pieces: ``schema`` (the request), ``errors``, ``queue`` (one generation at a time),
``streaming`` (server-sent events), ``launch`` (uvicorn) and ``cli`` (``chatforge serve``).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.inference.decoding import ChatModel, DecodingConfig
from chatforge.serve.completions import add_completion_routes, chat_logprobs
from chatforge.serve.errors import ApiError, validation_error
from chatforge.serve.queue import ModelRunner
from chatforge.serve.schema import ChatRequest, ServerLimits, decoding_for
from chatforge.serve.streaming import EventStream, stream_events, usage

log = logging.getLogger(__name__)


def create_app(chat_model: ChatModel, *, api_key: str | None = None, limits: ServerLimits = ServerLimits(),
               defaults: DecodingConfig | None = None, model_id: str | None = None) -> FastAPI:
    """The FastAPI app serving ``chat_model``; ``defaults`` are the decoding settings of requests
    that leave a field out (greedy with at most 128 new tokens, or half the context, when None)."""
    model_id = model_id or chat_model.name
    defaults = defaults or DecodingConfig(max_new_tokens=min(128, chat_model.context_length // 2))
    runner = ModelRunner(chat_model)
    started = int(time.time())
    page = resources.files("chatforge.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
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
        logprobs = None
        if req.logprobs:
            async with runner.turn():
                logprobs = await run_in_threadpool(chat_logprobs, chat_model, messages, cfg, done.token_ids,
                                                   req.top_logprobs or 0)
        return {
            **head,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "logprobs": logprobs, "finish_reason": done.finish_reason}],
            "usage": usage(done),
        }

    add_completion_routes(app, runner, authorize=authorize, read_body=read_body, defaults=defaults, limits=limits,
                          model_id=model_id)
    return app
