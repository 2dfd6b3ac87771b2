"""JSONL records <-> datatrove Documents for the cleaning pipeline: the readers, the writers, the carried state.

A record ``{"id", "text", ...}`` becomes ``Document(text, id, metadata={...its other fields..., STATE: {...}})``
(datatrove's convention: the other fields live in the metadata). ``STATE`` is the pipeline's own and never
reaches an output:

    raw     the text as read, so a rejected record is written as it came in (nothing is lost)
    fields  the names of the record's own fields, written back on output
    offset  the record's byte offset in the input: the sort key that keeps the rejects in input order
    shard   the task that read it: exact dedup keeps the copy of the lowest shard (dedup.py)
    kind    "web" or "text", the filter set that applies (set by HtmlToText)

``JsonlRangeReader`` splits the *concatenation* of its input files into ``world_size`` contiguous byte
ranges, one per task (a line belongs to the range its first byte is in). So one big file still spreads over
every task, and task order is input order, which makes "which copy of a duplicate survives" independent of
the task count. datatrove's JsonlReader shards by whole files and skips a line that does not parse with a
warning; ours raises, naming the file and line (our own stage wrote it: a bad line is a bug upstream).
The later pipelines read each task's shard back with ``ShardReader``; the writers are datatrove's JsonlWriter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers import JsonlWriter

from chatforge.core.files import InputError
from chatforge.data.records import content_id

STATE = "_clean"


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset`` (only computed for error messages)."""
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


class JsonlRangeReader(BaseReader):
    """Documents from plain (uncompressed, seekable) JSONL files, one contiguous byte range per task."""

    name = "📖 JSONL byte ranges"

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sizes = [os.path.getsize(p) for p in self.paths]
        total = sum(sizes)
        start, end = total * rank // world_size, total * (rank + 1) // world_size
        base = 0
        for path, size in zip(self.paths, sizes):
            lo, hi = max(start - base, 0), min(end - base, size)
            if lo < hi:
                yield from self._read_range(path, lo, hi, base, rank)
            base += size

    def _read_range(self, path: str, lo: int, hi: int, base: int, rank: int) -> DocumentsPipeline:
        with open(path, "rb") as fh:
            if lo:
                fh.seek(lo - 1)
                fh.readline()                    # skip the line that started in the previous range
            while (pos := fh.tell()) < hi:
                raw = fh.readline()
                if not raw:
                    break
                if not raw.strip():
                    continue
                with self.track_time():
                    doc = self._document(raw, path, pos, base + pos, rank)
                self.stat_update("documents")
                self.stat_update("text_bytes", value=len(doc.text.encode("utf-8")))
                yield doc

    @staticmethod
    def _document(raw: bytes, path: str, pos: int, offset: int, rank: int) -> Document:
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path}:{_line_number(path, pos)}: not a JSON line ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{_line_number(path, pos)}: expected a document {{\"id\", \"text\"}}")
        text = record["text"]
        fields = {k: v for k, v in record.items() if k not in ("id", "text")}
        doc_id = str(record["id"]) if record.get("id") is not None else content_id("doc", text)
        state = {"raw": text, "fields": list(fields), "offset": offset, "shard": rank, "kind": "text"}
        return Document(text=text, id=doc_id, metadata={**fields, STATE: state})


class ShardReader(JsonlReader):
    """Reads back exactly what task ``rank`` of an earlier pipeline wrote to ``folder`` (nothing if it wrote
    nothing), so the signature and filter steps of a dedup see the same documents in the same order."""

    name = "📖 shard of an earlier pipeline"

    def __init__(self, folder: Path):
        super().__init__(str(folder), add_file_path=False)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = shard_name(rank)
        if self.data_folder.exists(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


def shard_name(rank: int) -> str:
    return f"{rank:05d}.jsonl.gz"


def shard_writer(folder: Path) -> JsonlWriter:
    """datatrove's JsonlWriter, one gzipped file per task, named as ShardReader expects."""
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz")


class RejectsWriter(JsonlWriter):
    """Exclusion writer: each dropped document as it was read, its offset and the reason that dropped it
    (datatrove's ``filter_reason`` when the filter gave one, else this writer's ``reason``)."""

    name = "🗑 rejects"

    def __init__(self, folder: Path, step: str, reason: str = ""):
        super().__init__(str(folder), output_filename=f"{step}/${{rank}}.jsonl.gz")
        self.reason = reason

    def _default_adapter(self, document: Document) -> dict:
        state = document.metadata[STATE]
        return {"reason": document.metadata.get("filter_reason") or self.reason, "offset": state["offset"],
                "record": original_record(document)}


def original_record(doc: Document) -> dict[str, Any]:
    state = doc.metadata[STATE]
    return {"id": doc.id, "text": state["raw"], **{k: doc.metadata[k] for k in state["fields"]}}


def output_record(doc: Document) -> dict[str, Any]:
    """The cleaned record: its own fields, the cleaned text and the language."""
    state = doc.metadata[STATE]
    return {"id": doc.id, "text": doc.text, **{k: doc.metadata[k] for k in state["fields"]},
            "lang": doc.metadata["lang"]}
