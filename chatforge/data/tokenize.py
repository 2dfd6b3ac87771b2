"""Tokenising for pretraining as its own step: documents -> token shards, on datatrove's executors.

One datatrove pipeline of two blocks, run by the same executors as clean_data (executor.py: local
worker processes, Slurm or Ray, by params)::

    DocumentRanges   (tasks)  task r reads its contiguous part of the documents (byte ranges of plain
                              JSONL, or a run of whole .jsonl.gz shards), in input order
    TokenShards      (tasks)  batches of documents -> the tokenizer -> <split>/<rank>.bin + .docs.npy

Each task writes its own shard per split, so memory is one batch of documents per worker and the
corpus never passes through one process; the driver then writes ``index.json`` from the shards'
sizes (shards.py has the format). Task order is input order, so the token stream is the same for
any task count except where it is cut into shards.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from chatforge.core.config import field_help
from chatforge.core.files import InputError, atomic_dir, iter_records, jsonl_files
from chatforge.core.hashing import tree_digest
from chatforge.data.cleaning.executor import ExecutorConfig, build_chain, run_chain
from chatforge.data.records import SPLITS
from chatforge.data.shards import TokenShardWriter, token_dtype, write_index

log = logging.getLogger(__name__)
WORKER_PRELOAD = ["chatforge.data.tokenize", "transformers"]     # forkserver imports, once (see executor.py)


@dataclass(frozen=True)
class TokenizeConfig:
    """The ``tokenize:`` params section."""

    input: Path = field_help(Path("data/clean/documents.jsonl"), "documents with a split field: a JSONL file "
                                                                 "or a directory of .jsonl/.jsonl.gz shards")
    tokenizer: Path = field_help(Path("models/tokenizer"), "the tokenizer directory (train_tokenizer's output)")
    output: Path = field_help(Path("data/tokens"), "token shards per split and index.json")
    report: Path = field_help(Path("reports/tokenize.json"), "documents, tokens and shards per split, throughput")
    batch_size: int = field_help(1000, "documents per tokenizer call (a worker's memory is about one batch)")
    executor: ExecutorConfig = field_help(ExecutorConfig(work_dir=Path("data/cache/tokenize")),
                                          "where the tasks run: local processes, Slurm or Ray; tasks = shards "
                                          "per split")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("'batch_size' must be >= 1")


def separator_id(tokenizer) -> int:
    """The id that opens every document: the tokenizer's BOS, else its EOS (GPT-2 style ``<|endoftext|>``)."""
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise InputError(f"tokenizer {tokenizer.name_or_path}: has neither a BOS nor an EOS token to separate "
                         "documents")
    return int(sep)


