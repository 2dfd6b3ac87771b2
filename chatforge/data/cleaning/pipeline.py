"""The cleaning pipeline: documents through datatrove pipelines on an executor, the other kinds in-process.

Documents (``clean_document_files``) go through up to six datatrove pipelines, run as one chain of
executors (executor.py: local worker processes, Slurm or Ray, by params):

    clean            (tasks)  JSONL byte ranges -> too long -> HTML to main text -> HTML entities
                              -> ftfy + NFKC + whitespace -> boilerplate lines -> PII placeholders -> language by script
                              -> length and script checks -> Gopher / repetition / C4 / FineWeb filters, each
                              routed to its filter set and language -> shard writer -> exact-dedup signatures
    exact_find       (1)      ExactFindDedups over the signatures of every task
    minhash_sig      (tasks)  shard reader -> exact-dedup filter -> MinHash signatures
    minhash_buckets  (bands)  MinhashDedupBuckets
    minhash_cluster  (1)      MinhashDedupCluster
    dedup            (tasks)  shard reader -> exact-dedup filter -> MinHash filter -> kept writer

The exact-dedup filter runs twice on the same shards and the same duplicate lists, so it drops the same
documents both times: MinHash never sees exact copies (their reason stays ``exact_duplicate``), and
MinhashDedupFilter gets exactly the stream MinhashDedupSignature numbered. Every dropping step has an
exclusion writer; ``collect`` then reads the kept shards in task order (which is input order), the
rejects in input order and datatrove's per-task stats into a ``CleanResult``.

Conversations, preferences and prompts are small and stay in this process (``clean_records``):
normalisation, PII placeholders, exact dedup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import heapq
import json
import logging
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datatrove.pipeline.dedup import (
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
)
from datatrove.utils.stats import MetricStats

from chatforge.core.config import field_help
from chatforge.core.files import InputError, Rejected, atomic_open, iter_records, write_jsonl
from chatforge.data.cleaning.blocks import (
    ENTITIES_STAT,
    LINES_STAT,
    PII_STAT,
    BoilerplateLines,
    DocumentChecks,
    HtmlToText,
    NormalizeText,
    PiiPlaceholders,
    Routed,
    ScriptLanguage,
    TooLong,
    UnescapeEntities,
)
from chatforge.data.cleaning.boilerplate import BoilerplateConfig
from chatforge.data.cleaning.dedup import DedupConfig, exact_config, exact_hash, minhash_config, minhash_signature_step
from chatforge.data.cleaning.documents import JsonlRangeReader, RejectsWriter, ShardReader, output_record, shard_writer
from chatforge.data.cleaning.executor import ExecutorConfig, build_chain, run_chain
from chatforge.data.cleaning.filters import QualityConfig, build_filters
from chatforge.data.cleaning.pii import redact
from chatforge.data.cleaning.text import normalize_text
from chatforge.data.records import KINDS
from chatforge.data.seen import SeenIds

log = logging.getLogger(__name__)
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")
WORK_DIR_MARKER = ".clean_data-work-dir"


@dataclass(frozen=True)
class CleaningConfig:
    boilerplate: BoilerplateConfig = field_help(BoilerplateConfig(), "line rules")
    quality: QualityConfig = field_help(QualityConfig(), "document filters")
    dedup: DedupConfig = field_help(DedupConfig(), "exact and near-duplicate removal")
    pii: bool = field_help(True, "replace PII by typed placeholders")
    entities: bool = field_help(True, "decode HTML character references left in the text, before normalisation")
    max_chars: int = field_help(1_000_000, "drop documents longer than this (characters) before anything else")


@dataclass
class CleanResult:
    """Counts of one record kind's cleaning, and its kept and rejected records: in the lists, or, when
    ``keep_to`` / ``reject_to`` are given (the stage, streaming), handed to them one at a time instead."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    boilerplate_lines: Counter = field(default_factory=Counter)
    entities: int = 0
    duplicates: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    keep_to: Callable[[dict[str, Any]], None] | None = None
    reject_to: Callable[[Rejected], None] | None = None

    def keep(self, record: dict[str, Any], size: int) -> None:
        self.records_out += 1
        self.bytes_out += size
        (self.keep_to or self.kept.append)(record)

    def drop(self, record: dict[str, Any], source: str, reason: str) -> None:
        self.drops[reason] += 1
        self.duplicates += reason in DUPLICATE_REASONS
        (self.reject_to or self.rejected.append)(Rejected(source, 0, reason, record))

    @property
    def records_dropped(self) -> int:
        return sum(self.drops.values())

    def stats(self) -> dict[str, Any]:
        return {"in": self.records_in, "out": self.records_out, "bytes": {"in": self.bytes_in, "out": self.bytes_out},
                "drops": dict(self.drops), "pii": dict(self.pii), "duplicates": self.duplicates,
                "boilerplate_lines": dict(self.boilerplate_lines), "entities": self.entities}


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Documents: datatrove pipelines
# --------------------------------------------------------------------------------------------

