"""The export stage's library: the policy as an ONNX graph with a KV cache, verified against PyTorch.

What gets written (``export.output``, default models/export/):

    model.onnx + model.onnx.data    fp32 graph for CPU (torch.onnx.export, dynamo=True, opset pinned)
    chatforge_export.json           metadata: shapes, input/output names, opset, dtype, sha256 of each file
    tokenizer files                 so the directory alone is a chat model (load_chat_model(dir, onnx=True))
    fp16/model.onnx(+.data)         GPU only: the fp16 graph; TensorRT 11 takes its precision from the ONNX
    tensorrt/model.plan             GPU with tensorrt only, and only when the engine was built and checked

The graph is the causal LM wrapped with flat tensor inputs and outputs (``FlatKVDecoder``):
``input_ids (B, T)``, ``attention_mask (B, P+T)`` and ``past.{i}.key|value (B, n_kv, P, Dh)`` per
layer in; ``logits (B, T, V)`` and ``present.{i}.key|value (B, n_kv, P+T, Dh)`` out, with batch,
sequence and past length dynamic. One graph serves prefill (P = 0) and decode (T = 1).

Verification (``verify_onnx``) runs ONNX Runtime beside PyTorch on the same inputs: the largest
absolute logit difference at prefill, decode and mixed shapes and on the verification prompts,
greedy tokens through ``OrtStep`` + ``sample_tokens`` against ``model.generate``, and decode speed
of the same loop over both runtimes. ``verification_failures`` says what did not hold; the stage
writes the report first and then fails with those messages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.config import field_help
from chatforge.onnx_runtime import METADATA_FILE, MODEL_FILE

log = logging.getLogger(__name__)

TENSORRT_INSTALL = "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"

DEFAULT_PROMPTS = [
    [{"role": "user", "content": "Hello! How are you today?"}],
    [{"role": "user", "content": "What do you like to do at the weekend?"}],
    [{"role": "system", "content": "You are a friendly assistant."},
     {"role": "user", "content": "Can you recommend a good book?"}],
    [{"role": "user", "content": "I just got back from a trip to the mountains."},
     {"role": "assistant", "content": "That sounds great! How was it?"},
     {"role": "user", "content": "Cold, but beautiful. Have you ever seen snow?"}],
]


@dataclass(frozen=True)
class ExportConfig:
    input: Path = field_help(Path("models/policy"), "the model directory to export (the RLHF policy)")
    output: Path = field_help(Path("models/export"), "the export directory (ONNX graph, metadata, tokenizer)")
    report: Path = field_help(Path("reports/export.json"), "verification figures (a DVC metrics file)")
    opset: int = field_help(18, "ONNX opset, pinned so TensorRT's parser gets a known one")
    max_batch: int = field_help(16, "largest batch the graph is declared for (and TensorRT's profile maximum)")
    prompts: list[list[dict[str, str]]] = field_help(DEFAULT_PROMPTS, "chat prompts (message lists) to verify on")
    max_new_tokens: int = field_help(24, "greedy tokens per prompt that ONNX Runtime must match token for token")
    benchmark_tokens: int = field_help(32, "tokens decoded per prompt (EOS ignored) to measure tokens/s")
    tolerance: float = field_help(1.0e-4, "largest absolute logit difference allowed, fp32 ONNX vs PyTorch")
    parity_shapes: list[list[int]] = field_help([[1, 6, 0], [3, 1, 9], [2, 4, 3]],
                                                "(batch, seq, past) shapes checked with random tokens and cache")
    fp16: Literal["auto", "off"] = field_help("auto", "auto: also export an fp16 graph when a CUDA GPU is present")
    tensorrt: Literal["auto", "required", "off"] = field_help(
        "auto", "auto: build an engine when tensorrt imports and a CUDA GPU is present; required: fail otherwise")
    tensorrt_tolerance: float = field_help(5.0e-2, "largest logit difference, TensorRT fp16 vs PyTorch fp16")

    def __post_init__(self) -> None:
        if self.max_batch < 2:
            raise ValueError("'max_batch' must be at least 2 (torch.export specialises a dimension of size 1)")
        if not self.prompts:
            raise ValueError("'prompts' needs at least one prompt to verify on")
        if self.max_new_tokens < 1 or self.benchmark_tokens < 2:
            raise ValueError("'max_new_tokens' must be >= 1 and 'benchmark_tokens' >= 2")
        if any(len(s) != 3 or s[0] < 1 or s[1] < 1 or s[2] < 0 for s in self.parity_shapes):
            raise ValueError("each of 'parity_shapes' is [batch >= 1, seq >= 1, past >= 0]")


class ExportError(RuntimeError):
    """The export cannot be made as configured (the stage fails with this message)."""


class ExportVerificationFailed(ExportError):
    """The exported graph (or engine) does not reproduce the PyTorch model."""


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

def kv_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{part}" for i in range(num_layers) for part in ("key", "value")]


def graph_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph."""
    past = kv_names(num_layers)
    return ["input_ids", "attention_mask", *past], ["logits", *[n.replace("past", "present", 1) for n in past]]


