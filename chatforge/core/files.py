"""JSONL reading with line-numbered errors, shard-aware, and atomic writes.

A JSONL input is either one ``.jsonl``/``.jsonl.gz`` file or a directory of shards
(``00000.jsonl.gz``, ``00001.jsonl.gz`` ...) read in name order, so a path in params.yaml can point at
either and a corpus never has to fit in one file. ``ShardWriter`` writes such a directory with a bounded
number of records per shard. Reading never drops a line silently: ``iter_jsonl`` yields either a parsed record or a
``Rejected`` naming the file, the line and the reason, and the caller sends the latter to the
rejects file. Writers go to a temporary path in the same directory and are renamed into place
on success, so a killed stage leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class InputError(ValueError):
    """Input that cannot be read at all (missing path, empty file, not a JSONL file)."""


@dataclass(frozen=True)
class Rejected:
    """A record that did not make it, with where it came from and why."""

    source: str
    line: int
    reason: str
    record: Any = None        # the parsed record, or the raw line text when it did not parse

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "record": self.record}


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def jsonl_files(path: Path) -> list[Path]:
    """``[path]`` for a file; for a directory its shards (``*.jsonl``/``*.jsonl.gz``, not hidden), by name."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_dir():
        return [path]
    shards = sorted(p for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.name.endswith(JSONL_SUFFIXES))
    if not shards:
        raise InputError(f"{path}: directory has no .jsonl or .jsonl.gz shards")
    return shards


def iter_jsonl(path: Path, max_line_bytes: int = 64 << 20,
               allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Yield ``(line_number, record_or_Rejected)`` for every non-blank line of ``path`` (a file or a
    directory of shards; line numbers count within each shard and a ``Rejected`` names its shard).

    Lines that are not UTF-8, not JSON, or not a JSON object come back as ``Rejected``.
    Raises InputError when the path is missing, or has no records and ``allow_empty`` is off. ``.gz`` files
    are decompressed on the fly.
    """
    seen = 0
    for file in jsonl_files(path):
        for lineno, item in _iter_file(file, max_line_bytes):
            seen += 1
            yield lineno, item
    if seen == 0 and not allow_empty:
        raise InputError(f"{path}: {'shards are' if path.is_dir() else 'file is'} empty (no records)")


def _iter_file(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                yield lineno, _parse_line(path, lineno, raw, max_line_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise InputError(f"{path}: not a readable gzip file ({err})") from err


def _parse_line(path: Path, lineno: int, raw: bytes, max_line_bytes: int) -> dict[str, Any] | Rejected:
    if len(raw) > max_line_bytes:
        return Rejected(str(path), lineno, f"line longer than {max_line_bytes} bytes", raw[:200].decode("utf-8", "replace"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejected(str(path), lineno, f"not UTF-8 ({err.reason} at byte {err.start})",
                        raw[:200].decode("utf-8", "replace"))
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return Rejected(str(path), lineno, f"invalid JSON: {err.msg} at column {err.colno}", text[:200])
    if not isinstance(record, dict):
        return Rejected(str(path), lineno, f"expected a JSON object, got {type(record).__name__}", record)
    return record


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a file or shard directory that our own stages wrote, one at a time (memory bounded
    by a record); any bad line is an error naming its shard and line."""
    for lineno, item in iter_jsonl(path, allow_empty=True):
        if isinstance(item, Rejected):
            raise InputError(f"{item.source}:{lineno}: {item.reason}")
        yield item


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a file or shard directory that our own stages wrote; any bad line is an error naming it."""
    return list(iter_records(path))


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """Write records (dicts or Rejected) one per line, atomically; returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            if isinstance(rec, Rejected):
                rec = rec.to_json()
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


class ShardWriter:
    """Records into ``directory/00000.jsonl.gz``, ``00001.jsonl.gz`` ..., at most ``records_per_shard`` each.

    Memory is one record: each line goes straight to the open gzip stream. Write into a directory from
    ``atomic_dir`` so that a killed stage leaves no half set of shards. ``close`` returns the shard paths;
    an empty input still gets one (empty) shard so that readers find the directory.
    """

    def __init__(self, directory: Path, records_per_shard: int = 100_000, compresslevel: int = 6) -> None:
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.directory, self.records_per_shard, self.compresslevel = directory, records_per_shard, compresslevel
        self.shards: list[Path] = []
        self.count = 0
        self._fh: IO[Any] | None = None
        self._in_shard = 0
        directory.mkdir(parents=True, exist_ok=True)

    def _next_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        path = self.directory / f"{len(self.shards):05d}.jsonl.gz"
        self.shards.append(path)
        # mtime=0: the same records give the same bytes, so DVC sees an unchanged output as unchanged
        self._fh = gzip.GzipFile(path, "wb", compresslevel=self.compresslevel, mtime=0)
        self._in_shard = 0

    def write(self, record: Any) -> None:
        if self._fh is None or self._in_shard >= self.records_per_shard:
            self._next_shard()
        if isinstance(record, Rejected):
            record = record.to_json()
        self._fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._in_shard += 1
        self.count += 1

    def close(self) -> list[Path]:
        if self._fh is None:
            self._next_shard()
        self._fh.close()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shards(directory: Path, records: Iterable[Any], records_per_shard: int = 100_000) -> int:
    """Write ``records`` as a shard directory, atomically (the old directory stays until the new one is
    complete); returns the count."""
    with atomic_dir(directory) as tmp, ShardWriter(tmp, records_per_shard) as writer:
        for rec in records:
            writer.write(rec)
    return writer.count


def final_path(path: Path) -> Path:
    """The path that a directory written inside ``atomic_dir`` will have once it lands (``path`` itself
    for any other path): what a model directory should record about where its own files live."""
    path = Path(path)
    if match := re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name):
        return path.with_name(match.group(1))
    return path


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` whole.

    Model directories are written this way so that a killed stage never leaves a model
    directory with weights but no config (or the other way round).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