@dataclass
class Pipeline:
    name: str
    steps: list
    tasks: int | None = None            # None: the executor's ``tasks``


def document_pipelines(inputs: list[Path], cfg: CleaningConfig, work: Path) -> list[Pipeline]:
    """The datatrove pipelines of the documents path, in the order they run; intermediates under ``work``."""
    filtered, kept = work / "filtered", work / "kept"

    def rejects(step: str, reason: str = "") -> RejectsWriter:
        return RejectsWriter(work / "rejected", step, reason)

    steps = [JsonlRangeReader(inputs), TooLong(cfg.max_chars, rejects("too_long")),
             HtmlToText(cfg.quality.web_sources, rejects("html"))] + ([UnescapeEntities()] if cfg.entities else []) \
        + [NormalizeText(), BoilerplateLines(cfg.boilerplate)]
    if cfg.pii:
        steps.append(PiiPlaceholders())
    steps += [ScriptLanguage(), DocumentChecks(cfg.quality, rejects("checks"))]
    for kind in ("web", "text"):
        for language in ("en", "zh"):
            for quality_filter in build_filters(getattr(cfg.quality, kind), language):
                name = f"{kind}_{language}_{type(quality_filter).__name__}"
                steps.append(Routed(quality_filter, kind, language, rejects(name)))
    dedup = cfg.dedup
    if not (dedup.exact or dedup.near):
        return [Pipeline("clean", steps + [shard_writer(kept)])]

    steps.append(shard_writer(filtered))
    pipelines = [Pipeline("clean", steps)]
    final = [ShardReader(filtered)]
    exact, exact_sigs, exact_dups = exact_config(), str(work / "exact_sigs"), str(work / "exact_dups")
    if dedup.exact:
        steps.append(ExactDedupSignature(exact_sigs, exact))
        pipelines.append(Pipeline("exact_find", [ExactFindDedups(exact_sigs, exact_dups, exact)], tasks=1))
        final.append(ExactDedupFilter(exact_dups, exact, exclusion_writer=rejects("exact", "exact_duplicate")))
    if dedup.near:
        minhash = minhash_config(dedup)
        sigs, buckets, remove = str(work / "minhash_sigs"), str(work / "minhash_buckets"), str(work / "minhash_remove")
        signature = [ShardReader(filtered)] + ([ExactDedupFilter(exact_dups, exact)] if dedup.exact else [])
        pipelines += [
            Pipeline("minhash_sig", signature + [minhash_signature_step(sigs, dedup)]),
            Pipeline("minhash_buckets", [MinhashDedupBuckets(sigs, buckets, config=minhash)], tasks=dedup.bands),
            Pipeline("minhash_cluster", [MinhashDedupCluster(buckets, remove, config=minhash)], tasks=1),
        ]
        final.append(MinhashDedupFilter(remove, exclusion_writer=rejects("near", "near_duplicate")))
    pipelines.append(Pipeline("dedup", final + [shard_writer(kept)]))
    return pipelines


def task_stats(logging_dir: Path) -> dict[str, Counter]:
    """datatrove's per-task stats (``<logging_dir>/stats/NNNNN.json``) summed over tasks: step -> stat -> total."""
    totals: dict[str, Counter] = defaultdict(Counter)
    for file in sorted((logging_dir / "stats").glob("*.json")):
        for step in json.loads(file.read_text()):
            for key, value in step["stats"].items():
                totals[step["name"]][key] += MetricStats.from_dict(value).total
    return totals


def _prefixed(counts: Counter, prefix: str) -> dict[str, int]:
    return {key[len(prefix):]: int(n) for key, n in counts.items() if key.startswith(prefix)}


