"""PPO settings side by side on a tiny model: held-out reward before/after, KL, wall time.

Prompts are the first turns of Anthropic HH (harmless-base test split, ../shared/data), a
byte-level BPE is trained on them in-process, and the policy is a random 2-layer Llama, so
this measures the optimiser (does PPO raise a reward at bounded KL, and at what cost), not
chat quality. Two rewards: a callable (share of ASCII letters in the reply: learnable from a
random start) and a random reward model directory (the RM code path and its cost).

Run: python bench/ppo.py [--steps 12]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))          # `python bench/ppo.py` imports this checkout's chatforge
# ../shared/data beside the repo (a worktree sits one level deeper, so look upward)
SHARED_DATA = next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
                   REPO.parent / "shared" / "data")
HH = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"


def ascii_letters(prompts, replies):
    return [sum(c.isascii() and c.isalpha() for c in r) / max(1, len(r)) for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import LlamaForSequenceClassification

    from chatforge.data.records import RecordError, normalize_preference
    from chatforge.rl.ppo import PPOConfig, score_policy, train_ppo
    from chatforge.train.model import ModelConfig, build_model, llama_config
    from chatforge.train.tokenizer import TokenizerConfig, train_tokenizer

    records = []
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(normalize_preference(json.loads(line)))
            except RecordError:                     # a few HH pairs have an empty reply
                continue
            if len(records) == args.prompts:
                break
    prompts = [r["prompt"][:1] for r in records]                         # the first user turn
    train, held_out = prompts[: -64], prompts[-64:]
    texts = [m["content"] for p in prompts for m in p] + [r["chosen"] for r in records]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=1024, min_frequency=2))
    model_cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                            context_length=256)

    tmp = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    policy_dir, rm_dir = tmp / "policy", tmp / "reward"
    build_model(model_cfg, tok, seed=0).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    rm_config = llama_config(model_cfg, tok)
    rm_config.num_labels = 1
    torch.manual_seed(1)
    LlamaForSequenceClassification(rm_config).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)

    base = dict(steps=args.steps, rollout_batch_size=32, mini_batch_size=16, lr=5.0e-3, max_new_tokens=8,
                max_prompt_length=64, seed=0, save_every=0)
    # A random RM scores every reply about the same (it reads the same final "\n" token and has
    # learnt nothing), so its rows measure the cost of the RM path, not a gain.
    runs = [
        ("letters", ascii_letters, dict(ppo_epochs=1)),
        ("letters", ascii_letters, dict(ppo_epochs=2)),
        ("letters", ascii_letters, dict(ppo_epochs=4, kl_stop=0.05)),
        ("letters", ascii_letters, dict(ppo_epochs=2, kl_control="fixed", init_kl_coef=0.2)),
        ("random RM", rm_dir, dict(ppo_epochs=2)),
        ("random RM", rm_dir, dict(ppo_epochs=2, ptx_coef=1.0)),
    ]
    ptx = [r["chosen"] for r in records[:200]]
    rows = []
    for reward_name, reward, extra in runs:
        cfg = PPOConfig(**base, **extra)
        out = tmp / f"out-{len(rows)}"
        before = score_policy(policy_dir, reward, held_out, cfg)
        t0 = time.perf_counter()
        summary = train_ppo(policy_dir, reward, train, cfg, out, ptx_texts=ptx)
        wall = time.perf_counter() - t0
        after = score_policy(out, reward, held_out, cfg)
        setting = ", ".join(f"{k}={v}" for k, v in extra.items())
        rows.append((reward_name, setting, before["reward"], after["reward"], summary["kl_end"],
                     summary["kl_coef_end"], wall, wall / cfg.steps))
        print(f"done: {reward_name} {setting} ({wall:.1f} s)", flush=True)

    print(f"\nPPO on a random 2-layer Llama (hidden 64, vocab 1024), {args.steps} steps x "
          f"{base['rollout_batch_size']} rollouts, {base['max_new_tokens']} new tokens, lr {base['lr']}, "
          f"held-out = {len(held_out)} HH prompts")
    head = ("reward", "setting", "held-out before", "after", "gain", "KL end (nats)", "kl_coef end",
            "wall s", "s/step")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, setting, b, a, kl, coef, wall, per in rows:
        print(f"| {name} | {setting} | {b:.3f} | {a:.3f} | {a - b:+.3f} | {kl:.2f} | {coef:.4f} | "
              f"{wall:.1f} | {per:.2f} |")


if __name__ == "__main__":
    main()
