"""Bounded, seeded samples of documents streamed from a file or a shard directory.

Training a tokenizer needs a few hundred MB of text, not the corpus: ``sample_texts`` streams the
documents once and keeps those with the smallest seeded hash of their id whose characters fit the budget
(a bottom-k sample by hash, as in MinHash sketches), so memory is the budget plus one document, and the
sample is the same whatever the shard count or order of the input. The kept texts come back in input
order: when the whole split fits the budget, the sample is the split as it was read.
"""

from __future__ import annotations

import hashlib
import heapq
from pathlib import Path

from chatforge.core.files import iter_records


def _key(seed: int, record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:sample:{record_id}".encode()).digest()[:8], "big")


def sample_texts(path: Path, split: str, max_chars: int, seed: int) -> list[str]:
    """Texts of ``split`` documents in ``path`` (JSONL file or shards), at most ``max_chars`` characters in all
    (the last kept text may be the one that crosses it), chosen by a seeded hash of each document's id."""
    heap: list[tuple[int, int, str]] = []      # (-key, input position, text): the largest key on top
    chars = 0
    for n, rec in enumerate(iter_records(path)):
        text = rec.get("text")
        if not text or rec.get("split", "train") != split:
            continue
        key = _key(seed, str(rec.get("id", n)))
        if chars >= max_chars and heap and key > -heap[0][0]:
            continue                           # the budget is full of documents that hash lower
        heapq.heappush(heap, (-key, n, text))
        chars += len(text)
        while len(heap) > 1 and chars - len(heap[0][2]) >= max_chars:
            chars -= len(heapq.heappop(heap)[2])
    return [text for _, _, text in sorted(heap, key=lambda item: item[1])]
