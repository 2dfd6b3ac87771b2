"""Verification of an exported graph against PyTorch: logit parity, greedy match and decode speed.

``verify_onnx`` runs ONNX Runtime beside PyTorch on the same inputs: the largest absolute logit
difference at prefill, decode and mixed shapes and on the verification prompts, greedy tokens
through ``OrtStep`` + ``sample_tokens`` against ``model.generate``, and decode speed of the same
loop over both runtimes. ``verification_failures`` says what did not hold; the stage writes the
report first and then fails with those messages. The TensorRT engine is checked with the same
``parity``, ``greedy_generate`` and ``compare_speed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.inference.export import ExportConfig, cache_from_flat
from chatforge.inference.onnx_runtime import MODEL_FILE

log = logging.getLogger(__name__)



def prompt_ids(tokenizer, prompts: list[list[dict[str, str]]], context_length: int, reserve: int) -> list[list[int]]:
    """Each prompt rendered with the chat template and the generation prompt, as ids."""
    from chatforge.train.chat_format import encode_chat

    return [encode_chat(p, tokenizer, context_length, add_generation_prompt=True, reserve=reserve).input_ids
            for p in prompts]


def max_diff(a, b, mask=None) -> float:
    """Largest |a - b| (torch tensors; with ``mask (B, T)`` only over positions where it is 1)."""
    diff = (a.float() - b.float()).abs()
    if mask is not None:
        diff = diff[mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def parity(reference, candidate, shapes: list[list[int]], prompts: list[list[int]], info: dict[str, int],
           seed: int) -> dict[str, float]:
    """Max |logit difference| between two steps at (batch, seq, past) ``shapes`` with random tokens
    after a cache the reference made from ``past`` random tokens, then at prefill and one decode step
    of each prompt.

    The cache comes from the model itself, not from ``randn``: random keys and values are far from
    what any layer produces, and on a 30-layer model they blow fp32 rounding up to ~4e-3 where real
    caches stay near 1e-4 (SmolLM2-135M). ``reference`` is a ``TorchStep`` (its model on any device);
    ``candidate`` any step with a ``cache_from_torch`` (ONNX Runtime, TensorRT), which gets the same
    cache in its own type.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    config = reference.model.config
    for batch, seq, past in shapes:
        ids = torch.randint(0, info["vocab_size"], (batch, seq), generator=gen)
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        kv = None
        if past:
            prefix = torch.randint(0, info["vocab_size"], (batch, past), generator=gen).to(reference.model.device)
            with torch.no_grad():
                _, made = reference(prefix, torch.ones_like(prefix), None)
            kv = [t.clone() for layer in made.layers for t in (layer.keys, layer.values)]
        ref, _ = reference(ids, mask, cache_from_flat([t.clone() for t in kv], config) if kv else None)
        got, _ = candidate(ids, mask, candidate.cache_from_torch(kv) if kv else None)
        out[f"batch{batch}_seq{seq}_past{past}"] = max_diff(ref, got)
    prefill = decode = 0.0
    for p in prompts:
        ids = torch.tensor([p])
        ref, ref_past = reference(ids, torch.ones_like(ids), None)
        got, got_past = candidate(ids, torch.ones_like(ids), None)
        prefill = max(prefill, max_diff(ref, got))
        token = ref[:, -1:].argmax(-1)                                      # (1, 1) the same next token for both
        mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
        ref, _ = reference(token, mask, ref_past)
        got, _ = candidate(token, mask, got_past)
        decode = max(decode, max_diff(ref, got))
    out["prompt_prefill"], out["prompt_decode"] = prefill, decode
    return out


def greedy_generate(model, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """PyTorch's own greedy decoding (``model.generate``), nothing else switched on."""
    import torch

    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                             max_new_tokens=max_new_tokens, repetition_penalty=1.0, eos_token_id=eos_id,
                             pad_token_id=eos_id)
    return out[0, len(prompt):].tolist()


