"""Inference speed: PyTorch eager vs ONNX Runtime on the exported graph, greedy with a KV cache.

Same model (same random init), same prompts of a fixed length, same decoding loop
(``chatforge.inference.decoding.sample_tokens`` over ``TorchStep`` and ``OrtStep``, EOS ignored so both
decode the same number of tokens), at two model sizes, measured side by side in one run: rounds
alternate between the runtimes and the best round of each counts (the machine is shared, so the
best is the least disturbed). Time to first token is the prefill of the prompt plus the first
token; decode tokens/s counts the tokens after it. ``model.generate`` (PyTorch's own loop, prefill
included) is timed beside them for reference.

On a shared machine, ``--threads 1`` gives the steadier figures: with as many threads as cores and
other work running, PyTorch's OpenMP threads wait on each other at every op (ONNX Runtime's pool
suffers far less), which measures the load more than the runtimes.

Run: python bench/inference.py [--prompt-tokens 64] [--new-tokens 64] [--prompts 4] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pretrain_throughput import synthetic_texts  # noqa: E402
from chatforge.inference.decoding import TorchStep  # noqa: E402
from chatforge.inference.export import ExportConfig, export_policy  # noqa: E402
from chatforge.inference.onnx_runtime import OrtStep, load_export  # noqa: E402
from chatforge.inference.verify import compare_speed
from chatforge.train.model import ModelConfig, build_model, count_parameters  # noqa: E402
from chatforge.train.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402

SIZES = {
    # the params.yaml (tiny profile) model, and one ~4x bigger in compute (as bench/pretrain_throughput.py)
    "tiny (params.yaml)": ModelConfig(),
    "small": ModelConfig(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=768),
}
VOCAB = 4096


def generate_tokens_per_s(model, prompts: list[list[int]], new_tokens: int) -> float:
    """``model.generate`` greedy for exactly ``new_tokens`` tokens per prompt: tokens / wall time, prefill included."""
    start = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=64, help="tokens in every prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for chatty in ("onnx_ir", "onnxscript"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = train_tokenizer(synthetic_texts(300_000), TokenizerConfig(vocab_size=VOCAB, min_frequency=2))
    rng = random.Random(0)
    prompts = [[rng.randrange(len(tokenizer)) for _ in range(args.prompt_tokens)] for _ in range(args.prompts)]
    print(f"batch 1, {args.prompts} prompts x {args.prompt_tokens} tokens, {args.new_tokens} new tokens each, "
          f"greedy with KV cache, vocab {len(tokenizer)}, torch {torch.get_num_threads()} threads, "
          f"best of {args.rounds} rounds")

    rows = []
    for size, mcfg in SIZES.items():
        model = build_model(mcfg, tokenizer, seed=0).eval()
        with tempfile.TemporaryDirectory() as tmp:
            export_policy(model, tokenizer, Path(tmp), ExportConfig(input=Path("random-init"), output=Path(tmp)))
            session, meta = load_export(Path(tmp), threads=args.threads)
            steps = {"torch": TorchStep(model), "ort": OrtStep(session, meta)}
            best = {name: {"ttft_ms": float("inf"), "tokens_per_s": 0.0} for name in steps}
            generate = 0.0
            for _ in range(args.rounds):
                for name, speed in compare_speed(steps, prompts, args.new_tokens).items():
                    best[name]["ttft_ms"] = min(best[name]["ttft_ms"], speed["ttft_ms"])
                    best[name]["tokens_per_s"] = max(best[name]["tokens_per_s"], speed["tokens_per_s"])
                generate = max(generate, generate_tokens_per_s(model, prompts, args.new_tokens))
        t, o = best["torch"], best["ort"]
        rows.append((size, count_parameters(model) / 1e6, t["ttft_ms"], o["ttft_ms"], t["ttft_ms"] / o["ttft_ms"],
                     t["tokens_per_s"], o["tokens_per_s"], o["tokens_per_s"] / t["tokens_per_s"], generate))

    header = ("model", "params (M)", "TTFT PyTorch (ms)", "TTFT ORT (ms)", "TTFT PyTorch/ORT",
              "decode PyTorch (tok/s)", "decode ORT (tok/s)", "decode ORT/PyTorch", "generate() tok/s (incl. prefill)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size, params, ttft_t, ttft_o, ttft_ratio, tps_t, tps_o, tps_ratio, gen in rows:
        print(f"| {size} | {params:.2f} | {ttft_t:.1f} | {ttft_o:.1f} | {ttft_ratio:.2f} | {tps_t:,.0f} | {tps_o:,.0f} "
              f"| {tps_ratio:.2f} | {gen:,.0f} |")


if __name__ == "__main__":
    main()