def merged_rejects(folder: Path) -> Iterator[dict[str, Any]]:
    """RejectsWriter's rows (``folder/<step>/<rank>.jsonl.gz``) in input order, streamed: each file is in input
    order already (a task reads its part of the input in order), so a k-way merge on the offset replaces a
    global sort; memory is one row per file."""
    def rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        last = -1
        with gzip.open(file, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row["offset"] <= last:
                    raise RuntimeError(f"{file}: rejects out of input order (offset {row['offset']} after {last})")
                last = row["offset"]
                yield row["offset"], row

    for _, row in heapq.merge(*(rows(f) for f in sorted(folder.glob("*/*.jsonl.gz"))), key=lambda item: item[0]):
        yield row


def collect(work: Path, clean_steps: list, tasks: int, source: str, result: CleanResult | None = None) -> CleanResult:
    """A CleanResult from what the pipelines left in ``work``: kept shards in task order (which is input order),
    rejects in input order, and the stats; records stream through ``result``'s keep/drop."""
    result = result or CleanResult()
    stats = task_stats(work / "logs" / "clean")
    for step in clean_steps:
        counts = stats.get(str(step), Counter())
        if isinstance(step, JsonlRangeReader):
            result.records_in, result.bytes_in = int(counts["documents"]), int(counts["text_bytes"])
        elif isinstance(step, PiiPlaceholders):
            result.pii.update(_prefixed(counts, PII_STAT))
        elif isinstance(step, BoilerplateLines):
            result.boilerplate_lines.update(_prefixed(counts, LINES_STAT))
        elif isinstance(step, UnescapeEntities):
            result.entities = int(counts[ENTITIES_STAT])
    reader = ShardReader(work / "kept")
    for rank in range(tasks):
        for doc in reader.run(rank=rank, world_size=tasks):
            result.keep(output_record(doc), _size(doc.text))
    for row in merged_rejects(work / "rejected"):
        result.drop(row["record"], source, row["reason"])
    if result.records_in != result.records_out + result.records_dropped:
        raise RuntimeError(f"clean_data lost documents: {result.records_in} read, {result.records_out} kept, "
                           f"{result.records_dropped} rejected (datatrove logs in {work / 'logs'})")
    return result


def prepare_work_dir(executor: ExecutorConfig) -> Path:
    """``executor.work_dir``, absolute (workers elsewhere read the same paths) and emptied unless resuming
    (else datatrove skips every task it finds completed). Only a directory this stage made is emptied."""
    work = executor.work_dir.resolve()
    marker = work / WORK_DIR_MARKER
    if work.exists() and any(work.iterdir()) and not marker.exists():
        raise InputError(f"{work}: clean_data.executor.work_dir is not empty and was not made by clean_data; "
                         "point it at a new or empty directory")
    if not executor.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return work


def clean_document_files(inputs: list[Path], cfg: CleaningConfig, executor: ExecutorConfig,
                         source: str = "", result: CleanResult | None = None) -> CleanResult:
    """Documents of JSONL files ({"id", "text", ...}) through the datatrove pipelines on ``executor``."""
    for path in inputs:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    work = prepare_work_dir(executor)
    pipelines = document_pipelines([p.resolve() for p in inputs], cfg, work)
    chain = build_chain([(p.name, p.steps, p.tasks or executor.tasks) for p in pipelines], executor, work / "logs")
    log.info("clean_data: %d datatrove pipelines (%s) on %s, %d tasks, %s workers; work dir %s", len(pipelines),
             " -> ".join(p.name for p in pipelines), executor.kind, executor.tasks, executor.workers, work)
    run_chain(chain, executor)
    result = collect(work, pipelines[0].steps, executor.tasks, source, result)
    if not executor.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return result


def clean_documents(records: Iterable[dict[str, Any]], cfg: CleaningConfig, source: str = "",
                    executor: ExecutorConfig | None = None) -> CleanResult:
    """In-memory documents through the same pipelines, in a temporary work dir (one local task by default:
    a list in memory is small)."""
    executor = executor or ExecutorConfig(tasks=1, workers=1)
    with tempfile.TemporaryDirectory(prefix="chatforge-clean-") as tmp:
        path = Path(tmp) / "documents.jsonl"
        write_jsonl(path, records)
        work = dataclasses.replace(executor, work_dir=Path(tmp) / "work", resume=False, keep_work_dir=False)
        return clean_document_files([path], cfg, work, source)


# --------------------------------------------------------------------------------------------
# Conversations, preferences, prompts: in-process
# --------------------------------------------------------------------------------------------

def _texts(kind: str, record: dict[str, Any]) -> list[str]:
    if kind == "preferences":
        return [m["content"] for m in record["prompt"]] + [record["chosen"], record["rejected"]]
    return [m["content"] for m in record["messages"]]


def clean_records(kind: str, records: Iterable[dict[str, Any]], cfg: CleaningConfig, source: str = "",
                  result: CleanResult | None = None) -> CleanResult:
    """Conversations, preferences, prompts: normalise + PII placeholders + exact dedup (global: 8 bytes a
    kept record, see chatforge/data/seen.py)."""
    result, seen = result or CleanResult(), SeenIds()

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
        if not seen.add(exact_hash("\x00".join(_texts(kind, new)))) and cfg.dedup.exact:
            result.drop(record, source, "exact_duplicate")
            continue
        result.keep(new, sum(_size(t) for t in _texts(kind, new)))
    return result


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CleanDataConfig:
    input_dir: Path = field_help(Path("data/raw"), "prepare_data's four JSONL files")
    output_dir: Path = field_help(Path("data/clean"), "the same four files, cleaned")
    rejects: Path = field_help(Path("data/rejected/clean_data.jsonl"), "every dropped record with the step that dropped it")
    report: Path = field_help(Path("reports/clean.json"), "counts: documents, bytes, drops per filter, PII per type, duplicates")
    drops_plot: Path = field_help(Path("reports/clean_drops.csv"), "drops per filter (a DVC plot)")
    validation: Path = field_help(Path("reports/clean_validation.json"), "the full Great Expectations results")
    cleaning: CleaningConfig = field_help(CleaningConfig(), "the cleaning steps")
    executor: ExecutorConfig = field_help(ExecutorConfig(), "where the document pipelines run: local worker "
                                                            "processes, Slurm or Ray (datatrove executors)")


def clean_all(cfg: CleanDataConfig, results: dict[str, CleanResult] | None = None) -> dict[str, CleanResult]:
    """Every record kind of ``cfg.input_dir``: documents through the datatrove pipelines, the rest in-process,
    streamed record by record into ``results`` (new in-memory results when not given)."""
    results = results or {kind: CleanResult() for kind in KINDS}
    for kind in KINDS:
        if not (cfg.input_dir / f"{kind}.jsonl").is_file():
            raise InputError(f"{cfg.input_dir / f'{kind}.jsonl'}: no such file (run prepare_data first)")
    clean_document_files([cfg.input_dir / "documents.jsonl"], cfg.cleaning, cfg.executor, "documents",
                         results["documents"])
    for kind in KINDS:
        if kind != "documents":
            clean_records(kind, iter_records(cfg.input_dir / f"{kind}.jsonl"), cfg.cleaning, kind, results[kind])
    return results


class OutputCheck(Protocol):
    """What checks the outputs as they are written (validate.py's ChunkValidator): ``add`` each kept record,
    then ``finish``, which raises when an expectation failed."""

    def add(self, kind: str, record: dict[str, Any]) -> None: ...

    def finish(self) -> dict[str, Any]: ...


def clean_to_files(cfg: CleanDataConfig, check: OutputCheck) -> tuple[dict[str, CleanResult], dict[str, Any]]:
    """``clean_all`` writing ``output_dir/<kind>.jsonl`` and ``rejects`` as records arrive, each kept record
    checked on the way; the files are renamed into place only after ``check.finish()`` passed, so a failed
    expectation (or a killed run) leaves the old outputs. Returns the results and the check's summary."""
    with contextlib.ExitStack() as stack:
        files = {kind: stack.enter_context(atomic_open(cfg.output_dir / f"{kind}.jsonl")) for kind in KINDS}
        rejects = stack.enter_context(atomic_open(cfg.rejects))

        def keeper(kind: str) -> Callable[[dict[str, Any]], None]:
            def keep(record: dict[str, Any]) -> None:
                check.add(kind, record)
                files[kind].write(json.dumps(record, ensure_ascii=False) + "\n")
            return keep

        def reject(rejected: Rejected) -> None:
            rejects.write(json.dumps(rejected.to_json(), ensure_ascii=False) + "\n")

        results = clean_all(cfg, {kind: CleanResult(keep_to=keeper(kind), reject_to=reject) for kind in KINDS})
        return results, check.finish()


def clean_report(results: dict[str, CleanResult]) -> dict[str, Any]:
    docs = results["documents"].stats()
    pii, drops = Counter(), Counter()
    for r in results.values():
        pii.update(r.pii)
        drops.update(r.drops)
    return {"documents": {"in": docs["in"], "out": docs["out"]}, "bytes": docs["bytes"], "drops": dict(drops),
            "pii": dict(pii), "duplicates": sum(r.duplicates for r in results.values()),
            "boilerplate_lines": docs["boilerplate_lines"], "entities_decoded": docs["entities"],
            "records": {k: {"in": r.records_in, "out": r.records_out, "drops": dict(r.drops)} for k, r in results.items()}}
