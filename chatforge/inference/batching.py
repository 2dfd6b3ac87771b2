"""Continuous batching: concurrent generations share each decode step.

A ``BatchEngine`` runs one worker thread that owns the model. A generation is submitted with its
prompt ids, its own ``DecodingConfig`` (sampling settings, seed, token budget) and a *sink* that
receives its tokens; it joins the running batch before the next step (the prompts that arrived
meanwhile are prefilled together) and leaves it when it ends (EOS, ``max_new_tokens``) or is
cancelled (a stop string, a client gone, a time limit). This is iteration-level scheduling as in
Orca (Yu et al., OSDI 2022) and the continuous batching of vLLM and TGI, written here because those
run on GPUs with their own model code, not over a transformers model or our exported ONNX graph.

Every row keeps its own KV cache entries inside one padded tensor per layer, (B, n_kv, P, Dh),
with its padding columns masked out. Positions are kept right in one of two ways:

- steps with ``explicit_positions`` (``TorchStep``) take each row's position ids, so rows are
  padded on the left freely, and columns that no row uses any more are cut when rows leave;
- steps that put new tokens at positions P, P+1, ... after their past (the exported ONNX graph)
  get every row's tokens right-aligned: a joining prompt is prefilled behind masked empty columns
  so that it ends where the others end, and a prompt longer than the batch's past (or a past
  grown far beyond its longest row) rebuilds the batch by prefilling every row again. Rotary
  position embeddings depend only on distances, so a row shifted as a whole attends the same.

A step without ``forward_batch`` (any plain ``Step``) runs one generation at a time. Greedy rows
pick the tokens ``sample_tokens`` picks; a sampled row draws from its own seeded generator exactly
as ``sample_tokens`` does (the same logits processors, the same calls).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatforge.inference.decoding import DecodingConfig, logits_processors

log = logging.getLogger(__name__)

# What a sink receives: each token id, then None at the end, or the exception that ended it.
Sink = Callable[[Any], None]


@dataclass(eq=False)
class Generation:
    """One generation in the engine; ``cancel()`` makes it leave the batch before the next step."""

    prompt: list[int]
    cfg: DecodingConfig
    sink: Sink
    tokens: list[int] = field(default_factory=list)     # prompt + sampled tokens (the last one not yet fed)
    cancelled: bool = False
    procs: Any = None
    generator: Any = None

    def cancel(self) -> None:
        self.cancelled = True                           # read by the engine thread before each step

    @property
    def produced(self) -> int:
        return len(self.tokens) - len(self.prompt)


class BatchEngine:
    """Generations from any number of threads, decoded together on one worker thread."""

    def __init__(self, step, eos_ids: set[int], max_batch: int = 16, pad_id: int = 0):
        if max_batch < 1:
            raise ValueError("'max_batch' must be at least 1")
        batched = hasattr(step, "forward_batch")
        self.max_batch = max_batch if batched else 1
        self.batch = PaddedBatch(step, pad_id) if batched else SingleBatch(step)
        self.eos_ids = set(eos_ids)
        self.steps = 0                                  # forward passes run: prefills and decode steps
        self._pending: deque[Generation] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Generations in the batch now."""
        return len(self.batch.rows)

    def submit(self, prompt_ids: list[int], cfg: DecodingConfig, sink: Sink) -> Generation:
        """Queue a generation; its tokens go to ``sink`` from the engine thread."""
        if cfg.num_beams > 1:
            raise ValueError("beam search runs on its own (beam_search); the batch takes num_beams=1")
        if not prompt_ids:
            raise ValueError("a generation needs at least one prompt token")
        gen = Generation(list(prompt_ids), cfg, sink, list(prompt_ids))
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._pending.append(gen)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chatforge-batch", daemon=True)
                self._thread.start()
            self._cond.notify()
        return gen

    def close(self) -> None:
        """Stop the worker; generations still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self.batch.rows:
                    self._cond.wait()
                if self._closed:
                    left = self.batch.rows + list(self._pending)
                    break
                room = self.max_batch - len(self.batch.rows)
                joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                self._iterate(joining)
            except Exception as err:                    # a failed step ends the generations in it, not the engine
                log.exception("batch step failed; %d generation(s) end with the error", len(self.batch.rows))
                for gen in {id(g): g for g in self.batch.rows + joining}.values():
                    gen.sink(err)
                self.batch.clear()
        for gen in left:
            gen.sink(RuntimeError("the server is shutting down"))

    def _iterate(self, joining: list[Generation]) -> None:
        self.batch.remove([g for g in self.batch.rows if g.cancelled])
        joining = [g for g in joining if not g.cancelled]
        if joining:
            for gen in joining:
                self._prepare(gen)
            self.steps += 1
            self._advance(joining, self.batch.join(joining))      # each prompt's first token
        if self.batch.rows:
            self.steps += 1
            self._advance(list(self.batch.rows), self.batch.decode())

    def _prepare(self, gen: Generation) -> None:
        import torch

        gen.procs = logits_processors(gen.cfg, len(gen.prompt))
        if gen.cfg.temperature > 0:
            gen.generator = torch.Generator()
            if gen.cfg.seed is None:
                gen.generator.seed()
            else:
                gen.generator.manual_seed(gen.cfg.seed)

    def _advance(self, gens: list[Generation], logits) -> None:
        """Pick each row's next token from its logits (R, V) and send it; rows that end leave."""
        import torch

        plain = logits.argmax(-1).tolist()             # greedy rows without penalties need nothing more
        done = []
        for gen, row, best in zip(gens, logits, plain):
            if gen.cancelled:
                done.append(gen)
                continue
            if gen.cfg.temperature == 0 and not gen.procs:
                token = best
            else:
                scores = gen.procs(torch.tensor([gen.tokens]), row[None])                   # (1, V)
                if gen.cfg.temperature == 0:
                    token = int(scores.argmax(-1))
                else:
                    token = int(torch.multinomial(scores.softmax(-1), 1, generator=gen.generator))
            gen.tokens.append(token)
            gen.sink(token)
            if token in self.eos_ids or gen.produced >= gen.cfg.max_new_tokens:
                done.append(gen)
        self.batch.remove(done)
        for gen in done:                               # out of the batch before its client hears the end
            if not gen.cancelled:
                gen.sink(None)


