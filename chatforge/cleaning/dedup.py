"""Exact and near-duplicate detection (../shared/notes/cleaning.md §3).

Both use the same normalised key: lower case, digits -> 0, punctuation (CJK too) -> space,
whitespace collapsed, diacritics stripped. Near duplicates: MinHash over word 5-grams for English
and character 5-grams for Chinese (a whitespace tokenizer would treat a run of Chinese as one
word), 112 hashes in 14 bands x 8 rows (datatrove/FineWeb's setting, threshold ~0.72), with LSH
buckets; the first document of a cluster is kept. Written by hand because datatrove's MinHash is a
four-stage disk pipeline and datasketch is not in our stack; this is ~60 lines and in memory.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from chatforge.config import field_help

_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s+")
_PRIME = (1 << 31) - 1          # 32-bit shingle hashes * 31-bit multipliers stay inside uint64


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = field_help(True, "drop documents whose normalised text was seen before")
    near: bool = field_help(True, "drop near duplicates by MinHash LSH")
    shingle: int = field_help(5, "n-gram size (words for English, characters for Chinese)")
    bands: int = field_help(14, "LSH bands")
    rows: int = field_help(8, "hashes per band")
    seed: int = field_help(1, "MinHash seed")


def dedup_key(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _SPACE.sub(" ", _PUNCT.sub(" ", _DIGIT.sub("0", text))).strip()


def exact_hash(text: str) -> str:
    return hashlib.sha1(dedup_key(text).encode()).hexdigest()


def shingles(key: str, n: int, language: str) -> set[bytes]:
    if language == "zh":
        chars = key.replace(" ", "")
        return {chars[i:i + n].encode() for i in range(max(len(chars) - n + 1, 1))}
    words = key.split()
    return {" ".join(words[i:i + n]).encode() for i in range(max(len(words) - n + 1, 1))}


class MinHashLSH:
    def __init__(self, cfg: DedupConfig):
        import random

        self.cfg = cfg
        import numpy as np

        rng = random.Random(cfg.seed)
        n = cfg.bands * cfg.rows
        self.a = np.array([rng.randrange(1, _PRIME) for _ in range(n)], dtype=np.uint64)[:, None]
        self.b = np.array([rng.randrange(0, _PRIME) for _ in range(n)], dtype=np.uint64)[:, None]
        self.buckets: list[dict[tuple[int, ...], str]] = [{} for _ in range(cfg.bands)]

    def signature(self, grams: set[bytes]) -> list[int]:
        """One min-hash per permutation h -> (a*h + b) mod p over the shingles' 32-bit xxhashes."""
        import numpy as np
        import xxhash

        hashes = np.fromiter((xxhash.xxh32_intdigest(g) for g in grams), dtype=np.uint64, count=len(grams))
        return ((self.a * hashes[None, :] + self.b) % _PRIME).min(axis=1).tolist()     # (bands*rows,)

    def seen(self, doc_id: str, text: str, language: str) -> str | None:
        """Id of an earlier near duplicate of ``text`` or None (then ``doc_id`` is added)."""
        sig = self.signature(shingles(dedup_key(text), self.cfg.shingle, language))
        r = self.cfg.rows
        keys = [tuple(sig[b * r:(b + 1) * r]) for b in range(self.cfg.bands)]
        for bucket, key in zip(self.buckets, keys):
            if key in bucket:
                return bucket[key]
        for bucket, key in zip(self.buckets, keys):
            bucket[key] = doc_id
        return None
