"""clean_data throughput: our document pipeline vs a plain datatrove pipeline of the same filters.

Input: documents from data/raw/documents.jsonl (run `python -m stages.prepare_data` first) plus
dirty web pages, at 1x and 4x size (copies get a suffix so they are not exact duplicates), written
as one JSONL shard per task. "ours" is the stage's own path (``clean_document_files``: every
datatrove pipeline of the stage on a LocalPipelineExecutor with the default tasks and workers, and
collecting the results); it does more per document (HTML extraction, normalisation, boilerplate
lines, PII, language routing, exact dedup). "plain datatrove" is JsonlReader -> the same quality
filters (the English plain-text set) -> JsonlWriter -> MinHash (signatures, buckets, cluster,
filter) -> JsonlWriter, on the same executor settings.
Run: python bench/clean_throughput.py [--docs 400] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_cleaning import EN_PAGE, ZH_PAGE  # noqa: E402  realistic dirty pages written for the tests


def load(n: int, scale: int) -> list[dict]:
    docs = [json.loads(l) for l in Path("data/raw/documents.jsonl").read_text().splitlines()[:n]]
    docs += [{"id": f"zh{i}", "text": ZH_PAGE, "source": "page.html"} for i in range(n // 20)]
    docs += [{"id": f"en{i}", "text": EN_PAGE, "source": "page.txt"} for i in range(n // 20)]
    return [{**d, "id": f"{d['id']}-{k}", "text": d["text"] + (f"\n\nCopy {k}." if k else "")}
            for k in range(scale) for d in docs]


def write_shards(docs: list[dict], folder: Path, shards: int) -> list[Path]:
    """Contiguous slices of ``docs``, one JSONL file per task (datatrove's JsonlReader shards by file)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(shards):
        paths.append(folder / f"{i:05d}.jsonl")
        part = docs[len(docs) * i // shards: len(docs) * (i + 1) // shards]
        paths[-1].write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part))
    return paths


def run_ours(files: list[Path], work: Path, workers: int) -> float:
    from chatforge.data.cleaning.executor import ExecutorConfig
    from chatforge.data.cleaning.pipeline import CleaningConfig, clean_document_files

    start = time.perf_counter()
    clean_document_files(files, CleaningConfig(), ExecutorConfig(tasks=workers, workers=workers, work_dir=work))
    return time.perf_counter() - start


def run_datatrove(folder: Path, work: Path, workers: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from chatforge.data.cleaning.dedup import DedupConfig, minhash_config
    from chatforge.data.cleaning.filters import QualityConfig, build_filters

    minhash = minhash_config(DedupConfig())
    stages = [
        ([JsonlReader(str(folder)), *build_filters(QualityConfig().text, "en"), JsonlWriter(f"{work}/filtered"),
          MinhashDedupSignature(f"{work}/sigs", config=minhash)], workers),
        ([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=minhash)], minhash.num_buckets),
        ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=minhash)], 1),
        ([JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove"), JsonlWriter(f"{work}/out")], workers),
    ]
    start = time.perf_counter()
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                              logging_dir=f"{work}/logs/{i}").run()
    return time.perf_counter() - start


def main() -> None:
    from chatforge.data.cleaning.executor import ExecutorConfig

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=400, help="chat documents at 1x")
    parser.add_argument("--workers", type=int, default=ExecutorConfig().workers,
                        help="tasks and worker processes for both (default: the stage's default)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="clean-bench-") as tmp:
        warm = write_shards(load(20, 1), Path(tmp) / "warm", args.workers)
        run_ours(warm, Path(tmp) / "warm-ours", args.workers)          # imports; starts the forkserver both use
        for scale in (1, 4):
            docs = load(args.docs, scale)
            mb = sum(len(d["text"].encode()) for d in docs) / 1e6
            files = write_shards(docs, Path(tmp) / f"in{scale}", args.workers)
            ours = run_ours(files, Path(tmp) / f"ours{scale}", args.workers)
            plain = run_datatrove(files[0].parent, Path(tmp) / f"plain{scale}", args.workers)
            rows.append((scale, len(docs), mb, ours, plain))
    print(f"{'input':>5} {'docs':>6} {'MB':>6} | {'ours MB/s':>9} {'docs/s':>7} | {'datatrove MB/s':>14} {'docs/s':>7} | "
          f"{'ours/datatrove':>14}")
    for scale, n, mb, ours, plain in rows:
        print(f"{scale:>4}x {n:>6} {mb:>6.2f} | {mb / ours:>9.3f} {n / ours:>7.1f} | {mb / plain:>14.3f} "
              f"{n / plain:>7.1f} | {plain / ours:>14.2f}")
    (s1, n1, _, o1, p1), (s4, n4, _, o4, p4) = rows
    print(f"cost growth 1x -> 4x: ours x{o4 / o1:.2f}, datatrove x{p4 / p1:.2f} (linear would be x{n4 / n1:.2f})")
    print(f"both on LocalPipelineExecutor, {args.workers} tasks and {args.workers} workers")


if __name__ == "__main__":
    main()
