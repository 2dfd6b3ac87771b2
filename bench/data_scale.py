"""The data path at growing corpus sizes: wall time, throughput and peak RSS of each data stage, and how
fast the pretraining loader delivers tokens against how fast the tiny model consumes them.

Corpus at scale s: the chitchat conversations (the default data) s times over; copy k > 0 of a
conversation keeps its length and roles but draws every message at random (seeded) from the whole
pool of chitchat messages, with a fresh id, so the copies are real text that neither exact nor
MinHash dedup removes. They go in as a ``path`` source with ``derive: true``, like chitchat itself.

Each stage runs as the pipeline runs it (``python -m stages.<name>`` in a scratch directory, MLflow on
a scratch sqlite store, the repo's params.yaml with the paths of the scratch directory); peak RSS is
the stage's process tree maximum (``os.wait4``: the largest single process, datatrove's workers included),
so it includes the ~0.25-0.45 GB of imports (torch, transformers, datatrove, MLflow, GX) that every stage
pays whatever the data.

Run: python bench/data_scale.py [--scales 1,10,100] [--base 0] [--workers 2]
(--base N: N conversations at 1x instead of all 7,168, for a quicker run.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chatforge.core.files import ShardWriter, atomic_dir  # noqa: E402
from chatforge.data.ingest import read_chitchat  # noqa: E402

STAGES = ["prepare_data", "clean_data", "train_tokenizer", "tokenize"]


def write_corpus(folder: Path, scale: int, base: int, seed: int = 0) -> int:
    """The scaled conversations as .jsonl.gz shards in ``folder``; returns the conversation count."""
    convs = [rec for _, rec in read_chitchat()]
    convs = convs[:base] if base else convs
    pool = [m["content"] for c in convs for m in c["messages"] if m["content"].strip()]
    rng = random.Random(seed)
    with atomic_dir(folder) as tmp, ShardWriter(tmp, records_per_shard=20_000) as out:
        for k in range(scale):
            for conv in convs:
                msgs = conv["messages"] if k == 0 else [{**m, "content": rng.choice(pool)} for m in conv["messages"]]
                out.write({"id": f"{conv['id']}~{k}", "messages": msgs})
    return scale * len(convs)


def params_for(work: Path, workers: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare_data"]["sources"] = [{"kind": "path", "path": "inputs/chitchat", "derive": True,
                                          "data_kind": "conversations"}]
    for section in ("clean_data", "tokenize"):
        params[section]["executor"]["workers"] = workers
        params[section]["executor"]["tasks"] = workers
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# Linux keeps a process's peak RSS across exec (the old address space's high-water mark goes into the new
# process's ru_maxrss), and subprocess forks or vforks from this bench process, which holds torch and a model
# after the loader measurement: its RSS would show up as every later stage's peak. So each stage is forked
# from this small launcher, whose own peak is a few MB, and the launcher reports the stage's rusage.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "stages." + sys.argv[1]])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def run_stage(stage: str, work: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB of the stage's process tree: the largest process, workers included)."""
    t0 = time.perf_counter()
    with open(work / f"{stage}.log", "wb") as log:
        out = subprocess.run([sys.executable, "-c", LAUNCHER, stage], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=log, check=True, text=True).stdout.split()
    code, max_rss_kb = int(out[-2]), int(out[-1])                      # ru_maxrss is in KB on Linux
    if code:
        raise SystemExit(f"{stage} failed (exit {code}); see {work / f'{stage}.log'}")
    return time.perf_counter() - t0, max_rss_kb / 1e6


def loader_vs_model(tokens: Path, steps: int = 8, batches: int = 400) -> tuple[float, float]:
    """(loader tokens/s, model training tokens/s) for the tiny profile's pretrain batch and model."""
    import torch

    from chatforge.core.config import build_dataclass
    from chatforge.train.model import ModelConfig, build_model
    from chatforge.train.packing import pretraining_blocks
    from chatforge.train.pretrain import collate_blocks
    from chatforge.train.tokenizer import load_tokenizer

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    block, batch = params["pretrain"]["block_size"], params["pretrain"]["batch_size"]
    data = pretraining_blocks(tokens, block)["train"]
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=collate_blocks)
    t0, n = time.perf_counter(), 0
    for i, b in enumerate(loader):
        n += b["input_ids"].numel()
        if i + 1 == batches:
            break
    loader_tps = n / (time.perf_counter() - t0)
    model = build_model(build_dataclass(ModelConfig, params["model"]), load_tokenizer(tokens.parent.parent /
                                                                                       "models/tokenizer"), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(loader)
    for _ in range(2):                                 # warm-up
        out = model(**next(it))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(**next(it))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return loader_tps, steps * batch * block / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10,100", help="corpus sizes, multiples of the default data")
    parser.add_argument("--base", type=int, default=0, help="conversations at 1x (0: all 7,168)")
    parser.add_argument("--workers", type=int, default=2, help="clean_data/tokenize tasks and workers")
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    rows = []
    with tempfile.TemporaryDirectory(prefix="chatforge-data-scale-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for scale in scales:
            work = Path(tmp) / f"x{scale}"
            work.mkdir()
            convs = write_corpus(work / "inputs" / "chitchat", scale, args.base)
            params_for(work, args.workers)
            row = {"scale": scale, "conversations": convs}
            for stage in STAGES:
                row[stage] = run_stage(stage, work, env)
                print(f"x{scale} {stage}: {row[stage][0]:.1f} s, peak RSS {row[stage][1]:.2f} GB", flush=True)
            index = json.loads((work / "data/tokens/index.json").read_text())
            row["tokens"] = sum(s["tokens"] for s in index["splits"].values())
            row["documents"] = sum(s["documents"] for s in index["splits"].values())
            row["loader"] = loader_vs_model(work / "data/tokens")
            print(f"x{scale} loader: {row['loader'][0]:,.0f} tokens/s, tiny model {row['loader'][1]:,.0f} tokens/s",
                  flush=True)
            rows.append(row)

    one = rows[0]
    print(f"\ncorpus at 1x: {one['conversations']:,} conversations -> {one['documents']:,} clean documents, "
          f"{one['tokens']:,} tokens; {args.workers} workers; time and RSS ratios are against 1x\n")
    print("| step | scale | conversations | wall s | time / 1x | conversations/s | peak RSS GB | RSS / 1x |")
    print("|---|---|---|---|---|---|---|---|")
    for stage in STAGES:
        for r in rows:
            sec, rss = r[stage]
            print(f"| {stage} | {r['scale']}x | {r['conversations']:,} | {sec:.1f} | {sec / one[stage][0]:.2f} | "
                  f"{r['conversations'] / sec:,.0f} | {rss:.2f} | {rss / one[stage][1]:.2f} |")
    print("\n| scale | train+val tokens | loader tokens/s | tiny model tokens/s | loader / model |")
    print("|---|---|---|---|---|")
    for r in rows:
        load, model = r["loader"]
        print(f"| {r['scale']}x | {r['tokens']:,} | {load:,.0f} | {model:,.0f} | {load / model:.1f} |")


if __name__ == "__main__":
    main()
