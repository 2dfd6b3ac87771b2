"""Ingestion for prepare_data: read the configured sources, sort records into the four uses
(documents, conversations, preferences, prompts) and a train/validation split.

Sources (``prepare_data.sources`` in params.yaml):

- ``chitchat``: the chitchat-dataset package (7,168 human conversations, MIT), read from its
  installed ``dataset.json``; nothing is downloaded.
- ``path``: files or folders of ``.jsonl``/``.jsonl.gz`` (records of any kind, see chatforge.data.records), ``.txt``
  (one document per file) and ``.html``/``.htm`` (one raw page per file; clean_data extracts text).
- ``hf``: a Hugging Face dataset by hub name or local path, streamed through ``datasets.load_dataset(...,
  streaming=True)``: rows arrive as they download, so ``limit`` stops the download; a source names its
  subset (``hf_config``, e.g. FineWeb-Edu's ``sample-10BT``), ``hf_split`` and ``hf_revision`` (a commit or
  tag: DVC cannot see the hub, so a pinned revision in params is what makes a new one re-run the stage).

DVC re-runs prepare_data when a file it reads changes only if that file is one of the stage's deps, and a
dvc.yaml deps list cannot be built from the sources list; so every ``path`` source must lie inside
``inputs_dir`` (``inputs/``), the one folder dvc.yaml lists (``untracked_path_sources`` says which do not).

Conversations from ``chitchat`` (and from any source with ``derive: true``) are dealt out to the
four uses by a seeded hash of their id, so the uses are disjoint by conversation and the result
is the same on every machine. Every record also gets its split from a seeded hash of its id.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from chatforge.core.config import field_help
from chatforge.core.files import InputError, Rejected, atomic_open, iter_jsonl
from chatforge.data.negatives import ReplyPool, conversation_of, fill_rejected
from chatforge.data.records import KINDS, RecordError, RecordKind, guess_kind, normalize
from chatforge.data.seen import SeenIds

log = logging.getLogger(__name__)

Split = Literal["train", "validation"]
TEXT_SUFFIXES = {".txt": "text", ".html": "html", ".htm": "html"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
DERIVED = "derived"      # rejects 'source' for records derived from an accepted conversation


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["chitchat", "path", "hf"] = field_help(help="where the records come from")
    path: str = field_help("", "path: a file or folder; hf: a dataset name on the hub or a local dataset path")
    name: str = field_help("", "short name for reports and the 'source' field (default: derived)")
    data_kind: Literal["auto", "documents", "conversations", "preferences", "prompts"] = field_help(
        "auto", "what the records are; auto guesses per record from its fields")
    derive: bool = field_help(False, "deal conversations out to all four uses (always on for chitchat)")
    hf_config: str = field_help("", "hf: dataset configuration name")
    hf_split: str = field_help("train", "hf: which split to load")
    hf_revision: str = field_help("", "hf: commit sha, tag or branch to read (pin it: DVC cannot see the hub)")
    text_field: str = field_help("text", "field holding a document's text (jsonl, hf)")
    limit: int = field_help(0, "read at most this many records from the source (0 = all)")

    @property
    def label(self) -> str:
        return self.name or (self.kind if self.kind == "chitchat" else Path(self.path).name or self.path)


@dataclass(frozen=True)
class UseFractions:
    """How derived conversations are dealt out; must sum to 1."""

    documents: float = field_help(0.4, "share of conversations that become pretraining documents")
    conversations: float = field_help(0.3, "share used as SFT conversations")
    preferences: float = field_help(0.2, "share turned into next-reply preference pairs")
    prompts: float = field_help(0.1, "share used as RL / evaluation prompts")

    def __post_init__(self) -> None:
        total = self.documents + self.conversations + self.preferences + self.prompts
        if abs(total - 1.0) > 1e-6 or min(self.documents, self.conversations, self.preferences, self.prompts) < 0:
            raise ValueError(f"use fractions must be >= 0 and sum to 1, got {total:.4f}")


@dataclass(frozen=True)
class PrepareDataConfig:
    sources: list[SourceConfig] = field_help(help="inputs, read in order")
    inputs_dir: Path = field_help(Path("inputs"), "the folder every 'path' source lies in: the DVC dependency "
                                                  "that re-runs the stage when an input file changes")
    output_dir: Path = field_help(Path("data/raw"), "where the four JSONL files go")
    rejects: Path = field_help(Path("data/rejected/prepare_data.jsonl"), "every rejected record with its reason")
    report: Path = field_help(Path("reports/prepare_data.json"), "counts per source, output and split")
    validation_fraction: float = field_help(0.1, "share of each use held out for validation")
    uses: UseFractions = field_help(UseFractions(), "how derived conversations are dealt out")
    pairs_per_conversation: int = field_help(2, "next-reply preference pairs cut from each conversation")
    prompts_per_conversation: int = field_help(1, "RL / evaluation prompts cut from each conversation")
    reply_pool: int = field_help(100_000, "next-reply pairs: their rejected replies are drawn from a seeded "
                                          "reservoir of at most this many chosen replies per split (memory "
                                          "bound; all of them while they fit, see chatforge/data/negatives.py)")

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("'sources' must list at least one source")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("'validation_fraction' must be in [0, 1)")
        if self.pairs_per_conversation < 1 or self.prompts_per_conversation < 1:
            raise ValueError("'pairs_per_conversation' and 'prompts_per_conversation' must be >= 1")
        if self.reply_pool < 2:
            raise ValueError("'reply_pool' must be >= 2")


def untracked_path_sources(cfg: PrepareDataConfig) -> list[str]:
    """The ``path`` sources outside ``cfg.inputs_dir``: DVC would not re-run the stage when they change.

    Compared without following symlinks, because DVC does not follow them either (a symlinked folder
    inside ``inputs_dir`` hashes as nothing).
    """
    root = Path(os.path.abspath(cfg.inputs_dir))
    return [src.path for src in cfg.sources
            if src.kind == "path" and not Path(os.path.abspath(src.path)).is_relative_to(root)]


# --------------------------------------------------------------------------------------------
# Seeded hashing: the same id gets the same use and split everywhere
# --------------------------------------------------------------------------------------------

def unit_hash(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, salt, key)."""
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(seed: int, record_id: str, validation_fraction: float) -> Split:
    return "validation" if unit_hash(seed, "split", record_id) < validation_fraction else "train"