def _flat_kv_decoder():
    import torch
    from transformers import DynamicCache

    class FlatKVDecoder(torch.nn.Module):
        """(input_ids, attention_mask, k0, v0, k1, v1, ...) -> (logits, k0', v0', ...).

        The HF cache object is built inside forward from flat tensors: passing a DynamicCache through
        the exported signature is brittle (pytorch/pytorch#155862). KV layout (B, n_kv, P, Dh).
        """

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, *kv):
            cache = DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])), config=self.lm.config)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
            return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])

    return FlatKVDecoder


def flat_kv_decoder(model):
    """``model`` (a transformers causal LM) wrapped with flat tensor I/O, in eval mode."""
    return _flat_kv_decoder()(model).eval()


def shape_info(config) -> dict[str, int]:
    """The sizes that the graph's inputs are laid out by, from a transformers config."""
    return {
        "num_layers": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "num_kv_heads": int(config.num_key_value_heads),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads),
        "vocab_size": int(config.vocab_size),
        "context_length": int(config.max_position_embeddings),
    }


def export_graph(model, onnx_file: Path, *, opset: int, max_batch: int) -> None:
    """Write ``onnx_file`` (+ its ``.data`` side file) from ``model`` on its own device and dtype."""
    import torch
    from torch.export import Dim

    info = shape_info(model.config)
    ctx, dtype, device = info["context_length"], model.dtype, model.device
    inputs, outputs = graph_names(info["num_layers"])
    batch, seq = Dim("batch", min=1, max=max_batch), Dim("seq", min=1, max=ctx)
    past, total = Dim("past", min=0, max=ctx), Dim("total", min=1, max=2 * ctx)
    # Every dynamic dimension >= 2 in the example: torch.export specialises sizes 0 and 1. ONNX
    # Runtime still runs the graph at past = 0 (prefill) and seq = 1 (decode).
    example = (torch.randint(0, info["vocab_size"], (2, 4), device=device),
               torch.ones(2, 7, dtype=torch.int64, device=device),
               *[torch.zeros(2, info["num_kv_heads"], 3, info["head_dim"], dtype=dtype, device=device)
                 for _ in inputs[2:]])
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Harmless: the batch/past names of several inputs are merged into one symbol.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        torch.onnx.export(flat_kv_decoder(model), example, str(onnx_file), dynamo=True, opset_version=opset,
                          external_data=True, verbose=False, input_names=inputs, output_names=outputs,
                          # mirrors the arguments: the *kv vararg is one tuple entry of per-tensor specs
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: total},
                                          tuple({0: batch, 2: past} for _ in inputs[2:])))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_files(onnx_file: Path) -> dict[str, str]:
    """{file name: sha256} of a graph and its side file."""
    files = [onnx_file] + [p for p in [onnx_file.with_name(onnx_file.name + ".data")] if p.exists()]
    return {p.name: file_sha256(p) for p in files}


def export_policy(model, tokenizer, out_dir: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Write the fp32 graph, the tokenizer and the metadata into ``out_dir``; return the metadata."""
    import onnx
    import torch
    import transformers

    model = model.float().eval()
    start = time.perf_counter()
    export_graph(model, out_dir / MODEL_FILE, opset=cfg.opset, max_batch=cfg.max_batch)
    seconds = time.perf_counter() - start
    tokenizer.save_pretrained(out_dir)
    inputs, outputs = graph_names(model.config.num_hidden_layers)
    files = graph_files(out_dir / MODEL_FILE)
    log.info("export: %s written in %.1f s (opset %d, sha256 %s)", out_dir / MODEL_FILE, seconds, cfg.opset,
             files[MODEL_FILE][:12])
    meta = {
        **shape_info(model.config),
        "model_file": MODEL_FILE,
        "dtype": "float32",
        "opset": cfg.opset,
        "max_batch": cfg.max_batch,
        "input_names": inputs,
        "output_names": outputs,
        "kv_layout": "(batch, num_kv_heads, past, head_dim)",
        "eos_token_id": tokenizer.eos_token_id,
        "sha256": files,
        "source": str(cfg.input),
        "export_seconds": round(seconds, 2),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__},
    }
    write_metadata(out_dir, meta)
    return meta


def write_metadata(out_dir: Path, meta: dict[str, Any]) -> Path:
    from chatforge.jsonl import write_json

    path = out_dir / METADATA_FILE
    write_json(path, meta)
    return path


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

def prompt_ids(tokenizer, prompts: list[list[dict[str, str]]], context_length: int, reserve: int) -> list[list[int]]:
    """Each prompt rendered with the chat template and the generation prompt, as ids."""
    from chatforge.conversation import encode_chat

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
    and a random cache, then at prefill and one decode step of each prompt.

    ``reference`` is a ``TorchStep`` (its model on any device); ``candidate`` any step with a
    ``cache_from_torch`` (ONNX Runtime, TensorRT), which gets the same random cache in its own type.
    """
    import torch
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    config = reference.model.config
    dtype, device = reference.model.dtype, reference.model.device
    for batch, seq, past in shapes:
        ids = torch.randint(0, info["vocab_size"], (batch, seq), generator=gen)
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        kv = [torch.randn(batch, info["num_kv_heads"], past, info["head_dim"], generator=gen)
              .to(device=device, dtype=dtype) for _ in range(2 * info["num_layers"])]
        cache = DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])), config=config) if past else None
        ref, _ = reference(ids, mask, cache)
        got, _ = candidate(ids, mask, candidate.cache_from_torch(kv) if past else None)
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
    from chatforge.generation import DecodingConfig, sample_tokens

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
    from chatforge.generation import DecodingConfig, sample_tokens

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
    from chatforge.generation import TorchStep
    from chatforge.onnx_runtime import OrtStep, load_export

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


