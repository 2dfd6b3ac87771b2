"""Server-sent events as OpenAI streams a chat completion: a ``delta.role`` chunk, ``delta.content``
chunks, a chunk with the ``finish_reason`` (and ``usage`` when asked), then ``data: [DONE]``; and
the time limit that every request's items arrive within (``before``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from chatforge.inference.decoding import Completion
from chatforge.serve.errors import ApiError, internal_error

log = logging.getLogger(__name__)


class EventStream(StreamingResponse):
    """A StreamingResponse that closes its generator however the response ends. Starlette leaves
    a generator whose client went away to the garbage collector, and with it the model's place.
    (Under uvicorn, Starlette also watches for the client's disconnect while the stream waits.)"""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None):
        super().__init__(content)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self.on_close is not None:              # a generator closed before it started runs no finally
                self.on_close()


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def timeout_error(seconds: float) -> ApiError:
    return ApiError(504, f"The request took longer than this server's limit of {seconds:g} s (waiting included) "
                         "and was stopped; ask for fewer tokens or retry later.", code="timeout", type="server_error")


async def before(deadline: float, items: AsyncIterator) -> AsyncIterator:
    """The items of ``items`` until the ``time.monotonic()`` deadline; past it, TimeoutError, with
    ``items`` closed (which stops its generation and frees its place)."""
    async with contextlib.aclosing(items):
        while True:
            try:
                item = await asyncio.wait_for(anext(items), max(deadline - time.monotonic(), 0))
            except StopAsyncIteration:
                return
            yield item


async def stream_events(items: AsyncIterator[str | Completion], head: dict[str, Any], include_usage: bool,
                        deadline: float, timeout: float) -> AsyncIterator[str]:
    """The server-sent events of one streamed reply, as OpenAI sends them; ``items`` are its text
    deltas and then its Completion, arriving before the ``time.monotonic()`` deadline (the
    request's limit of ``timeout`` seconds, counted from its arrival)."""
    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    async with contextlib.aclosing(before(deadline, items)) as timed:
        try:
            async for item in timed:
                if isinstance(item, Completion):
                    yield chunk({}, item.finish_reason)
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(item)})
                else:
                    yield chunk({"content": item})
        except TimeoutError:                        # the 200 is out: report it the way OpenAI's stream does
            log.warning("%s stopped at the time limit of %g s", head["id"], timeout)
            yield sse(timeout_error(timeout).body())
            return
        except Exception:
            yield sse(internal_error(f"generation failed for {head['id']}").body())
            return
    yield sse("[DONE]")
