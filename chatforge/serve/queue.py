"""One model, one generation at a time: an asyncio lock orders the requests (FIFO), and every
token step runs in a worker thread, so the event loop keeps answering while a reply is generated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from chatforge.inference.decoding import ChatModel, Completion, DecodingConfig


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
