"""The reply probe's features read at a middle layer: a forward pass stopped at that layer
(chatforge.train.reply_probe.hidden_states_at) against the full pass with every hidden state, side by
side on the same batches of real HH conversations, rounds alternating, best round counted.

Run: python bench/reply_probe.py --model models/sft [--layer 18] [--pairs 64] [--rounds 3]
(a causal LM directory, e.g. the smollm2 profile's models/sft; ../shared/data beside the repo)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def batches(tokenizer, pairs: list[dict], max_length: int, batch_size: int):
    """(input ids, attention mask) batches of the chosen conversations, padded as the RL evaluation pads."""
    from chatforge.rl.evaluation import left_padded
    from chatforge.train.chat_format import encode_chat, reply_pair

    seqs = [encode_chat(reply_pair(p["prompt"], p["chosen"]), tokenizer, max_length).input_ids for p in pairs]
    out = [left_padded(seqs[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(seqs), batch_size)]
    return out, sum(len(s) for s in seqs)


def main() -> None:
    import torch

    from chatforge.data.preferences import read_preferences
    from chatforge.train.loading import load_model_and_tokenizer
    from chatforge.train.reply_probe import hidden_states_at

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=18)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model, head="reward")
    backbone, layers = model.eval().base_model, model.config.num_hidden_layers
    data, tokens = batches(tokenizer, read_preferences(HH).records[: args.pairs], args.max_length, args.batch)

    def full():
        return [backbone(input_ids=i, attention_mask=m, output_hidden_states=True).hidden_states[args.layer]
                for i, m in data]

    def stopped():
        return [hidden_states_at(backbone, args.layer, layers, input_ids=i, attention_mask=m) for i, m in data]

    best = {"full pass": float("inf"), f"stopped at layer {args.layer}": float("inf")}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, run in zip(best, (full, stopped)):
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
        diff = max((a - b).abs().max().item() for a, b in zip(full(), stopped()))
    base = best["full pass"]
    print(f"{args.model}: {layers} layers, {args.pairs} HH conversations, {tokens} tokens, best of {args.rounds}")
    print(f"| {'features at layer ' + str(args.layer):<28} | {'seconds':>8} | {'tokens/s':>9} | {'vs full':>7} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|{'-' * 9}|")
    for name, seconds in best.items():
        print(f"| {name:<28} | {seconds:8.2f} | {tokens / seconds:9.0f} | {seconds / base:7.3f} |")
    print(f"max |difference| of the hidden states: {diff:.2e}")


if __name__ == "__main__":
    main()