def assign_use(seed: int, conversation_id: str, uses: UseFractions) -> RecordKind:
    u, edge = unit_hash(seed, "use", conversation_id), 0.0
    for kind in KINDS:
        edge += getattr(uses, kind)
        if u < edge:
            return kind
    return KINDS[-1]


# --------------------------------------------------------------------------------------------
# Readers: each yields (line or row number, raw record | Rejected, kind or None)
# --------------------------------------------------------------------------------------------

Item = tuple[int, "dict[str, Any] | Rejected"]


def chitchat_path() -> Path:
    import chitchat_dataset

    return Path(chitchat_dataset.__file__).with_name("dataset.json")


def read_chitchat(path: Path | None = None) -> Iterator[Item]:
    """Chitchat conversations: speaker one is the user, speaker two the assistant.

    A message in the dataset is a burst of utterances by one sender; they are joined by newlines.
    """
    path = path or chitchat_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    for n, (conv_id, conv) in enumerate(data.items(), start=1):
        messages = []
        for i, burst in enumerate(conv.get("messages", [])):
            text = "\n".join(u.get("text", "").strip() for u in burst if u.get("text", "").strip())
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        yield n, {"id": f"chitchat-{conv_id}", "messages": messages}


def iter_files(path: Path) -> list[Path]:
    """The readable files under ``path`` (a file, or a folder searched recursively), sorted."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name.endswith(JSONL_SUFFIXES)))
    if not files:
        raise InputError(f"{path}: folder has no .jsonl, .jsonl.gz, .txt or .html files")
    return files


def read_text_file(path: Path) -> Iterator[Item]:
    """A .txt or .html file is one document (raw HTML stays; clean_data extracts the text)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(f"{path}: file is empty")
    if b"\x00" in raw:
        yield 1, Rejected(str(path), 1, "binary file (contains NUL bytes)", raw[:200].decode("utf-8", "replace"))
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        yield 1, Rejected(str(path), 1, f"not UTF-8 ({err.reason} at byte {err.start})", raw[:200].decode("utf-8", "replace"))
        return
    yield 1, {"id": f"file-{hashlib.sha1(str(path).encode()).hexdigest()[:12]}", "text": text, "source": str(path)}


