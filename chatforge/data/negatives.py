"""Next-reply preference pairs: the ``rejected`` reply is a real reply drawn from another conversation.

prepare_data cuts pairs (prompt, chosen = the real next reply) from derived conversations as they stream
past. Their rejected replies are drawn once every source has been read, from a pool of the pairs' own
chosen replies per split: ``ReplyPool`` keeps that pool as a reservoir sample (Vitter's Algorithm R,
https://en.wikipedia.org/wiki/Reservoir_sampling) of at most ``capacity`` replies, so memory is bounded
by the capacity, not the corpus. While the pairs of a split fit the capacity (every profile in this repo:
the default makes 4,368 pairs), the pool is all of them in input order and the draws are exactly those
of the unbounded version. Past it, each pair's negative is drawn uniformly from a uniform sample of the
replies: the same distribution for a pair, only negatives repeat more often across pairs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any


class ReplyPool:
    """A seeded reservoir of (conversation id, reply) pairs."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 2:
            raise ValueError(f"a reply pool needs a capacity >= 2, got {capacity}")
        self.capacity, self.rng = capacity, rng
        self.items: list[tuple[str, str]] = []
        self.seen = 0

    def add(self, conversation: str, reply: str) -> None:
        if len(self.items) < self.capacity:
            self.items.append((conversation, reply))
        else:
            j = self.rng.randrange(self.seen + 1)
            if j < self.capacity:
                self.items[j] = (conversation, reply)
        self.seen += 1

    def conversations(self) -> int:
        return len({conv for conv, _ in self.items})


class ReplyDrawer:
    """Draws a pair's rejected reply from ``pool``, excluding the pair's own conversation and its own reply text.

    The draw is uniform over the pool less the excluded positions, the same draw as ``rng.choice`` of that
    filtered list, but found by skipping the excluded positions (indexed once) instead of filtering the pool
    per pair, which was quadratic in the number of pairs.
    """

    def __init__(self, pool: list[tuple[str, str]], rng: random.Random) -> None:
        self.pool, self.rng = pool, rng
        self.by_conv: dict[str, list[int]] = {}
        self.by_text: dict[str, list[int]] = {}
        for i, (conv, reply) in enumerate(pool):
            self.by_conv.setdefault(conv, []).append(i)
            self.by_text.setdefault(reply.strip(), []).append(i)

    def draw(self, conversation: str, chosen: str) -> str | None:
        """A reply for the pair, or None when the pool has no reply from another conversation."""
        excluded = sorted(set(self.by_conv.get(conversation, ())) | set(self.by_text.get(chosen.strip(), ())))
        n = len(self.pool) - len(excluded)
        if n <= 0:
            return None
        k = self.rng.randrange(n)           # == rng.choice(filtered)'s index draw (random.Random._randbelow)
        for e in excluded:                  # the k-th position not excluded
            if e <= k:
                k += 1
            else:
                break
        return self.pool[k][1]


def conversation_of(pair: dict[str, Any]) -> str:
    return pair["id"].split("#")[0]


def fill_rejected(pairs: Iterable[dict[str, Any]], pools: dict[str, ReplyPool], everything: ReplyPool,
                  seed: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """(pair, filled) for each pair in order, its ``rejected`` drawn from its split's pool (from ``everything``,
    both splits, when the split's pool holds fewer than 2 conversations). One seeded rng per split."""
    drawers: dict[str, ReplyDrawer] = {}
    for pair in pairs:
        split = pair["split"]
        if split not in drawers:
            pool = pools[split] if pools[split].conversations() >= 2 else everything
            drawers[split] = ReplyDrawer(pool.items, random.Random(f"{seed}:{split}"))
        reply = drawers[split].draw(conversation_of(pair), pair["chosen"])
        if reply is not None:
            pair["rejected"] = reply
        yield pair, reply is not None
