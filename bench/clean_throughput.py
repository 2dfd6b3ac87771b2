"""clean_data throughput: our document pipeline vs a plain datatrove pipeline of the same filters.

Input: documents from data/raw/documents.jsonl (run `python -m stages.prepare_data` first) plus
dirty web pages, at 1x and 4x size (copies get a suffix so they are not exact duplicates). Ours
does more per document (HTML extraction, normalisation, boilerplate lines, PII, exact + MinHash
dedup); the datatrove pipeline runs the same quality filters through LocalPipelineExecutor.
Run: python bench/clean_throughput.py [--docs 400]
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


def run_ours(docs: list[dict]) -> float:
    from chatforge.cleaning.pipeline import CleaningConfig, clean_documents

    start = time.perf_counter()
    clean_documents(docs, CleaningConfig())
    return time.perf_counter() - start


def run_datatrove(docs: list[dict]) -> float:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.writers import JsonlWriter

    from chatforge.cleaning.filters import QualityConfig, build_filters

    cfg = QualityConfig()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = [[Document(text=d["text"], id=d["id"]) for d in docs], *build_filters(cfg.text, "en"),
                    JsonlWriter(f"{tmp}/out")]
        start = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=1, workers=1, logging_dir=f"{tmp}/logs").run()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=400, help="chat documents at 1x")
    args = parser.parse_args()
    run_ours(load(20, 1))                         # warm-up: imports, jieba and spaCy models
    rows = []
    for scale in (1, 4):
        docs = load(args.docs, scale)
        mb = sum(len(d["text"].encode()) for d in docs) / 1e6
        ours, plain = run_ours(docs), run_datatrove(docs)
        rows.append((scale, len(docs), mb, ours, plain))
    print(f"{'input':>5} {'docs':>6} {'MB':>6} | {'ours MB/s':>9} {'docs/s':>7} | {'datatrove MB/s':>14} {'docs/s':>7} | "
          f"{'ours/datatrove':>14}")
    for scale, n, mb, ours, plain in rows:
        print(f"{scale:>4}x {n:>6} {mb:>6.2f} | {mb / ours:>9.3f} {n / ours:>7.1f} | {mb / plain:>14.3f} "
              f"{n / plain:>7.1f} | {plain / ours:>14.2f}")
    (s1, n1, _, o1, p1), (s4, n4, _, o4, p4) = rows
    print(f"cost growth 1x -> 4x: ours x{o4 / o1:.2f}, datatrove x{p4 / p1:.2f} (linear would be x{n4 / n1:.2f})")


if __name__ == "__main__":
    main()
