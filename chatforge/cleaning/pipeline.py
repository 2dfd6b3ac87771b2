"""The cleaning pipeline: documents get the whole treatment, the other record kinds PII + dedup.

Per document, in order (each step a small block, as in a datatrove pipeline):
    HTML -> main text (trafilatura) -> ftfy + NFKC + whitespace -> boilerplate lines
    -> PII placeholders -> language by script -> quality filters (per language and source kind)
    -> exact dedup -> MinHash near dedup
Every dropped record is returned with the step that dropped it; ``stats`` counts drops per step,
PII per type, lines removed per boilerplate rule, and bytes in and out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.cleaning.boilerplate import Boilerplate, BoilerplateConfig
from chatforge.cleaning.dedup import DedupConfig, MinHashLSH, exact_hash
from chatforge.cleaning.filters import QualityConfig, QualityFilters
from chatforge.cleaning.pii import redact
from chatforge.cleaning.text import cjk_ratio, detect_language, html_to_text, looks_like_html, normalize_text
from chatforge.config import field_help
from chatforge.jsonl import Rejected


@dataclass(frozen=True)
class CleaningConfig:
    boilerplate: BoilerplateConfig = field_help(BoilerplateConfig(), "line rules")
    quality: QualityConfig = field_help(QualityConfig(), "document filters")
    dedup: DedupConfig = field_help(DedupConfig(), "exact and near-duplicate removal")
    pii: bool = field_help(True, "replace PII by typed placeholders")
    max_chars: int = field_help(1_000_000, "drop documents longer than this (characters) before anything else")


@dataclass
class CleanResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    boilerplate_lines: Counter = field(default_factory=Counter)
    duplicates: int = 0
    records_in: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def drop(self, record: dict[str, Any], source: str, reason: str) -> None:
        self.drops[reason] += 1
        self.rejected.append(Rejected(source, 0, reason, record))

    def stats(self) -> dict[str, Any]:
        return {"in": self.records_in, "out": len(self.kept), "bytes": {"in": self.bytes_in, "out": self.bytes_out},
                "drops": dict(self.drops), "pii": dict(self.pii), "duplicates": self.duplicates,
                "boilerplate_lines": dict(self.boilerplate_lines)}


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


class DocumentCleaner:
    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.boilerplate = Boilerplate(cfg.boilerplate)
        self.filters = QualityFilters(cfg.quality)
        self.exact: dict[str, str] = {}
        self.near = MinHashLSH(cfg.dedup)

    def clean_one(self, record: dict[str, Any], result: CleanResult, source: str) -> None:
        text, src = record["text"], record.get("source", "")
        result.records_in += 1
        result.bytes_in += _size(text)
        if len(text) > self.cfg.max_chars:
            return result.drop(record, source, "too_long")
        web = looks_like_html(text, src) or src in self.cfg.quality.web_sources
        if looks_like_html(text, src):
            text = html_to_text(text)
            if not text.strip():
                return result.drop(record, source, "html_no_main_text")
        text = normalize_text(text)
        text = self.boilerplate.clean(text, result.boilerplate_lines)
        if self.cfg.pii:
            text = redact(text, result.pii)
        language, cjk = detect_language(text), cjk_ratio(text)
        reason, text = self.filters.apply(text.strip(), "web" if web else "text", language, cjk)
        if reason:
            return result.drop(record, source, reason)
        if self.cfg.dedup.exact:
            key = exact_hash(text)
            if key in self.exact:
                result.duplicates += 1
                return result.drop(record, source, "exact_duplicate")
            self.exact[key] = record["id"]
        if self.cfg.dedup.near and self.near.seen(record["id"], text, language):
            result.duplicates += 1
            return result.drop(record, source, "near_duplicate")
        result.kept.append({**record, "text": text, "lang": language})
        result.bytes_out += _size(text)


def clean_documents(records: Iterable[dict[str, Any]], cfg: CleaningConfig, source: str = "") -> CleanResult:
    cleaner, result = DocumentCleaner(cfg), CleanResult()
    for record in records:
        cleaner.clean_one(record, result, source)
    return result


def _texts(kind: str, record: dict[str, Any]) -> list[str]:
    if kind == "preferences":
        return [m["content"] for m in record["prompt"]] + [record["chosen"], record["rejected"]]
    return [m["content"] for m in record["messages"]]


def clean_records(kind: str, records: Iterable[dict[str, Any]], cfg: CleaningConfig, source: str = "") -> CleanResult:
    """Conversations, preferences, prompts: normalise + PII placeholders + exact dedup."""
    result, seen = CleanResult(), set()

    def fix(text: str) -> str:
        text = normalize_text(text)
        return redact(text, result.pii) if cfg.pii else text

    for record in records:
        result.records_in += 1
        result.bytes_in += sum(_size(t) for t in _texts(kind, record))
        if kind == "preferences":
            new = {**record, "prompt": [{**m, "content": fix(m["content"])} for m in record["prompt"]],
                   "chosen": fix(record["chosen"]), "rejected": fix(record["rejected"])}
            if new["chosen"] == new["rejected"]:
                result.drop(record, source, "chosen_equals_rejected_after_cleaning")
                continue
        else:
            new = {**record, "messages": [{**m, "content": fix(m["content"])} for m in record["messages"]]}
        if any(not t.strip() for t in _texts(kind, new)):
            result.drop(record, source, "empty_after_cleaning")
            continue
        key = exact_hash("\x00".join(_texts(kind, new)))
        if cfg.dedup.exact and key in seen:
            result.duplicates += 1
            result.drop(record, source, "exact_duplicate")
            continue
        seen.add(key)
        result.kept.append(new)
        result.bytes_out += sum(_size(t) for t in _texts(kind, new))
    return result


@dataclass(frozen=True)
class CleanDataConfig:
    input_dir: Path = field_help(Path("data/raw"), "prepare_data's four JSONL files")
    output_dir: Path = field_help(Path("data/clean"), "the same four files, cleaned")
    rejects: Path = field_help(Path("data/rejected/clean_data.jsonl"), "every dropped record with the step that dropped it")
    report: Path = field_help(Path("reports/clean.json"), "counts: documents, bytes, drops per filter, PII per type, duplicates")
    drops_plot: Path = field_help(Path("reports/clean_drops.csv"), "drops per filter (a DVC plot)")
    validation: Path = field_help(Path("reports/clean_validation.json"), "the full Great Expectations results")
    cleaning: CleaningConfig = field_help(CleaningConfig(), "the cleaning steps")


def clean_all(records: dict[str, list[dict[str, Any]]], cfg: CleaningConfig) -> dict[str, CleanResult]:
    """Every record kind through its pipeline (documents: all steps; the rest: PII + dedup)."""
    return {kind: clean_documents(recs, cfg, kind) if kind == "documents" else clean_records(kind, recs, cfg, kind)
            for kind, recs in records.items()}


def clean_report(results: dict[str, CleanResult]) -> dict[str, Any]:
    docs = results["documents"].stats()
    pii, drops = Counter(), Counter()
    for r in results.values():
        pii.update(r.pii)
        drops.update(r.drops)
    return {"documents": {"in": docs["in"], "out": docs["out"]}, "bytes": docs["bytes"], "drops": dict(drops),
            "pii": dict(pii), "duplicates": sum(r.duplicates for r in results.values()),
            "boilerplate_lines": docs["boilerplate_lines"],
            "records": {k: {"in": r.records_in, "out": len(r.kept), "drops": dict(r.drops)} for k, r in results.items()}}
