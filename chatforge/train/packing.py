"""Pretraining data: documents -> token ids -> fixed-length blocks, through cached ``datasets.map``.

Each document becomes ``<|endoftext|> + tokens`` (the separator opens every document, as in GPT-2
and nanochat, so the model learns where a document starts), the stream is concatenated and cut
into blocks of ``block_size`` tokens; a block may span several documents (standard GPT packing,
no padding, every position is trained). The few tokens left over at the end of each map batch
(< block_size per 1,000 documents) are dropped.

Both maps write Arrow cache files whose names carry a key of everything the result depends on
(the input file's bytes, the tokenizer's files, the block size), so a second run (or a resumed
one) loads the blocks instead of tokenizing again, and a changed input never hits a stale cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatforge.core.hashing import tree_digest
from chatforge.data.records import documents_by_split

log = logging.getLogger(__name__)

MAP_BATCH = 1000          # documents per map batch
CACHE_VERSION = "1"       # bump when the packing below changes meaning


def file_digest(paths: Iterable[Path], *extra: Any) -> str:
    """The cache key of ``paths`` and ``extra`` (versioned by ``CACHE_VERSION``)."""
    return tree_digest(paths, *extra, salt=CACHE_VERSION)


def pack_ids(docs: list[list[int]], block_size: int, bos_id: int) -> list[list[int]]:
    """``[[ids of doc], ...]`` -> blocks of exactly ``block_size`` ids, each doc preceded by ``bos_id``."""
    stream = [tok for ids in docs for tok in (bos_id, *ids)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i:i + block_size] for i in range(0, usable, block_size)]


def packed_blocks(texts: list[str], tokenizer, block_size: int, cache_dir: Path, key: str, *,
                  num_proc: int | None = None):
    """A ``datasets.Dataset`` with one column ``input_ids`` of ``block_size``-token blocks (cached).

    ``key`` names the cache files and stands in for datasets' own fingerprint (which would hash
    the tokenizer object on every call): the caller makes it from the input and tokenizer bytes.
    """
    from datasets import Dataset

    cache_dir.mkdir(parents=True, exist_ok=True)
    docs = Dataset.from_dict({"text": texts})
    tokens = docs.map(
        lambda batch: {"ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
        batched=True, batch_size=MAP_BATCH, remove_columns=["text"], num_proc=num_proc,
        cache_file_name=str(cache_dir / f"tokens-{key}.arrow"), new_fingerprint=f"tokens-{key}", desc="tokenize",
    )
    return tokens.map(
        lambda batch: {"input_ids": pack_ids(batch["ids"], block_size, tokenizer.bos_token_id)},
        batched=True, batch_size=MAP_BATCH, remove_columns=["ids"], num_proc=num_proc,
        cache_file_name=str(cache_dir / f"blocks-{key}.arrow"), new_fingerprint=f"blocks-{key}", desc="pack",
    )


def pretraining_datasets(input_path: Path, tokenizer, tokenizer_dir: Path, block_size: int, cache_dir: Path,
                         *, num_proc: int | None = None) -> dict[str, Any]:
    """``{"train": Dataset, "validation": Dataset}`` of packed blocks for the documents in ``input_path``."""
    splits = documents_by_split(input_path)
    out = {}
    for split, texts in splits.items():
        if not texts:
            raise ValueError(f"{input_path}: no '{split}' documents (pretraining needs both splits)")
        key = f"{split}-{file_digest([input_path, tokenizer_dir], block_size)}"
        out[split] = packed_blocks(texts, tokenizer, block_size, cache_dir, key, num_proc=num_proc)
        if len(out[split]) == 0:
            raise ValueError(f"{input_path}: the '{split}' documents give no full block of {block_size} tokens; "
                             "lower pretrain.block_size or add documents")
        log.info("pretrain data: %s: %d documents -> %d blocks of %d tokens", split, len(texts),
                 len(out[split]), block_size)
    return out
