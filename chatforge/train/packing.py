"""Pretraining data: token shards (chatforge.data.shards) read as fixed-length blocks from memory maps.

The ``tokenize`` stage writes the shards once, on datatrove's executors; pretraining only maps them,
so no rank tokenises, none waits for another, and memory does not grow with the corpus. Each document
is ``<separator> + tokens`` (the separator opens every document, as in GPT-2 and nanochat, so the model
learns where a document starts); a shard is one token stream cut into blocks of ``block_size`` tokens,
so a block may span several documents (standard GPT packing, no padding, every position is trained).
The tokens after a shard's last full block (< block_size per shard) are left out.

``pretrain.input`` may also be a documents JSONL (a file or a shard directory), as before the tokenize
stage existed: it is then tokenised once in this process into ``cache_dir``, keyed by the input's and the
tokenizer's bytes (rank 0 does it while the others wait; the pipeline uses the tokenize stage instead).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatforge.core.files import InputError
from chatforge.core.hashing import tree_digest
from chatforge.data.records import SPLITS
from chatforge.data.shards import INDEX, TokenBlocks, is_token_corpus, read_index

log = logging.getLogger(__name__)

CACHE_VERSION = "2"       # bump when the packing below changes meaning


def file_digest(paths: Iterable[Path], *extra: Any) -> str:
    """The cache key of ``paths`` and ``extra`` (versioned by ``CACHE_VERSION``)."""
    return tree_digest(paths, *extra, salt=CACHE_VERSION)


def pack_ids(docs: list[list[int]], block_size: int, bos_id: int) -> list[list[int]]:
    """``[[ids of doc], ...]`` -> blocks of exactly ``block_size`` ids, each doc preceded by ``bos_id``
    (what ``TokenBlocks`` reads from one shard, for lists in memory)."""
    stream = [tok for ids in docs for tok in (bos_id, *ids)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i:i + block_size] for i in range(0, usable, block_size)]


def data_digest(input_path: Path) -> str:
    """What the data of a run is, for checkpoint fingerprints: a token corpus's index (which carries
    its input's and tokenizer's digests, so the shards are not re-read), else the documents' bytes."""
    return file_digest([input_path / INDEX]) if is_token_corpus(input_path) else file_digest([input_path])


def token_corpus(input_path: Path, tokenizer_dir: Path, cache_dir: Path) -> Path:
    """The token corpus for ``input_path``: itself when it is one (checked against the tokenizer), else
    the cached tokenisation of the documents there (made now when missing)."""
    if is_token_corpus(input_path):
        made_with = read_index(input_path).get("tokenizer_digest")
        if made_with != tree_digest([tokenizer_dir]):
            raise InputError(f"{input_path / INDEX}: the shards were made with another tokenizer than "
                             f"{tokenizer_dir}; re-run tokenize (dvc repro tokenize)")
        return input_path
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.tokenize import TokenizeConfig, tokenize_corpus

    corpus = cache_dir / f"tokens-{file_digest([input_path, tokenizer_dir])}"
    if not is_token_corpus(corpus):
        log.info("pretrain data: tokenising %s into %s (the tokenize stage does this ahead of time)", input_path,
                 corpus)
        cfg = TokenizeConfig(input=input_path, tokenizer=tokenizer_dir, output=corpus)
        tokenize_corpus(cfg, ExecutorConfig(tasks=1, workers=1, work_dir=cache_dir / "tokenize-work"))
    return corpus


def pretraining_blocks(corpus: Path, block_size: int) -> dict[str, TokenBlocks]:
    """``{"train": TokenBlocks, "validation": TokenBlocks}`` of a token corpus."""
    out = {}
    for split in SPLITS:
        out[split] = TokenBlocks(corpus, split, block_size)
        if len(out[split]) == 0:
            raise InputError(f"{corpus}: the '{split}' split gives no full block of {block_size} tokens in any "
                             "shard; lower pretrain.block_size, add documents or use fewer tokenize tasks")
        log.info("pretrain data: %s: %d blocks of %d tokens from %d shard(s), memory-mapped", split,
                 len(out[split]), block_size, len(out[split].shards))
    return out
