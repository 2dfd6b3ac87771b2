"""JSONL reading with line-numbered errors, and atomic writes.

Reading never drops a line silently: ``iter_jsonl`` yields either a parsed record or a
``Rejected`` naming the file, the line and the reason, and the caller sends the latter to the
rejects file. Writers go to a temporary path in the same directory and are renamed into place
on success, so a killed stage leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
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


def iter_jsonl(path: Path, max_line_bytes: int = 64 << 20,
               allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Yield ``(line_number, record_or_Rejected)`` for every non-blank line of ``path``.

    Lines that are not UTF-8, not JSON, or not a JSON object come back as ``Rejected``.
    Raises InputError when the file is missing, or has no records and ``allow_empty`` is off. ``.gz`` files are
    decompressed on the fly.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .jsonl file")
    seen = 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                seen += 1
                yield lineno, _parse_line(path, lineno, raw, max_line_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise InputError(f"{path}: not a readable gzip file ({err})") from err
    if seen == 0 and not allow_empty:
        raise InputError(f"{path}: file is empty (no records)")


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a file that our own stages wrote; any bad line is an error naming it."""
    records = []
    for lineno, item in iter_jsonl(path, allow_empty=True):
        if isinstance(item, Rejected):
            raise InputError(f"{path}:{lineno}: {item.reason}")
        records.append(item)
    return records


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
