"""What every route of the server shares: the model and its runner, the key, the limits and the
decoding defaults, and the request handling that each route needs (the key, a JSON body within
its limits, and work that stops when the client goes away or the time limit passes).

A route module gets a ``ServerContext`` and registers its routes on the app (see
``chatforge.serve.app.add_chat_routes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from chatforge.inference.decoding import ChatModel, DecodingConfig
from chatforge.serve.errors import ApiError
from chatforge.serve.guard import check_json_content_type
from chatforge.serve.queue import ModelRunner
from chatforge.serve.schema import ServerLimits
from chatforge.serve.streaming import timeout_error

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the reply was ready."""


@dataclass
class ServerContext:
    chat_model: ChatModel
    runner: ModelRunner
    limits: ServerLimits
    defaults: DecodingConfig
    model_id: str
    api_key: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    def key_given(self, request: Request) -> bool:
        """A key is set and the request carries it."""
        if self.api_key is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.api_key.encode())

    def authorize(self, request: Request) -> None:
        if self.api_key is None or self.key_given(request):
            return
        if not request.headers.get("authorization", "").partition(" ")[2]:
            raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key",
                           type="authentication_error")
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", type="authentication_error")

    async def read_json_body(self, request: Request) -> bytes:
        """The body of a JSON POST: Content-Type application/json, at most ``max_request_bytes``
        (by Content-Length and by the bytes actually read)."""
        check_json_content_type(request.headers.get("content-type"))
        limit = self.limits.max_request_bytes
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

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "chatforge"}

    async def unless_gone(self, request: Request, work: Awaitable[T], deadline: float) -> T:
        """``work``'s result; cancelled (which stops its generation and frees its place) when the
        client disconnects (ClientGone) or at the ``time.monotonic()`` deadline (ApiError 504)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watch}, timeout=max(deadline - time.monotonic(), 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task                         # its place is left before the reply goes out
        if task in done:
            return task.result()
        if watch in done:
            raise ClientGone()
        raise timeout_error(self.limits.request_timeout)


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone. Once the body has been read, the server's next message
    on this request is the disconnect (uvicorn sends it when the connection closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
