"""Preference pairs and prompts for train_reward and rlhf: reading any accepted format, and the
disjoint splits (reward-model train / judge train / validation).

Readers accept every shape ``chatforge.data.records.normalize_preference`` knows (ours, Anthropic HH,
TRL standard and conversational), in ``.jsonl`` or gzip ``.jsonl.gz``. Records that carry a
``"split"`` (everything prepare_data/clean_data write) keep it; files without one (e.g. the raw HH
release) get a seeded hash split. Pairs cut from one conversation (ids ``<conversation>#<turn>``)
always land on the same side, so no conversation is seen by two of {reward model, judge,
validation}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.core.files import Rejected, iter_jsonl
from chatforge.data.ingest import unit_hash
from chatforge.data.records import RecordError, normalize_preference, normalize_prompt

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    records: list[dict[str, Any]]
    rejected: list[Rejected]


def _read(path: Path, normalize) -> Loaded:
    records, rejected = [], []
    for lineno, item in iter_jsonl(path):
        if isinstance(item, Rejected):
            rejected.append(item)
            continue
        try:
            rec = normalize(item)
        except RecordError as err:
            rejected.append(Rejected(str(path), lineno, str(err), item))
            continue
        if item.get("split") in ("train", "validation"):
            rec["split"] = item["split"]
        records.append(rec)
    if rejected:
        log.warning("%s: %d records rejected (first: line %d, %s)", path, len(rejected), rejected[0].line,
                    rejected[0].reason)
    return Loaded(records, rejected)


def read_preferences(path: Path) -> Loaded:
    """Preference pairs from any accepted format, as ``{"id", "prompt", "chosen", "rejected"[, "split"]}``."""
    return _read(path, normalize_preference)


def read_prompts(path: Path) -> Loaded:
    """Prompts (``{"id", "messages"[, "split"]}``)."""
    return _read(path, normalize_prompt)


def group_key(record_id: str) -> str:
    """Pairs cut from one conversation share this key (``conv#3`` -> ``conv``)."""
    return record_id.split("#", 1)[0]


def split_of(record: dict[str, Any], seed: int, validation_fraction: float) -> str:
    if "split" in record:
        return record["split"]
    return "validation" if unit_hash(seed, "split", group_key(record["id"])) < validation_fraction else "train"


@dataclass
class PreferenceSplits:
    reward: list[dict[str, Any]]          # trains the reward model that RL optimises against
    judge: list[dict[str, Any]]           # trains the held-out judge, never seen in RL
    validation: list[dict[str, Any]]      # scores both


def split_preferences(records: list[dict[str, Any]], seed: int, judge_fraction: float,
                      validation_fraction: float) -> PreferenceSplits:
    """Deal pairs out to reward / judge / validation, disjoint by conversation."""
    out = PreferenceSplits([], [], [])
    for rec in records:
        if split_of(rec, seed, validation_fraction) == "validation":
            out.validation.append(rec)
        elif unit_hash(seed, "judge", group_key(rec["id"])) < judge_fraction:
            out.judge.append(rec)
        else:
            out.reward.append(rec)
    return out


def by_split(records: list[dict[str, Any]], split: str, seed: int, validation_fraction: float) -> list[dict[str, Any]]:
    return [r for r in records if split_of(r, seed, validation_fraction) == split]