class PaddedBatch:
    """The rows of a batched step and their cache: per layer (B, n_kv, P, Dh), a (B, P) mask."""

    def __init__(self, step, pad_id: int):
        self.step, self.pad_id = step, pad_id
        self.explicit = bool(getattr(step, "explicit_positions", False))
        self.rows: list[Generation] = []
        self.kv: list[Any] = []
        self.mask = None                               # (B, P) 1 where the row has a token
        self.positions = None                          # (B,) each row's next position (explicit only)

    @property
    def past(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def clear(self) -> None:
        self.rows, self.kv, self.mask, self.positions = [], [], None, None

    def join(self, gens: list[Generation]):
        """Prefill the prompts of ``gens`` into the batch; their last logits (k, V)."""
        prompts = [g.tokens for g in gens]
        if self.explicit or not self.rows:
            logits, kv, mask = self._prefill(prompts)
        elif max(map(len, prompts)) <= self.past:
            logits, kv, mask = self._prefill(prompts, end=self.past)
        else:                                          # right-aligned rows cannot make room on the left
            old = len(self.rows)
            logits = self._rebuild(extra=prompts)[old:]
            self.rows += gens
            return logits
        self._append(gens, kv, mask)
        return logits

    def decode(self):
        """One step for every row, feeding its last token; the next logits (B, V)."""
        import torch

        ids = torch.tensor([[g.tokens[-1]] for g in self.rows])                     # (B, 1)
        mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)                  # (B, P+1)
        positions = self.positions[:, None] if self.explicit else None
        logits, self.kv = self.step.forward_batch(ids, mask, positions, self.kv)
        self.mask = mask
        if self.explicit:
            self.positions = self.positions + 1
        return logits[:, -1, :]

    def remove(self, gens: list[Generation]) -> None:
        if not gens:
            return
        gone = {id(g) for g in gens}
        keep = [i for i, g in enumerate(self.rows) if id(g) not in gone]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        import torch

        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.kv = [t.index_select(0, index) for t in self.kv]
        self.mask = self.mask.index_select(0, index)
        if self.explicit:
            self.positions = self.positions.index_select(0, index)
            first = int(self.mask.any(dim=0).nonzero()[0])   # columns before it are padding in every row
            if first:
                self.kv = [t[:, :, first:].contiguous() for t in self.kv]
                self.mask = self.mask[:, first:]
        elif self.past > 2 * max(len(g.tokens) for g in self.rows) + 16:
            self._rebuild()                            # the shared past has grown far beyond every row

    def _rebuild(self, extra: list[list[int]] = ()):
        """Prefill every row again (its fed tokens: all but the last) in a frame as long as the
        longest, with ``extra`` prompts after them; the logits of all of them (R, V)."""
        histories = [g.tokens[:-1] for g in self.rows] + list(extra)
        logits, self.kv, self.mask = self._prefill(histories)
        return logits

    def _prefill(self, seqs: list[list[int]], end: int | None = None):
        """``seqs`` left-padded to one width and run as one batch: (last logits (k, V), kv, mask).
        ``end`` > width: behind masked empty columns, so each sequence ends at column ``end``."""
        import torch

        width = max(map(len, seqs))
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs])               # (k, W)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()
        past = None
        if end is not None and end > width:
            k, heads, _, dim = self.kv[0].shape
            past = [torch.zeros(len(seqs), heads, end - width, dim, dtype=t.dtype) for t in self.kv]
            mask = torch.cat([torch.zeros(len(seqs), end - width, dtype=torch.long), mask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -width:] if self.explicit else None   # (k, W)
        logits, kv = self.step.forward_batch(ids, mask, positions, past)
        # A padding query sees no key at all; its (unused) outputs may be NaN, and NaN times a
        # zero attention weight is still NaN: clear the padding columns of the cache.
        hole = (mask == 0)[:, None, :, None]
        kv = [t.masked_fill(hole, 0) for t in kv]
        return logits[:, -1, :], kv, mask

    def _append(self, gens: list[Generation], kv: list[Any], mask) -> None:
        import torch

        lengths = torch.tensor([len(g.tokens) for g in gens])
        if not self.rows:
            self.rows, self.kv, self.mask = list(gens), kv, mask
            self.positions = lengths if self.explicit else None
            return

        def left_pad(t, width: int):                   # zeros before the first column, up to ``width``
            short = width - t.shape[-2 if t.dim() == 4 else -1]
            if not short:
                return t
            shape = (*t.shape[:2], short, t.shape[3]) if t.dim() == 4 else (t.shape[0], short)
            return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=2 if t.dim() == 4 else 1)

        width = max(self.past, int(mask.shape[1]))
        self.kv = [torch.cat([left_pad(a, width), left_pad(b, width)]) for a, b in zip(self.kv, kv)]
        self.mask = torch.cat([left_pad(self.mask, width), left_pad(mask, width)])
        self.rows += gens
        if self.explicit:
            self.positions = torch.cat([self.positions, lengths])


class SingleBatch:
    """One generation at a time through a plain ``Step`` (its cache is the step's own object)."""

    def __init__(self, step):
        self.step = step
        self.rows: list[Generation] = []
        self.past = None

    def clear(self) -> None:
        self.rows, self.past = [], None

    def join(self, gens: list[Generation]):
        import torch

        assert len(gens) == 1 and not self.rows, "a plain step decodes one generation at a time"
        ids = torch.tensor([gens[0].tokens])                                        # (1, T)
        logits, self.past = self.step(ids, torch.ones_like(ids), None)
        self.rows = list(gens)
        return logits[:, -1, :]

    def decode(self):
        import torch

        gen = self.rows[0]
        logits, self.past = self.step(torch.tensor([[gen.tokens[-1]]]), torch.ones(1, len(gen.tokens),
                                                                                  dtype=torch.long), self.past)
        return logits[:, -1, :]

    def remove(self, gens: list[Generation]) -> None:
        if any(g is r for g in gens for r in self.rows):
            self.clear()
