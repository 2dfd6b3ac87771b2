"""Great Expectations checks on the cleaned outputs; a failure stops the stage with a short summary.

Runs GX 1.x in an ephemeral context (no project directory). Imported only by the stage: GX is
heavy (~7 s to import) and the cleaning library does not need it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LEFTOVER_PII = [r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                r"(?<!\d)1[3-9]\d(?:[-\s]?\d{4}){2}(?!\d)"]


class ValidationFailed(RuntimeError):
    """The cleaned data broke an expectation; the message is a readable summary."""


def frames(outputs: dict[str, list[dict[str, Any]]]):
    """One pandas DataFrame per check target: documents, messages (exploded), preferences, prompts."""
    import pandas as pd

    docs = pd.DataFrame([{"id": r["id"], "text": r["text"], "length": len(r["text"])} for r in outputs["documents"]],
                        columns=["id", "text", "length"])
    messages = pd.DataFrame([{"id": r["id"], "role": m["role"], "text": m["content"]}
                             for kind in ("conversations", "prompts") for r in outputs[kind] for m in r["messages"]],
                            columns=["id", "role", "text"])
    prefs = pd.DataFrame([{"id": r["id"], "same": r["chosen"].strip() == r["rejected"].strip(),
                           "text": r["chosen"] + "\n" + r["rejected"]} for r in outputs["preferences"]],
                         columns=["id", "same", "text"])
    ids = pd.DataFrame([{"kind": k, "id": r["id"]} for k, recs in outputs.items() for r in recs], columns=["kind", "id"])
    ids["key"] = ids["kind"] + "/" + ids["id"].astype(str)
    return {"documents": docs, "messages": messages, "preferences": prefs, "ids": ids}


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
        "ids": [E.ExpectColumnValuesToBeUnique(column="key")],
    }


def validate_outputs(outputs: dict[str, list[dict[str, Any]]], max_chars: int, result_file: Path) -> dict[str, Any]:
    """Run every expectation; write the full GX results to ``result_file``; raise ValidationFailed on failure."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("clean")
    summary, failures, full = {"evaluated": 0, "successful": 0}, [], {}
    for name, df in frames(outputs).items():
        if df.empty and name != "documents":
            continue
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": df})
        for exp in expectations(max_chars)[name]:
            res = batch.validate(exp, result_format="SUMMARY")
            summary["evaluated"] += 1
            summary["successful"] += int(res.success)
            full.setdefault(name, []).append(res.to_json_dict())
            if not res.success:
                r = res.result or {}
                failures.append(f"{name}: {type(exp).__name__}({getattr(exp, 'column', '') or ''}) failed on "
                                f"{r.get('unexpected_count', '?')} rows, e.g. {str(r.get('partial_unexpected_list', [])[:3])[:300]}")
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(full, indent=1, default=str))
    summary["success"] = not failures
    if failures:
        raise ValidationFailed("clean_data validation failed (full results in " + str(result_file) + "):\n  "
                               + "\n  ".join(failures))
    return summary
