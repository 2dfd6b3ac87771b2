"""The same SFT run with LoRA and without, on a real base model: trainable parameters, peak memory,
tokens/s and held-out loss, side by side in one run.

The conversations are Anthropic HH transcripts (prompt + chosen reply) from ../shared/data: real
multi-turn chats nobody here wrote. Each mode runs in its own process, so its peak resident memory
(ru_maxrss) is its own; the two alternate over ``--rounds`` and the best tokens/s of each counts
(the machine is shared: the best round is the least disturbed).

Run: python bench/sft_lora.py --base models/pretrained [--steps 4] [--batch 4] [--max-length 128]
(models/pretrained from `python -m stages.base_model --set base_model.source=...`, e.g. profiles/smollm2.yaml)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

log = logging.getLogger("bench.sft_lora")


def conversations(path: Path, n: int) -> list[dict]:
    from chatforge.data.preferences import read_preferences

    pairs = read_preferences(path).records[:n]
    return [{"messages": [*p["prompt"], {"role": "assistant", "content": p["chosen"]}]} for p in pairs]


def run_one(args) -> dict:
    """One SFT run in this process; its metrics as JSON on stdout."""
    import torch

    from chatforge.train.lora import LoraConfig
    from chatforge.train.sft import SftConfig, train_sft

    torch.set_num_threads(args.threads)
    convs = conversations(HH, args.train + args.eval)
    lora = LoraConfig(enabled=args.one == "lora", r=args.r, alpha=2 * args.r, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SftConfig(base=Path(args.base), checkpoints=Path(tmp) / "ck", max_length=args.max_length,
                        max_steps=args.steps, batch_size=args.batch, lr=args.lr if args.one == "lora" else args.lr / 10,
                        max_eval=args.eval, logging_steps=1, lora=lora)
        return train_sft(cfg, convs[: args.train], convs[args.train:], seed=0, output_dir=Path(tmp) / "out")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a model directory (the base_model stage's output)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train", type=int, default=64, help="training conversations")
    p.add_argument("--eval", type=int, default=16, help="held-out conversations")
    p.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    p.add_argument("--lr", type=float, default=2.0e-4, help="LoRA learning rate; full fine-tuning uses a tenth")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    p.add_argument("--one", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args), default=str))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The trainers report to MLflow: a throwaway store, so a benchmark leaves nothing in the repo's.
    store = tempfile.mkdtemp(prefix="sft-lora-bench-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for mode in ("full", "lora"):
            cmd = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            metrics = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            if mode not in best or metrics["train_tokens_per_second"] > best[mode]["train_tokens_per_second"]:
                best[mode] = metrics
            log.info("%s: %s", mode, {k: metrics[k] for k in ("train_tokens_per_second", "peak_rss_mb", "eval_loss")})
    rows = [("trainable parameters", "trainable_parameters", "{:,.0f}"), ("peak RSS (MB)", "peak_rss_mb", "{:,.0f}"),
            ("train tokens/s", "train_tokens_per_second", "{:.1f}"), ("held-out loss before", "base_eval_loss", "{:.4f}"),
            ("held-out loss after", "eval_loss", "{:.4f}"), ("train seconds", "train_seconds", "{:.1f}")]
    print(f"\nSFT on {Path(args.base).name}: {args.steps} steps x {args.batch} conversations x <= {args.max_length} "
          f"tokens, {args.eval} held-out HH conversations, {args.threads} threads\n")
    print(f"| {'':24} | {'full':>14} | {'LoRA r=' + str(args.r):>14} | {'LoRA / full':>11} |")
    print(f"|{'-' * 26}|{'-' * 16}|{'-' * 16}|{'-' * 13}|")
    for label, key, fmt in rows:
        f, lo = best["full"][key], best["lora"][key]
        print(f"| {label:24} | {fmt.format(f):>14} | {fmt.format(lo):>14} | {lo / f if f else float('nan'):>11.3f} |")
    if args.json:
        args.json.write_text(json.dumps(best, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