def read_path(path: Path) -> Iterator[tuple[Path, Item]]:
    for file in iter_files(path):
        if file.name.endswith(JSONL_SUFFIXES):
            items = iter_jsonl(file)
        elif file.suffix in TEXT_SUFFIXES:
            items = read_text_file(file)
        else:
            raise InputError(f"{file}: unsupported file type '{file.suffix}' (use .jsonl, .jsonl.gz, .txt or .html)")
        for item in items:
            yield file, item


def read_hf(src: SourceConfig) -> Iterator[Item]:
    """Rows of a Hugging Face dataset (hub name or local path), streamed: nothing is downloaded or held
    beyond the rows read so far, so a ``limit`` stops the download. Needs the network for hub names."""
    import datasets

    where = f"hf source '{src.path}'" + (f" (config '{src.hf_config}')" if src.hf_config else "")
    try:
        ds = datasets.load_dataset(src.path, src.hf_config or None, split=src.hf_split, streaming=True,
                                   revision=src.hf_revision or None)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as err:   # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise InputError(f"{where}: could not load split '{src.hf_split}': {err}") from err
    if first is None:
        return
    for n, row in enumerate(itertools.chain([first], rows), start=1):
        yield n, dict(row)


# --------------------------------------------------------------------------------------------
# Deriving the four uses from one conversation
# --------------------------------------------------------------------------------------------

def conversation_text(messages: list[dict[str, str]]) -> str:
    """A conversation as plain pretraining text: one message per paragraph."""
    return "\n\n".join(m["content"] for m in messages)


def assistant_turns(messages: list[dict[str, str]]) -> list[int]:
    """Indices of assistant messages that have at least one message before them."""
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]


def derive_records(conv: dict[str, Any], use: RecordKind, rng: random.Random, source: str,
                   pairs: int, prompts: int = 1) -> list[dict[str, Any]]:
    """One conversation -> the records of its use: up to ``pairs`` preference pairs or ``prompts``
    prompts, each cut before a different assistant turn. Preference 'rejected' replies are filled later."""
    messages, cid = conv["messages"], conv["id"]
    if use == "documents":
        return [{"id": cid, "text": conversation_text(messages), "source": source}]
    if use == "conversations":
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return [{"id": cid, "messages": messages[: last + 1]}]    # a trailing user turn teaches nothing
    turns = assistant_turns(messages)
    if not turns:
        raise RecordError("conversation has no assistant reply after a user turn")
    if use == "prompts":
        return [{"id": f"{cid}#{cut}", "messages": messages[:cut]}
                for cut in sorted(rng.sample(turns, min(prompts, len(turns))))]
    cuts = sorted(rng.sample(turns, min(pairs, len(turns))))
    return [{"id": f"{cid}#{cut}", "prompt": messages[:cut], "chosen": messages[cut]["content"], "rejected": None}
            for cut in cuts]


# --------------------------------------------------------------------------------------------
# The whole ingest
# --------------------------------------------------------------------------------------------

