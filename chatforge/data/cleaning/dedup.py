"""Exact and near-duplicate removal on datatrove's multi-stage dedup blocks
(the normalisation before hashing follows CCNet's ``normalize_for_dedup``, arXiv:1911.00359).

Both stages are datatrove's, so duplicates are found across every shard and task, not only inside one
process: each task writes signatures to disk, one step compares them all, and a last pass over the same
shards drops the duplicates (see ``document_pipelines`` in pipeline.py for the order).

- Exact: ``ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter`` on our normalised key (lower case,
  digits -> 0, punctuation (CJK too) -> space, whitespace collapsed, diacritics stripped). Of a group of
  copies datatrove keeps the one with the highest priority; ours is "lowest shard first", and shards are
  contiguous slices of the input (documents.py), so the first copy in input order survives whatever the
  task count.
- Near: ``MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster -> MinhashDedupFilter`` with
  ``MinhashConfig`` 14 bands x 8 rows of 5-grams (FineWeb's setting, threshold ~(1/14)^(1/8) = 0.72),
  over datatrove's ``simplify_text``. English 5-grams are of whitespace words: the simplified text has no
  punctuation left, and datatrove's default (spaCy) only re-splits contractions ("whats" -> "what s") at
  ~100x the cost (2.6 s against 0.02 s per MB of chat text here), which made signatures the slowest step.
  Chinese 5-grams are of *characters*, not jieba words: jieba's segmentation of a phrase depends on its
  context, so a small edit re-segments its neighbourhood and moves more shingles than it should, while
  character shingles change only around the edit (and cost no segmenter). That is ``ScriptTokenizer``,
  which datatrove takes in place of a language's word tokenizer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

from chatforge.core.config import field_help
from chatforge.data.cleaning.documents import STATE
from chatforge.data.cleaning.executor import MAX_SHARDS     # datatrove's exact-dedup priorities: uint16 in [1, 65535]
from chatforge.data.cleaning.text import detect_language

_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s+")


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


def exact_key(doc: Document) -> str:
    """What exact dedup hashes: the normalised key of the cleaned text."""
    return dedup_key(doc.text)


def earliest_shard_first(doc: Document) -> int:
    """Exact-dedup priority (higher wins): the copy read by the lowest task, i.e. the first in input order.
    Within one task datatrove already keeps the first copy (ties go to the lower document index)."""
    return MAX_SHARDS + 1 - doc.metadata[STATE]["shard"]


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=exact_key, document_priority=earliest_shard_first)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(n_grams=cfg.shingle, num_buckets=cfg.bands, hashes_per_bucket=cfg.rows, seed=cfg.seed)


def shingle_tokens(simplified: str, language: str) -> list[str]:
    """Tokens whose n-grams are the shingles of ``simplify_text`` output: characters for Chinese, words else."""
    if language == "zh":
        return list(simplified.replace(" ", ""))
    return simplified.split()


class ScriptTokenizer(WordTokenizer):
    """datatrove WordTokenizer for MinHash: the language of each text by script, then ``shingle_tokens``."""

    def __init__(self):
        super().__init__("zh+en")

    def word_tokenize(self, text: str) -> list[str]:
        return shingle_tokens(text, detect_language(text))

    def sent_tokenize(self, text: str) -> list[str]:      # not used by MinHash; the language's own splitter
        return self._native(text).sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self._native(text).span_tokenize(text)

    @staticmethod
    def _native(text: str) -> WordTokenizer:
        return load_word_tokenizer("cmn_Hani" if detect_language(text) == "zh" else "eng")


def minhash_signature_step(output_folder: str, cfg: DedupConfig) -> MinhashDedupSignature:
    """datatrove's MinHash stage 1 with our tokenizer (datatrove accepts a WordTokenizer for ``language``)."""
    return MinhashDedupSignature(output_folder=output_folder, config=minhash_config(cfg), language=ScriptTokenizer())
