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

Verification (``chatforge.inference.verify``) runs ONNX Runtime beside PyTorch on the same inputs: the largest
absolute logit difference at prefill, decode and mixed shapes and on the verification prompts,
greedy tokens through ``OrtStep`` + ``sample_tokens`` against ``model.generate``, and decode speed
of the same loop over both runtimes. ``verification_failures`` says what did not hold; the stage
writes the report first and then fails with those messages.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatforge.core.config import field_help
from chatforge.core.hashing import file_sha256
from chatforge.inference.onnx_runtime import METADATA_FILE, MODEL_FILE

log = logging.getLogger(__name__)

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


def cache_from_flat(kv, config):
    """A transformers ``DynamicCache`` from flat per-layer tensors ``(k0, v0, k1, v1, ...)``."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])), config=config)


def _flat_kv_decoder():
    import torch

    class FlatKVDecoder(torch.nn.Module):
        """(input_ids, attention_mask, k0, v0, k1, v1, ...) -> (logits, k0', v0', ...).

        The HF cache object is built inside forward from flat tensors: passing a DynamicCache through
        the exported signature is brittle (pytorch/pytorch#155862). KV layout (B, n_kv, P, Dh).
        """

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, *kv):
            cache = cache_from_flat(kv, self.lm.config)
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
        # GPT-2 style configs have no grouped-query attention: one key/value head per query head.
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
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
    from chatforge.core.files import write_json

    path = out_dir / METADATA_FILE
    write_json(path, meta)
    return path


def load_policy(model_dir: Path):
    """(model in fp32 on the CPU, tokenizer) from a model directory."""
    from chatforge.train.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dir, hint="run the stage that writes it first (dvc repro rlhf) "
                                                    "or set export.input")