class Sink(Protocol):
    """Where ``ingest_into`` puts records as they are made: a writer per kind, or lists (``ingest``)."""

    def write(self, kind: str, record: dict[str, Any]) -> None: ...

    def reject(self, rejected: Rejected) -> None: ...


@dataclass
class IngestCounts:
    sources: dict[str, dict[str, int]] = field(default_factory=dict)     # label -> {"in", "accepted", "rejected"}
    outputs: dict[str, Counter] = field(default_factory=lambda: {kind: Counter() for kind in KINDS})
    rejected: int = 0
    derived_rejected: int = 0

    def report(self) -> dict[str, Any]:
        return {"records_in": sum(s["in"] for s in self.sources.values()),
                "records_accepted": sum(s["accepted"] for s in self.sources.values()),
                "records_rejected": self.rejected, "derived_rejected": self.derived_rejected,
                "sources": self.sources,
                "outputs": {kind: {split: c[split] for split in ("train", "validation")}
                            for kind, c in self.outputs.items()}}


@dataclass
class Ingested:
    """``ingest``'s result in memory (tests and small inputs)."""

    records: dict[str, list[dict[str, Any]]]          # kind -> records, each with a "split" field
    rejected: list[Rejected]
    stats: IngestCounts

    def counts(self) -> dict[str, Any]:
        return self.stats.report()


class _ListSink:
    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self.rejected: list[Rejected] = []

    def write(self, kind: str, record: dict[str, Any]) -> None:
        self.records[kind].append(record)

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)


def _source_items(src: SourceConfig) -> Iterator[tuple[str, Item]]:
    """(file or source label, item) for every raw record of a source, honouring ``limit``."""
    if src.kind == "chitchat":
        items = ((src.label, item) for item in read_chitchat())
    elif src.kind == "path":
        if not src.path:
            raise InputError("a 'path' source needs 'path'")
        items = ((str(file), item) for file, item in read_path(Path(src.path)))
    else:
        if not src.path:
            raise InputError("an 'hf' source needs 'path' (a dataset name or local path)")
        items = ((src.label, item) for item in read_hf(src))
    for n, pair in enumerate(items):
        if src.limit and n >= src.limit:
            return
        yield pair


def ingest(cfg: PrepareDataConfig, seed: int) -> Ingested:
    """Every record in memory: ``ingest_into`` with lists for a sink."""
    sink = _ListSink()
    with tempfile.TemporaryDirectory(prefix="chatforge-ingest-") as tmp:
        stats = ingest_into(cfg, seed, sink, Path(tmp))
    return Ingested(sink.records, sink.rejected, stats)