def greedy_loop(step, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy tokens through a step and chatforge's decoding loop."""
    from chatforge.inference.decoding import DecodingConfig, sample_tokens

    return list(sample_tokens(step, prompt, DecodingConfig(max_new_tokens=max_new_tokens, temperature=0.0),
                              {eos_id}))


@dataclass(frozen=True)
class DecodeTiming:
    first_token_s: float        # prefill of the prompt + the first token
    decode_tokens: int          # tokens after the first
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("inf")


def time_decode(step, prompt: list[int], new_tokens: int) -> DecodeTiming:
    """Greedy-decode ``new_tokens`` tokens (no EOS stop, so every runtime does the same work)."""
    from chatforge.inference.decoding import DecodingConfig, sample_tokens

    tokens = sample_tokens(step, prompt, DecodingConfig(max_new_tokens=new_tokens, temperature=0.0), set())
    start = time.perf_counter()
    next(tokens)
    first = time.perf_counter()
    rest = sum(1 for _ in tokens)
    return DecodeTiming(first - start, rest, time.perf_counter() - first)


def compare_speed(steps: dict[str, Any], prompts: list[list[int]], new_tokens: int) -> dict[str, dict[str, float]]:
    """Time to first token and decode tokens/s of each step, measured side by side: for each prompt
    every step runs in turn, after one untimed warm-up run each (ONNX Runtime's first run allocates)."""
    for step in steps.values():
        time_decode(step, prompts[0], 2)
    runs: dict[str, list[DecodeTiming]] = {name: [] for name in steps}
    for prompt in prompts:
        for name, step in steps.items():
            runs[name].append(time_decode(step, prompt, new_tokens))
    return {name: {"ttft_ms": 1000 * sum(t.first_token_s for t in ts) / len(ts),
                   "tokens_per_s": sum(t.decode_tokens for t in ts) / sum(t.decode_s for t in ts)}
            for name, ts in runs.items()}


def verify_onnx(model, tokenizer, export_dir: Path, cfg: ExportConfig, seed: int) -> dict[str, Any]:
    """The report's ``onnx`` section: parity, greedy match and speed of the graph in ``export_dir``."""
    from chatforge.inference.decoding import TorchStep
    from chatforge.inference.onnx_runtime import OrtStep, load_export

    session, meta = load_export(export_dir)
    torch_step, ort_step = TorchStep(model.float()), OrtStep(session, meta)
    prompts = prompt_ids(tokenizer, cfg.prompts, meta["context_length"],
                         max(cfg.max_new_tokens, cfg.benchmark_tokens))
    diffs = parity(torch_step, ort_step, cfg.parity_shapes, prompts, meta, seed)
    eos = tokenizer.eos_token_id
    matches, tokens = [], 0
    for i, p in enumerate(prompts):
        want = greedy_generate(model, p, cfg.max_new_tokens, eos)
        got = greedy_loop(ort_step, p, cfg.max_new_tokens, eos)
        matches.append(want == got)
        tokens += len(want)
        if want != got:
            log.warning("export: prompt %d: ONNX Runtime greedy %s != PyTorch generate %s", i, got, want)
    speed = compare_speed({"torch": torch_step, "ort": ort_step}, prompts, cfg.benchmark_tokens)
    worst = max(diffs.values())
    log.info("export: ONNX Runtime vs PyTorch: max |logit diff| %.2e, greedy %d/%d prompts equal, "
             "decode %.0f vs %.0f tokens/s", worst, sum(matches), len(matches),
             speed["ort"]["tokens_per_s"], speed["torch"]["tokens_per_s"])
    return {
        "path": str(cfg.output / MODEL_FILE),
        "sha256": meta["sha256"][MODEL_FILE],
        "opset": meta["opset"],
        "dtype": meta["dtype"],
        "max_abs_diff": worst,
        "tolerance": cfg.tolerance,
        "parity": diffs,
        "greedy_match": all(matches),
        "greedy_prompts_matched": sum(matches),
        "greedy_prompts": len(matches),
        "greedy_tokens": tokens,
        "torch_tokens_per_s": speed["torch"]["tokens_per_s"],
        "ort_tokens_per_s": speed["ort"]["tokens_per_s"],
        "torch_ttft_ms": speed["torch"]["ttft_ms"],
        "ort_ttft_ms": speed["ort"]["ttft_ms"],
        "ort_vs_torch": speed["ort"]["tokens_per_s"] / speed["torch"]["tokens_per_s"],
        "export_seconds": meta["export_seconds"],
        "size_mb": round(sum((export_dir / f).stat().st_size for f in meta["sha256"]) / 1e6, 3),
    }


def verification_failures(report: dict[str, Any]) -> list[str]:
    """What did not hold, one message per check (empty when the export is verified)."""
    failures = []
    for name, section in (("onnx", report["onnx"]), ("tensorrt", report["tensorrt"])):
        if name == "tensorrt" and section.get("status") != "built":
            continue
        if not section["max_abs_diff"] <= section["tolerance"]:
            failures.append(f"{name}: max |logit diff| {section['max_abs_diff']:.3e} is above the tolerance "
                            f"{section['tolerance']:.1e} ({section['parity']})")
        if not section["greedy_match"]:
            failures.append(f"{name}: greedy tokens differ from PyTorch generate on "
                            f"{section['greedy_prompts'] - section['greedy_prompts_matched']} of "
                            f"{section['greedy_prompts']} prompts")
    return failures
