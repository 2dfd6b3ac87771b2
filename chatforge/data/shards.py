"""Token shards: a tokenised corpus as flat binary files that pretraining memory-maps.

Layout of one tokenised corpus (the ``tokenize`` stage's output, ``data/tokens/``)::

    index.json                 dtype, vocabulary, separator id, tokenizer digest, and per split the shards
    train/00000.bin            token ids, little-endian uint16 (vocabulary <= 65,536) or uint32, no header
    train/00000.docs.npy       int64 offset of each document's first token (its separator) in the .bin
    validation/00000.bin ...

Each document is ``<separator> + its tokens`` (the separator opens every document, as in GPT-2 and
nanochat), so a shard is one token stream and a block of ``block_size`` tokens may span documents.
The format is nanoGPT's ``train.bin`` (np.memmap of uint16) split in shards, plus an index; datatrove's
DocumentTokenizer writes a similar ``.ds``/``.ds.index`` pair but appends an end token and shuffles,
which our packing (a separator before each document, order kept) does not do.

``TokenBlocks`` reads blocks straight from the memory-mapped shards: nothing is loaded or copied up
front, a rank touches only the pages of the blocks its sampler hands it, and block ``i`` is the same
tokens on every rank and after a restart (the exact next batch of a resumed run is well defined).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.core.files import InputError, write_json

INDEX = "index.json"
FORMAT = "chatforge-token-shards/1"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the bytes of uint32), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenShardWriter:
    """Documents' ids appended to ``directory/<name>.bin`` with their start offsets (memory: one batch)."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, separator_id: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.bin"
        self.docs_path = directory / f"{name}.docs.npy"
        self.dtype, self.separator_id = dtype, separator_id
        self._fh = open(self.path, "wb")
        self._starts: list[int] = []
        self.tokens = 0

    def write(self, docs: list[list[int]]) -> None:
        """Append documents (lists of ids without the separator)."""
        stream = []
        for ids in docs:
            self._starts.append(self.tokens + len(stream))
            stream.append(self.separator_id)
            stream.extend(ids)
        self._fh.write(np.asarray(stream, dtype=self.dtype).tobytes())
        self.tokens += len(stream)

    @property
    def documents(self) -> int:
        return len(self._starts)

    def close(self) -> dict[str, Any]:
        self._fh.close()
        np.save(self.docs_path, np.asarray(self._starts, dtype=np.int64))
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents}


def write_index(directory: Path, shards: dict[str, list[dict[str, Any]]], **meta: Any) -> dict[str, Any]:
    """``index.json`` of a token corpus: ``meta`` (dtype, vocab_size, separator_id, ...) and per split its
    shards in order with their token and document counts and the totals."""
    index = {"format": FORMAT, **meta, "splits": {
        split: {"tokens": sum(s["tokens"] for s in items), "documents": sum(s["documents"] for s in items),
                "shards": items} for split, items in shards.items()}}
    write_json(directory / INDEX, index)
    return index


def read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX
    if not path.is_file():
        raise InputError(f"{directory}: not a token corpus (no {INDEX}); run the tokenize stage "
                         "(dvc repro tokenize) or point the input at its output")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise InputError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}; re-run tokenize")
    return index


def is_token_corpus(path: Path) -> bool:
    return (path / INDEX).is_file()


@dataclass(frozen=True)
class _Shard:
    path: Path
    tokens: int
    blocks: int


class TokenBlocks:
    """Fixed-length blocks of one split, read from memory-mapped shards (a map-style torch dataset).

    Each shard gives ``tokens // block_size`` blocks (the remainder, < one block per shard, is left
    out); block ``i`` is found by a binary search over the shards' cumulative block counts. The memory
    maps open lazily in each process (DataLoader workers included), so the object pickles small.
    """

    def __init__(self, directory: Path, split: str, block_size: int) -> None:
        index = read_index(directory)
        if split not in index["splits"]:
            raise InputError(f"{directory / INDEX}: no '{split}' split (has {sorted(index['splits'])})")
        self.directory, self.split, self.block_size = directory, split, block_size
        self.dtype = np.dtype(index["dtype"])
        self.vocab_size = int(index["vocab_size"])
        self.shards = [_Shard(directory / split / s["file"], int(s["tokens"]), int(s["tokens"]) // block_size)
                       for s in index["splits"][split]["shards"]]
        for shard in self.shards:
            size = shard.path.stat().st_size if shard.path.exists() else -1
            if size != shard.tokens * self.dtype.itemsize:
                raise InputError(f"{shard.path}: {size} bytes, the index says {shard.tokens} {self.dtype} tokens; "
                                 "the corpus is incomplete or changed: re-run tokenize")
        self._ends = np.cumsum([s.blocks for s in self.shards], dtype=np.int64)     # (shards,)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.memmap(self.shards[k].path, dtype=self.dtype, mode="r")
        return self._maps[k]

    def block(self, i: int) -> np.ndarray:
        """Block ``i`` as int64 ids, shape (block_size,)."""
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range (0..{len(self) - 1})")
        k = int(np.searchsorted(self._ends, i, side="right"))
        j = i - (int(self._ends[k - 1]) if k else 0)
        return self._map(k)[j * self.block_size:(j + 1) * self.block_size].astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"input_ids": self.block(int(i))}

    def blocks(self, n: int) -> np.ndarray:
        """The first ``n`` blocks, shape (n, block_size)."""
        return np.stack([self.block(i) for i in range(n)]) if n else np.zeros((0, self.block_size), np.int64)

    def token_chunks(self, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
        """Every token of the split in chunks (for counts over the corpus without holding it)."""
        for k in range(len(self.shards)):
            if not self.shards[k].tokens:           # a task with no document of this split: nothing to map
                continue
            mm = self._map(k)
            for start in range(0, len(mm), chunk):
                yield np.asarray(mm[start:start + chunk])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}