# --------------------------------------------------------------------------------------------
# GPU: the fp16 graph and the TensorRT engine
# --------------------------------------------------------------------------------------------

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def tensorrt_unavailable(cfg: ExportConfig) -> str | None:
    """Why no TensorRT engine can be built here, or None when one can."""
    if cfg.tensorrt == "off":
        return "export.tensorrt is off"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    try:
        import tensorrt  # noqa: F401
    except Exception as err:                     # the placeholder wheel and driver problems raise all kinds
        return f"tensorrt does not import ({type(err).__name__}: {err})"
    if not cuda_available():
        return "no CUDA GPU"
    if cfg.fp16 == "off":
        return "export.fp16 is off (the engine is built from the fp16 graph: TensorRT 11 takes precision from it)"
    return None


def tensorrt_command() -> str:
    """The command that builds the engine on a GPU machine with this code."""
    return f"{TENSORRT_INSTALL} && python -m stages.export --set export.tensorrt=required"


def check_tensorrt_requirement(cfg: ExportConfig) -> None:
    """Fail before any work when ``export.tensorrt=required`` cannot be met."""
    reason = tensorrt_unavailable(cfg)
    if cfg.tensorrt == "required" and reason:
        raise ExportError(f"export.tensorrt is 'required' but {reason}; on a GPU machine run: {tensorrt_command()}")


def gpu_exports(model_dir: Path, tokenizer, out_dir: Path, cfg: ExportConfig, meta: dict[str, Any],
                seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's ``fp16`` and ``tensorrt`` sections; what was written is added to the metadata file."""
    if cfg.fp16 == "off":
        fp16 = {"exported": False, "reason": "export.fp16 is off"}
    elif not cuda_available():
        fp16 = {"exported": False, "reason": "no CUDA GPU: the fp16 graph is exported on a GPU; the CPU graph is fp32"}
    else:
        fp16 = export_fp16(model_dir, out_dir, cfg)
        meta["fp16"] = fp16
        write_metadata(out_dir, meta)
    reason = tensorrt_unavailable(cfg)
    if reason:
        log.info("export: TensorRT skipped: %s", reason)
        return fp16, {"status": "skipped", "reason": reason, "command": tensorrt_command()}
    from chatforge.tensorrt_engine import build_and_verify

    trt = build_and_verify(model_dir, tokenizer, out_dir, cfg, meta, seed)
    # ONNX Runtime here is the CPU build, whose fp16 kernels are incomplete: the engine checks the fp16 graph.
    fp16["verified_by_tensorrt"] = trt["status"] == "built"
    if trt["status"] == "built":
        meta["tensorrt"] = {k: trt[k] for k in ("path", "sha256", "version", "gpu", "profiles")}
    write_metadata(out_dir, meta)
    return fp16, trt


def load_fp16_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float16).to("cuda").eval()


def export_fp16(model_dir: Path, out_dir: Path, cfg: ExportConfig) -> dict[str, Any]:
    """fp16/model.onnx from the model loaded in fp16 on the GPU."""
    start = time.perf_counter()
    onnx_file = out_dir / "fp16" / MODEL_FILE
    export_graph(load_fp16_model(model_dir), onnx_file, opset=cfg.opset, max_batch=cfg.max_batch)
    files = graph_files(onnx_file)
    log.info("export: %s written in %.1f s", onnx_file, time.perf_counter() - start)
    return {"exported": True, "path": str(onnx_file.relative_to(out_dir)), "dtype": "float16", "sha256": files}


def load_policy(model_dir: Path):
    """(model in fp32 on the CPU, tokenizer) from a model directory."""
    import torch
    from transformers import AutoModelForCausalLM

    from chatforge.tokenizer import load_tokenizer

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json); run the stage that "
                                "writes it first (dvc repro rlhf) or set export.input")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, load_tokenizer(model_dir)

