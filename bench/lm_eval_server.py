"""lm-eval in-process vs through ``chatforge serve``: the same tasks on the same model, scored by
lm-eval's HFLM in this process and by lm-eval's ``local-completions`` over HTTP (loopback), side by
side in one run: accuracy, the difference in points, and wall time with the server/in-process ratio.

    python bench/lm_eval_server.py --model models/sft --limit 20
    python bench/lm_eval_server.py --model DIR --task hh_harmless_mc --task gsm8k_local:exact_match:strict-match

A task is NAME or NAME:METRIC:FILTER (default acc, none). Run from the repo root (the shipped tasks
read ../shared/data).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory (model + tokenizer)")
    p.add_argument("--task", action="append", default=[], help="NAME or NAME:METRIC:FILTER (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="docs per task")
    p.add_argument("--max-gen-toks", type=int, default=48, help="generated tokens (generative tasks)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from chatforge.eval.benchmarks import BenchmarksConfig, BenchmarkTask, hf_lm, score_model, task_manager
    from chatforge.inference.decoding import DecodingConfig, load_chat_model
    from chatforge.serve.app import create_app
    from chatforge.serve.launch import serve_in_background
    from chatforge.serve.schema import ServerLimits

    specs = args.task or ["hh_harmless_mc", "gsm8k_local:exact_match:strict-match"]
    tasks = []
    for spec in specs:
        name, metric, filt = (spec.split(":") + ["acc", "none"])[:3] if ":" in spec else (spec, "acc", "none")
        tasks.append(BenchmarkTask(task=name, metric=metric, filter=filt, max_gen_toks=args.max_gen_toks))
    cfg = BenchmarksConfig(tasks=tasks, limit=args.limit, batch_size=args.batch_size)
    manager = task_manager(cfg)
    chat_model = load_chat_model(args.model)
    context = chat_model.context_length
    results, walls = {}, {}
    start = time.perf_counter()
    results["in-process"] = score_model(hf_lm(chat_model.step.model, chat_model.tokenizer, args.batch_size), cfg, manager)
    walls["in-process"] = time.perf_counter() - start
    app = create_app(chat_model, limits=ServerLimits(max_tokens=max(512, args.max_gen_toks)),
                     defaults=DecodingConfig(max_new_tokens=16), model_id="bench")
    with serve_in_background(app) as url:
        remote = LocalCompletionsAPI(base_url=url + "v1/completions", model="bench", tokenizer_backend="huggingface",
                                     tokenizer=str(args.model), max_length=min(context, 4096),
                                     batch_size=args.batch_size, max_gen_toks=args.max_gen_toks, max_retries=1)
        start = time.perf_counter()
        results["server"] = score_model(remote, cfg, manager)
        walls["server"] = time.perf_counter() - start

    print(f"model {args.model} (context {context}), {args.limit} docs per task\n")
    print("| task | metric | random | in-process | server | difference (points) |")
    print("|---|---|---|---|---|---|")
    for task in cfg.tasks:
        a, b = results["in-process"][task.task], results["server"][task.task]
        print(f"| {task.task} | {a['metric']} | {100 * a['random']:.1f} | {100 * a['accuracy']:.1f} ± "
              f"{100 * a['stderr']:.1f} (n={a['samples']}) | {100 * b['accuracy']:.1f} ± {100 * b['stderr']:.1f} "
              f"(n={b['samples']}) | {100 * (b['accuracy'] - a['accuracy']):+.1f} |")
    print(f"\nwall time: in-process {walls['in-process']:.1f} s, server {walls['server']:.1f} s, "
          f"ratio server/in-process {walls['server'] / walls['in-process']:.2f}")


if __name__ == "__main__":
    main()