def ingest_into(cfg: PrepareDataConfig, seed: int, sink: Sink, spill_dir: Path) -> IngestCounts:
    """Read every source and sort its records into uses and splits, streaming: each record goes to ``sink``
    as it is made, so memory does not grow with the corpus, except for 8 bytes per accepted id (``SeenIds``:
    ids stay unique across sources) and the bounded reply pools of the next-reply pairs.

    Derived next-reply pairs wait in a spill file under ``spill_dir`` until every source has been read (their
    rejected reply is drawn from the pairs of the whole split), then follow the other records, in input order.
    """
    stats = IngestCounts()
    seen = SeenIds()
    rng = random.Random(seed)
    pools = {split: ReplyPool(cfg.reply_pool, random.Random(f"{seed}:pool:{split}")) for split in ("train", "validation")}
    everything = ReplyPool(cfg.reply_pool, random.Random(f"{seed}:pool:all"))
    spill = spill_dir / "next-reply-pairs.jsonl.gz"
    with gzip.open(spill, "wt", encoding="utf-8", compresslevel=1) as pending:
        for src in cfg.sources:
            st = stats.sources.setdefault(src.label, {"in": 0, "accepted": 0, "rejected": 0})
            derive = src.derive or src.kind == "chitchat"
            for where, (line, raw) in _source_items(src):
                st["in"] += 1
                if isinstance(raw, Rejected):
                    sink.reject(raw)
                    st["rejected"] += 1
                    continue
                try:
                    if src.text_field != "text" and src.text_field in raw:
                        raw = {**raw, "text": raw[src.text_field]}
                    kind = src.data_kind if src.data_kind != "auto" else (
                        "conversations" if derive else guess_kind(raw))
                    if kind is None:
                        raise RecordError("cannot tell the record's kind (no 'text', 'messages', 'prompt' or "
                                          "'chosen'/'rejected' field); set data_kind on the source")
                    if derive and kind != "conversations":
                        raise RecordError(f"source has derive: true but the record is a {kind[:-1]}")
                    rec = normalize(kind, raw, src.label)
                    if not seen.add(f"{kind}\x00{rec['id']}"):
                        raise RecordError(f"duplicate id '{rec['id']}' in {kind}")
                    if derive:
                        use = assign_use(seed, rec["id"], cfg.uses)
                        new = derive_records(rec, use, rng, src.label, cfg.pairs_per_conversation,
                                             cfg.prompts_per_conversation)
                    else:
                        use, new = kind, [rec]
                    split = assign_split(seed, rec["id"], cfg.validation_fraction)   # by conversation id
                except RecordError as err:
                    sink.reject(Rejected(where, line, str(err), raw))
                    st["rejected"] += 1
                    continue
                st["accepted"] += 1
                for r in new:
                    r["split"] = split
                    if use == "preferences" and r["rejected"] is None:      # a derived pair: drawn later
                        pools[split].add(conversation_of(r), r["chosen"])
                        everything.add(conversation_of(r), r["chosen"])
                        pending.write(json.dumps(r, ensure_ascii=False) + "\n")
                    else:
                        sink.write(use, r)
                        stats.outputs[use][split] += 1
    stats.rejected = sum(s["rejected"] for s in stats.sources.values())
    with gzip.open(spill, "rt", encoding="utf-8") as pending:
        for pair, filled in fill_rejected((json.loads(line) for line in pending), pools, everything, seed):
            if filled:
                sink.write("preferences", pair)
                stats.outputs["preferences"][pair["split"]] += 1
            else:
                sink.reject(Rejected(DERIVED, 0, "no reply from another conversation to use as 'rejected'", pair))
                stats.derived_rejected += 1
    for kind, counts in stats.outputs.items():
        log.info("%s: %d train, %d validation", kind, counts["train"], counts["validation"])
    if max(p.seen for p in pools.values()) > cfg.reply_pool:
        log.info("next-reply pairs: rejected replies drawn from a reservoir of %d replies per split (of %s)",
                 cfg.reply_pool, {split: p.seen for split, p in pools.items()})
    return stats


class _FileSink:
    """One open JSONL file per kind and one for the rejects (each from ``atomic_open``)."""

    def __init__(self, files: dict[str, IO[str]], rejects: IO[str]) -> None:
        self.files, self.rejects = files, rejects

    def write(self, kind: str, record: dict[str, Any]) -> None:
        self.files[kind].write(json.dumps(record, ensure_ascii=False) + "\n")

    def reject(self, rejected: Rejected) -> None:
        self.rejects.write(json.dumps(rejected.to_json(), ensure_ascii=False) + "\n")


def ingest_to_files(cfg: PrepareDataConfig, seed: int) -> IngestCounts:
    """``ingest_into`` writing ``output_dir/<kind>.jsonl`` and ``rejects`` as records arrive; each file is
    renamed into place only when the whole ingest succeeded (a failed or killed run leaves the old files)."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        files = {kind: stack.enter_context(atomic_open(cfg.output_dir / f"{kind}.jsonl")) for kind in KINDS}
        rejects = stack.enter_context(atomic_open(cfg.rejects))
        spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".prepare_data-", dir=cfg.output_dir)))
        return ingest_into(cfg, seed, _FileSink(files, rejects), spill)
