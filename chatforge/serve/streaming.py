"""Server-sent events as OpenAI streams a chat completion: a ``delta.role`` chunk, ``delta.content``
chunks, a chunk with the ``finish_reason`` (and ``usage`` when asked), then ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from chatforge.inference.decoding import Completion, DecodingConfig
from chatforge.serve.errors import ApiError
from chatforge.serve.queue import ModelRunner

log = logging.getLogger(__name__)


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
