"""Great Expectations checks on the cleaned outputs; a failure stops the stage with a short summary.

Runs GX 1.x in an ephemeral context (no project directory). Imported only by the stage: GX is
heavy (~7 s to import) and the cleaning library does not need it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatforge.data.seen import SeenIds

LEFTOVER_PII = [r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                r"(?<!\d)1[3-9]\d(?:[-\s]?\d{4}){2}(?!\d)"]


class ValidationFailed(RuntimeError):
    """The cleaned data broke an expectation; the message is a readable summary."""


COLUMNS = {"documents": ["id", "text", "length"], "messages": ["id", "role", "text"],
           "preferences": ["id", "same", "text"]}


def rows(kind: str, record: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(check target, its rows) of one output record: documents, messages (one row per message), preferences."""
    if kind == "documents":
        return "documents", [{"id": record["id"], "text": record["text"], "length": len(record["text"])}]
    if kind == "preferences":
        return "preferences", [{"id": record["id"], "same": record["chosen"].strip() == record["rejected"].strip(),
                                "text": record["chosen"] + "\n" + record["rejected"]}]
    return "messages", [{"id": record["id"], "role": m["role"], "text": m["content"]} for m in record["messages"]]


def expectations(max_chars: int) -> dict[str, list]:
    import great_expectations as gx

    E = gx.expectations
    no_pii = E.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=LEFTOVER_PII)
    return {
        "documents": [E.ExpectTableRowCountToBeBetween(min_value=1), E.ExpectColumnValuesToNotBeNull(column="text"),
                      E.ExpectColumnValuesToBeBetween(column="length", min_value=1, max_value=max_chars), no_pii],
        "messages": [E.ExpectColumnValuesToBeInSet(column="role", value_set=["system", "user", "assistant"]),
                     E.ExpectColumnValuesToNotBeNull(column="text"), no_pii],
        "preferences": [E.ExpectColumnValuesToBeInSet(column="same", value_set=[False]), no_pii],
    }


class ChunkValidator:
    """The expectations run on chunks of ``chunk_rows`` rows or ``chunk_chars`` characters of text per target,
    whichever fills first (a chunk closes after the record that fills it), as records are added, so memory
    is a chunk, not the outputs; the counts are exact (every row of every chunk is checked, and failures are
    summed over the chunks).

    Unique ids (kind/id over every output) cannot be judged chunk by chunk: they are checked exactly over
    the whole stream with 8-byte hashes (chatforge/data/seen.py) instead of GX's ExpectColumnValuesToBeUnique
    on a frame of every id; the result is written in the same shape. On the default data every target fits
    one chunk, as before.
    """

    def __init__(self, max_chars: int, result_file: Path, chunk_rows: int = 100_000,
                 chunk_chars: int = 8_000_000) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.expectations = expectations(max_chars)
        self.result_file, self.chunk_rows, self.chunk_chars = result_file, chunk_rows, chunk_chars
        self.buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in COLUMNS}
        self.buffered_chars = dict.fromkeys(COLUMNS, 0)
        self.rows = dict.fromkeys(COLUMNS, 0)
        self.chunks = dict.fromkeys(COLUMNS, 0)
        self.summary: dict[str, Any] = {"evaluated": 0, "successful": 0}
        self.failures: dict[tuple[str, str], list[Any]] = {}          # (target, expectation) -> [rows, examples]
        self.full: dict[str, list[dict[str, Any]]] = {}
        self.ids, self.duplicate_ids, self.records = SeenIds(), [], 0

    def add(self, kind: str, record: dict[str, Any]) -> None:
        self.records += 1
        key = f"{kind}/{record['id']}"
        if not self.ids.add(key):
            self.duplicate_ids.append(key)
        name, new = rows(kind, record)
        self.buffers[name].extend(new)
        self.buffered_chars[name] += sum(len(row["text"]) for row in new)
        if len(self.buffers[name]) >= self.chunk_rows or self.buffered_chars[name] >= self.chunk_chars:
            self._validate(name)

    def _validate(self, name: str) -> None:
        import pandas as pd

        df = pd.DataFrame(self.buffers[name], columns=COLUMNS[name])
        self.buffers[name], self.buffered_chars[name] = [], 0
        self.rows[name] += len(df)
        # A data source per chunk, deleted after it: its execution engine caches every batch's dataframe
        # (BatchManager._batch_data_cache), so one long-lived source would keep every chunk in memory.
        source = self.ctx.data_sources.add_pandas(f"clean-{name}-{self.chunks[name]}")
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": df})
        self.chunks[name] += 1
        for exp in self.expectations[name]:
            res = batch.validate(exp, result_format="SUMMARY")
            self.summary["evaluated"] += 1
            self.summary["successful"] += int(res.success)
            self.full.setdefault(name, []).append(res.to_json_dict())
            if not res.success:
                r = res.result or {}
                failed = self.failures.setdefault((name, f"{type(exp).__name__}({getattr(exp, 'column', '') or ''})"),
                                                  [0, []])
                failed[0] += r.get("unexpected_count") or 0
                failed[1].extend(r.get("partial_unexpected_list", [])[:3 - len(failed[1])])
        del batch
        self.ctx.data_sources.delete(source.name)

    def finish(self) -> dict[str, Any]:
        """Check what is left in the buffers (documents even when empty: there must be some), the ids; write
        the full results to ``result_file``; raise ValidationFailed on any failure, else return the summary."""
        for name, buffer in self.buffers.items():
            if buffer or (name == "documents" and not self.chunks[name]):
                self._validate(name)
        self.summary["evaluated"] += 1
        self.summary["successful"] += not self.duplicate_ids
        self.full["ids"] = [{"success": not self.duplicate_ids, "expectation_config": {
            "type": "expect_column_values_to_be_unique", "kwargs": {"column": "key"},
            "meta": {"checked": "exactly, over every output record, by 8-byte hashes (chatforge/data/seen.py)"}},
            "result": {"element_count": self.records, "unexpected_count": len(self.duplicate_ids),
                       "partial_unexpected_list": self.duplicate_ids[:20]}}]
        if self.duplicate_ids:
            self.failures[("ids", "ExpectColumnValuesToBeUnique(key)")] = [len(self.duplicate_ids),
                                                                         self.duplicate_ids[:3]]
        self.result_file.parent.mkdir(parents=True, exist_ok=True)
        self.result_file.write_text(json.dumps(self.full, indent=1, default=str))
        self.summary["success"] = not self.failures
        if self.failures:
            raise ValidationFailed("clean_data validation failed (full results in " + str(self.result_file) + "):\n  "
                                   + "\n  ".join(f"{name}: {exp} failed on {n} rows, e.g. {str(examples)[:300]}"
                                                  for (name, exp), (n, examples) in self.failures.items()))
        return self.summary

    def counts(self) -> dict[str, Any]:
        """Rows and chunks checked per target, and the records whose ids were checked."""
        return {"records": self.records, "rows": dict(self.rows), "chunks": dict(self.chunks)}


def validate_outputs(outputs: dict[str, list[dict[str, Any]]], max_chars: int, result_file: Path,
                     chunk_rows: int = 100_000, chunk_chars: int = 8_000_000) -> dict[str, Any]:
    """Every expectation on outputs held in memory (tests, small data): the stage's checks, fed at once."""
    check = ChunkValidator(max_chars, result_file, chunk_rows, chunk_chars)
    for kind, records in outputs.items():
        for record in records:
            check.add(kind, record)
    return check.finish()