class DocumentRanges(PipelineStep):
    """``{"id", "text", "split"}`` records of a JSONL file or shard directory; task ``rank`` reads its part.

    Plain files split by byte ranges of their concatenation (a line belongs to the range its first byte
    is in), so one big file spreads over every task; compressed shards cannot be entered mid-way, so
    each task reads a contiguous run of whole shards. Either way task order is input order.
    """

    name = "📖 document ranges"
    type = "📖 - READER"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = jsonl_files(self.path)
        if any(f.suffix == ".gz" for f in files):
            mine = files[len(files) * rank // world_size:len(files) * (rank + 1) // world_size]
            records = (rec for f in mine for rec in iter_records(f))
        else:
            records = self._byte_range(files, rank, world_size)
        for rec in records:
            self.stat_update("documents")
            yield Document(text=rec.get("text") or "", id=str(rec.get("id", "")),
                           metadata={"split": rec.get("split", "train")})

    @staticmethod
    def _byte_range(files: list[Path], rank: int, world_size: int) -> Iterator[dict[str, Any]]:
        import json

        sizes = [f.stat().st_size for f in files]
        start, end = sum(sizes) * rank // world_size, sum(sizes) * (rank + 1) // world_size
        base = 0
        for path, size in zip(files, sizes):
            lo, hi = max(start - base, 0), min(end - base, size)
            base += size
            if lo >= hi:
                continue
            with open(path, "rb") as fh:
                if lo:
                    fh.seek(lo - 1)
                    fh.readline()                    # the line that started in the range before
                while fh.tell() < hi and (raw := fh.readline()):
                    if raw.strip():
                        try:
                            yield json.loads(raw)
                        except ValueError as err:
                            raise InputError(f"{path}: a line at byte {fh.tell() - len(raw)} is not JSON "
                                             f"({err}); the file was not written by clean_data?") from err


class TokenShards(PipelineStep):
    """Documents -> ids (the tokenizer, ``batch_size`` at a time) -> this task's shard of each split."""

    name = "🔢 token shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_dir: Path, output: Path, batch_size: int) -> None:
        super().__init__()
        self.tokenizer_dir, self.output, self.batch_size = Path(tokenizer_dir), Path(output), batch_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        dtype, sep = token_dtype(len(tokenizer)), separator_id(tokenizer)
        writers = {s: TokenShardWriter(self.output / s, f"{rank:05d}", dtype, sep) for s in SPLITS}
        pending: dict[str, list[str]] = {s: [] for s in SPLITS}

        def flush(split: str) -> None:
            with self.track_time(unit="batch"):
                ids = tokenizer(pending[split], add_special_tokens=False)["input_ids"]
                writers[split].write(ids)
            self.stat_update(f"tokens_{split}", value=sum(len(i) + 1 for i in ids))
            pending[split].clear()

        for doc in data or ():
            split = doc.metadata.get("split")
            if split not in writers:
                raise InputError(f"{doc.id}: split {split!r}, expected one of {SPLITS}")
            if not doc.text:
                self.stat_update("empty_skipped")
                continue
            pending[split].append(doc.text)
            if len(pending[split]) >= self.batch_size:
                flush(split)
        for split in SPLITS:
            if pending[split]:
                flush(split)
            writers[split].close()
        return iter(())


def shard_entries(directory: Path, dtype: np.dtype) -> list[dict[str, Any]]:
    """index.json entries of the shards in ``directory`` (by name), counted from the files themselves."""
    out = []
    for path in sorted(directory.glob("*.bin")):
        starts = np.load(path.with_name(path.name[:-4] + ".docs.npy"), mmap_mode="r")
        out.append({"file": path.name, "tokens": path.stat().st_size // dtype.itemsize, "documents": len(starts)})
    return out


def tokenize_corpus(cfg: TokenizeConfig, executor: ExecutorConfig | None = None) -> dict[str, Any]:
    """Tokenise ``cfg.input`` into ``cfg.output`` (atomically: a killed run leaves the old corpus or none)
    on ``executor`` (default ``cfg.executor``); returns the report."""
    from transformers import AutoTokenizer

    executor = executor or cfg.executor
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.tokenizer))
    dtype, sep = token_dtype(len(tokenizer)), separator_id(tokenizer)
    inputs = jsonl_files(cfg.input)                   # fail here, naming the path, not inside a worker
    work = executor.work_dir.resolve()
    if not executor.resume:
        shutil.rmtree(work, ignore_errors=True)
    shards = work / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = [DocumentRanges(cfg.input.resolve()), TokenShards(cfg.tokenizer.resolve(), shards, cfg.batch_size)]
    chain = build_chain([("tokenize", steps, executor.tasks)], executor, work / "logs")
    log.info("tokenize: %d input file(s) -> %d tasks on %s (%s workers), %s tokens", len(inputs), executor.tasks,
             executor.kind, executor.workers, dtype.name)
    run_chain(chain, executor, preload=WORKER_PRELOAD)
    seconds = time.perf_counter() - t0
    with atomic_dir(cfg.output) as tmp:
        for split in SPLITS:
            if (shards / split).exists():
                os.replace(shards / split, tmp / split)
            else:                               # no task ran (an input with no documents at all)
                (tmp / split).mkdir()
        index = write_index(tmp, {s: shard_entries(tmp / s, dtype) for s in SPLITS}, dtype=dtype.name,
                            vocab_size=len(tokenizer), separator_id=sep, input_digest=tree_digest(inputs),
                            tokenizer_digest=tree_digest([cfg.tokenizer]))
    if not executor.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(s["tokens"] for s in index["splits"].values())
    for split, s in index["splits"].items():
        log.info("tokenize: %s: %d documents, %d tokens in %d shard(s)", split, s["documents"], s["tokens"],
                 len(s["shards"]))
    return {"dtype": dtype.name, "vocab_size": len(tokenizer), "seconds": round(seconds, 2),
            "tokens_per_second": round(total / max(seconds, 1e-9), 1), "tasks": executor.tasks,
            **{split: {k: s[k] for k in ("documents", "tokens")} | {"shards": len(s["shards"])}
               for split, s in index["splits"].items()}}
