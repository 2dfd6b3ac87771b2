"""Pretraining throughput: our Trainer-based step vs a minimal hand-written PyTorch loop.

Same model (same init), same packed batches, same optimizer settings (AdamW, warmup + cosine,
clipping, accumulation), at two model sizes, measured side by side in one run: rounds alternate
between the two loops and the best round of each counts (the machine is shared, so the best is
the least disturbed). Also the model FLOPs utilisation (MFU) against this machine's fp32 matmul
rate, measured in the same run.

FLOPs per token: 6 x (non-embedding params + the LM head) + 12 x layers x hidden x block
(PaLM appendix B; the attention term counts QK^T and AV).

Run: python bench/pretrain_throughput.py [--steps 6] [--rounds 2] [--compile] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.train.model import ModelConfig, build_model, count_parameters  # noqa: E402
from chatforge.core.files import write_jsonl  # noqa: E402
from chatforge.train.packing import pretraining_blocks, token_corpus  # noqa: E402
from chatforge.train.pretrain import PretrainConfig, collate_blocks, training_arguments  # noqa: E402
from chatforge.train.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402

SIZES = {
    # the params.yaml (tiny profile) model, and one ~4x wider/deeper in compute
    "tiny (params.yaml)": ModelConfig(),
    "small": ModelConfig(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=768),
}
BATCH, ACCUM, BLOCK, VOCAB = 8, 2, 128, 4096


def synthetic_texts(n_words: int, seed: int = 0) -> list[str]:
    """Zipf-distributed pseudo-words: enough distinct pairs for a 4,096-token BPE in a second."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(lexicon))]
    words = rng.choices(lexicon, weights, k=n_words)
    return [" ".join(words[i:i + 200]) + "." for i in range(0, n_words, 200)]


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Best fp32 matmul rate of this machine (GFLOP/s) over a few timed bursts."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(model, cfg: ModelConfig) -> float:
    emb = model.get_input_embeddings().weight.numel()
    body = count_parameters(model) - emb
    return 6 * (body + emb) + 12 * cfg.num_layers * cfg.hidden_size * BLOCK


def pretrain_config(out: Path, steps: int) -> PretrainConfig:
    return PretrainConfig(checkpoint_dir=out, batch_size=BATCH, global_batch_size=BATCH * ACCUM, block_size=BLOCK,
                          max_tokens=steps * BATCH * ACCUM * BLOCK, logging_steps=1_000_000, eval_steps=0,
                          save_steps=1_000_000)


def run_trainer(model, data, cfg: PretrainConfig, warmup: int) -> float:
    """Our step: the transformers Trainer as pretrain() sets it up. Seconds per step after warmup."""
    from transformers import Trainer, TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())
            control.should_save = False           # time steps, not checkpoint writes

    args = training_arguments(cfg, seed=0, world_size=1, report_to=[])
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate_blocks, callbacks=[Clock()]).train()
    return (marks[-1] - marks[warmup - 1]) / (len(marks) - warmup)


def run_hand_loop(model, data, cfg: PretrainConfig, warmup: int) -> float:
    """A minimal PyTorch loop with the same optimizer, schedule, clipping and accumulation."""
    steps = cfg.max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    n_warm = math.ceil(steps * cfg.warmup_fraction)

    def lr_at(step: int) -> float:
        if step < n_warm:
            return step / max(1, n_warm)
        progress = (step - n_warm) / max(1, steps - n_warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True,
                                              collate_fn=collate_blocks))
    model.train()
    marks = []
    for _ in range(steps):
        for _ in range(ACCUM):
            batch = next(loader)
            (model(**batch).loss / ACCUM).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    return (marks[-1] - marks[warmup - 1]) / (len(marks) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile for both loops")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = train_tokenizer(synthetic_texts(300_000), TokenizerConfig(vocab_size=VOCAB, min_frequency=2))
    peak = matmul_gflops()
    print(f"fp32 matmul peak (1024^3, best of 3): {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads; "
          f"batch {BATCH} x accumulation {ACCUM} x {BLOCK} tokens, vocab {len(tokenizer)}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        docs = [{"id": str(i), "text": t, "split": "train" if i % 10 else "validation"}
                for i, t in enumerate(synthetic_texts(120_000, seed=1))]
        write_jsonl(Path(tmp) / "documents.jsonl", docs)
        corpus = token_corpus(Path(tmp) / "documents.jsonl", Path(tmp) / "tokenizer", Path(tmp) / "cache")
        data = pretraining_blocks(corpus, BLOCK)["train"]
        cfg = pretrain_config(Path(tmp) / "ckpt", args.steps + args.warmup)
        variants = [("eager", False)] + ([("compile", True)] if args.compile else [])
        for size, mcfg in SIZES.items():
            for variant, compiled in variants:
                best = {"trainer": math.inf, "hand": math.inf}
                for _ in range(args.rounds):
                    for loop in ("trainer", "hand"):
                        model = build_model(mcfg, tokenizer, seed=0)
                        fpt = flops_per_token(model, mcfg)
                        if loop == "trainer":
                            sec = run_trainer(model, data, replace(cfg, torch_compile=compiled), args.warmup)
                        else:
                            sec = run_hand_loop(torch.compile(model) if compiled else model, data, cfg, args.warmup)
                        best[loop] = min(best[loop], sec)
                tokens = BATCH * ACCUM * BLOCK
                tps = {k: tokens / v for k, v in best.items()}
                rows.append((size, variant, count_parameters(model) / 1e6, tps["trainer"], tps["hand"],
                             tps["trainer"] / tps["hand"], tps["trainer"] * fpt / 1e9 / peak,
                             tps["hand"] * fpt / 1e9 / peak))

    header = ("model", "mode", "params (M)", "ours tok/s", "hand tok/s", "ours/hand", "MFU ours", "MFU hand")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size, variant, params, ours, hand, ratio, mfu_o, mfu_h in rows:
        print(f"| {size} | {variant} | {params:.2f} | {ours:,.0f} | {hand:,.0f} | {ratio:.2f} | {mfu_o:.1%} | {mfu_h:.1%} |")


if __name__ == "__main__":
    main()
