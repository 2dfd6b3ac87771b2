"""Content hashes of files and directories: the one place that reads bytes to fingerprint them.

Used for cache keys (packed pretraining data), checkpoint fingerprints and the sha256 of exported
files. Files are read in 1 MiB blocks, so a large file never sits in memory whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def _update_from_file(digest, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """The hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    _update_from_file(digest, path)
    return digest.hexdigest()


def tree_digest(paths: Iterable[Path], *extra: Any, salt: str = "") -> str:
    """A short sha256 over the names and bytes of ``paths`` (the sorted files of a directory) and ``extra``."""
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(f.name.encode())
            _update_from_file(digest, f)
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:16]
