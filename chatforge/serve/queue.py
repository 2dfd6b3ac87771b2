"""Who generates when: up to ``max_batch`` requests decode together through a ``BatchEngine``
(continuous batching: each joins at the next step and leaves when done); up to ``max_waiting``
more wait in arrival order (FIFO); one more is refused with 429 and a ``Retry-After``.

A request takes its place synchronously (``enter``), before any reply has gone out, so a streamed
request can still get its 429. Leaving a place, whether finished, cancelled by a client that went
away or stopped by the time limit, hands it to the next waiting request; a cancelled generation
leaves the batch before the next step. Beam search keeps a place too but runs on its own, in a
worker thread that stops at its next step when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from chatforge.inference.batching import BatchEngine
from chatforge.inference.decoding import ChatModel, Completion, DecodingConfig, ReplyBuilder
from chatforge.serve.errors import ApiError

log = logging.getLogger(__name__)


class Place:
    """A request's place: a slot in the batch, or a place in the wait queue until one frees up."""

    def __init__(self, runner: ModelRunner, future: asyncio.Future | None):
        self.runner, self.future, self.left = runner, future, False

    async def ready(self) -> None:
        if self.future is not None:
            await self.future                          # set by the request that frees its slot

    def leave(self) -> None:
        if self.left:
            return
        self.left = True
        if self.future is not None and not self.future.done():
            self.runner.waiters.remove(self.future)     # left while waiting
            self.future.cancel()
        else:
            self.runner.release()


class ModelRunner:
    """One model's generations, batched, with a bounded FIFO of waiting requests."""

    def __init__(self, chat_model: ChatModel, max_batch: int = 16, max_waiting: int = 64):
        self.chat_model = chat_model
        self.engine = BatchEngine(chat_model.step, chat_model.eos_ids, max_batch,
                                  pad_id=chat_model.tokenizer.pad_token_id or 0)
        self.slots = self.engine.max_batch              # 1 for a step that cannot batch
        self.max_waiting = max_waiting
        self.running = 0                                # places holding a slot
        self.waiters: deque[asyncio.Future] = deque()
        self.seconds_per_request = 1.0                  # running mean, for Retry-After

    @property
    def busy(self) -> bool:
        return self.running > 0

    @property
    def waiting(self) -> int:
        return len(self.waiters)

    def enter(self) -> Place:
        """A place now, or ApiError 429 when every slot is taken and the wait queue is full."""
        if self.running < self.slots and not self.waiters:
            self.running += 1
            return Place(self, None)
        if len(self.waiters) >= self.max_waiting:
            # Freeing as many places as are waiting takes about this long at the recent pace.
            retry = max(1, math.ceil(self.seconds_per_request * (len(self.waiters) + 1) / self.slots))
            raise ApiError(429, f"The server is busy: {self.running} requests generating and {len(self.waiters)} "
                                f"waiting (its limit). Retry in about {retry} s.", code="server_busy",
                           type="rate_limit_error", headers={"Retry-After": str(retry)})
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        return Place(self, future)

    def release(self) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)                 # the slot passes to the longest-waiting request
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def place(self, place: Place | None = None) -> AsyncIterator[None]:
        """Hold ``place`` (or a new one) until the block ends, waiting for a slot first."""
        place = place or self.enter()
        started = time.monotonic()
        try:
            await place.ready()
            yield
        finally:
            place.leave()
            self.seconds_per_request += 0.2 * (time.monotonic() - started - self.seconds_per_request)

    async def stream(self, messages: list[dict[str, str]], cfg: DecodingConfig,
                     place: Place | None = None) -> AsyncIterator[str | Completion]:
        """Text deltas, then the Completion. Closing it (or cancelling its task) stops the
        generation before the next step and frees the place."""
        async with self.place(place):
            if cfg.num_beams > 1:
                done = await self._beam_search(messages, cfg)
                if done.text:
                    yield done.text
                yield done
                return
            ids, dropped = await run_in_threadpool(self.chat_model.prompt_ids, messages, cfg.max_new_tokens)
            reply = ReplyBuilder(self.chat_model.tokenizer, cfg, self.chat_model.eos_ids, len(ids), dropped)
            loop, tokens = asyncio.get_running_loop(), asyncio.Queue()

            def sink(item) -> None:                     # called on the engine's thread
                with contextlib.suppress(RuntimeError):   # the loop has closed: nobody is listening
                    loop.call_soon_threadsafe(tokens.put_nowait, item)

            generation = self.engine.submit(ids, cfg, sink)
            try:
                while (item := await tokens.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    delta = reply.push(item)
                    if delta:
                        yield delta
                    if reply.stopped:
                        break
            finally:
                generation.cancel()                     # a no-op once it has ended
            rest, done = reply.finish()
            if rest:
                yield rest
            yield done

    async def complete(self, messages: list[dict[str, str]], cfg: DecodingConfig,
                       place: Place | None = None) -> Completion:
        async with contextlib.aclosing(self.stream(messages, cfg, place)) as items:
            async for item in items:
                if isinstance(item, Completion):
                    return item
        raise RuntimeError("the generation ended without a reply")

    async def _beam_search(self, messages: list[dict[str, str]], cfg: DecodingConfig) -> Completion:
        # asyncio's executor, not starlette's run_in_threadpool: anyio holds a cancellation back
        # until the thread returns, and the search would run to its end for a client long gone.
        cancel = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.chat_model.complete, messages, cfg,
                                                                    cancel)
        finally:
            cancel.set()                                # stops the search at its next step if cancelled

    def close(self) -> None:
        self.engine.close()
