"""``chatforge clean INPUT... -o DIR``: the document cleaning pipeline on any .txt/.html/.jsonl files.

A .txt or .html file is one document; a .jsonl file holds documents ({"text": ...}). The documents go
through the clean_data stage's own datatrove pipelines, on a local executor with ``--workers`` processes
(scratch in a temporary directory). Writes DIR/kept.jsonl, DIR/rejected.jsonl (unreadable records and
dropped documents, each with its reason) and DIR/stats.json. Thresholds come from params.yaml's
clean_data.cleaning when it exists (or --params FILE), else the defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help=".txt, .html or .jsonl files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="read clean_data.cleaning from this file if it exists (default params.yaml)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, one input shard each (default: clean_data.executor.workers from "
                        "--params when it is a local executor, else the stage's default)")


def run(args: argparse.Namespace) -> int:
    from chatforge.core.config import build_dataclass, read_params
    from chatforge.core.files import InputError, Rejected, write_json, write_jsonl
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.cleaning.pipeline import CleaningConfig, clean_documents
    from chatforge.data.ingest import read_path
    from chatforge.data.records import RecordError, normalize_document

    cfg, executor = CleaningConfig(), ExecutorConfig()
    if args.params.exists():
        stage = read_params(args.params).get("clean_data") or {}
        if stage.get("cleaning") is not None:
            cfg = build_dataclass(CleaningConfig, stage["cleaning"], str(args.params), "clean_data.cleaning")
        if stage.get("executor") is not None:
            executor = build_dataclass(ExecutorConfig, stage["executor"], str(args.params), "clean_data.executor")
    workers = args.workers if args.workers is not None else (
        executor.workers if executor.kind == "local" else ExecutorConfig().workers)   # a cluster's count is not ours
    docs, rejected = [], []
    try:
        for path in args.inputs:
            for file, (line, item) in read_path(path):
                if isinstance(item, Rejected):
                    rejected.append(item)
                    continue
                try:
                    docs.append(normalize_document(item, str(file)))
                except RecordError as err:
                    rejected.append(Rejected(str(file), line, str(err), item))
    except InputError as err:
        print(f"chatforge clean: {err}")
        return 2
    if workers < 1:
        print(f"chatforge clean: --workers must be at least 1, got {workers}")
        return 2
    # always this machine: the inputs and the scratch directory are local
    result = clean_documents(docs, cfg, executor=ExecutorConfig(tasks=workers, workers=workers,
                                                                start_method=executor.start_method))
    args.output.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.output / "kept.jsonl", result.kept)
    write_jsonl(args.output / "rejected.jsonl", rejected + result.rejected)
    stats = {**result.stats(), "unreadable": len(rejected)}
    write_json(args.output / "stats.json", stats)
    print(json.dumps({k: stats[k] for k in ("in", "out", "unreadable", "drops", "pii", "duplicates")}, ensure_ascii=False))
    return 0
