"""TensorRT engine from the fp16 ONNX graph, run as a decoding step, checked against PyTorch fp16.

Run only where ``tensorrt`` imports and a CUDA GPU is present (``chatforge.inference.gpu_export`` checks
first and reports "skipped" with the reason otherwise); ``tensorrt`` itself is imported on first use. The engine is built with the Python API
because it needs two optimisation profiles, which ``trtexec`` builds one per call:

    profile 0  prefill   past = 0,  seq 1..context                  (the prompt)
    profile 1  decode    seq = 1,   past 1..context-1               (one token at a time)

TensorRT 11 is always strongly typed: ``BuilderFlag.FP16`` is gone and the precision comes from
the ONNX, hence the fp16 graph. ``STRONGLY_TYPED`` is accepted (and ignored on 11.x), so the same
code builds on 10.x. Engines are tied to the GPU and the TensorRT version: the metadata records both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from chatforge.inference.decoding import TorchStep

log = logging.getLogger(__name__)

TENSORRT_INSTALL = "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"
PLAN_FILE = Path("tensorrt") / "model.plan"
PREFILL, DECODE = 0, 1


def _trt():
    """``tensorrt``, imported on first use so that this module imports (and its docs render) without it."""
    import tensorrt

    return tensorrt


def torch_dtype(trt_dtype) -> torch.dtype:
    trt = _trt()
    return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}[trt_dtype]


def profiles(meta: dict[str, Any]) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """(min, opt, max) shape per input for the prefill and the decode profile."""
    ctx, max_b = meta["context_length"], meta["max_batch"]
    kv = lambda b, p: (b, meta["num_kv_heads"], p, meta["head_dim"])      # noqa: E731
    opt_seq, opt_past = min(256, ctx), min(512, ctx - 1)
    return [
        {"input_ids": ((1, 1), (1, opt_seq), (max_b, ctx)),
         "attention_mask": ((1, 1), (1, opt_seq), (max_b, ctx)),
         "past": (kv(1, 0), kv(1, 0), kv(max_b, 0))},
        {"input_ids": ((1, 1), (1, 1), (max_b, 1)),
         "attention_mask": ((1, 2), (1, opt_past + 1), (max_b, ctx)),
         "past": (kv(1, 1), kv(1, opt_past), kv(max_b, ctx - 1))},
    ]


def build_plan(onnx_file: Path, plan_file: Path, meta: dict[str, Any], workspace_gb: int = 4) -> None:
    """Parse ``onnx_file`` (by path, so its .data side file is found) and write the serialized engine."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)                                        # needs CUDA
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("ONNX parse failed: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gb << 30)
    for spec in profiles(meta):
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, *spec["past" if name.startswith("past.") else name])
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)            # None on failure (logged by TRT)
    if blob is None:
        raise RuntimeError("build_serialized_network returned None (see the TensorRT log above)")
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_bytes(blob)


class TrtStep:
    """A ``Step`` through the engine: one execution context per profile; the cache is a list of CUDA tensors."""

    def __init__(self, plan_file: Path, meta: dict[str, Any]):
        trt = _trt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan_file.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_file}: TensorRT could not deserialize the engine")
        # TensorRT runs on torch's current stream, so it is ordered after the ops that made its inputs.
        self.stream = torch.cuda.current_stream().cuda_stream
        self.contexts = []
        for profile in (PREFILL, DECODE):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(profile, self.stream)
            self.contexts.append(context)
        self.input_names, self.output_names = meta["input_names"], meta["output_names"]
        self.kv_heads, self.head_dim, self.layers = meta["num_kv_heads"], meta["head_dim"], meta["num_layers"]
        # An empty tensor has no storage, but every binding needs a valid address.
        self.placeholder = torch.zeros(16, dtype=torch.float16, device="cuda")

    def cache_from_torch(self, tensors) -> list[torch.Tensor]:
        return [t.to("cuda", torch.float16).contiguous() for t in tensors]

    def __call__(self, input_ids, attention_mask, past):
        ids = torch.as_tensor(input_ids, dtype=torch.int64).to("cuda").contiguous()          # (B, T)
        mask = torch.as_tensor(attention_mask, dtype=torch.int64).to("cuda").contiguous()    # (B, P+T)
        if past is None:
            context = self.contexts[PREFILL]
            past = [torch.zeros(ids.shape[0], self.kv_heads, 0, self.head_dim, dtype=torch.float16, device="cuda")
                    for _ in range(2 * self.layers)]
        elif ids.shape[1] == 1:
            context = self.contexts[DECODE]
        else:
            raise ValueError("the engine's profiles are prefill (no past) and decode (one new token); "
                             f"got {ids.shape[1]} new tokens with a past")
        inputs = dict(zip(self.input_names, [ids, mask, *past]))
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else self.placeholder.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(name)), device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        if not context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        torch.cuda.current_stream().synchronize()
        logits = outputs[self.output_names[0]].float().cpu()                                # (B, T, V)
        return logits, [outputs[n] for n in self.output_names[1:]]

    def reorder(self, past, index):
        rows = torch.as_tensor(index, device="cuda")
        return [p.index_select(0, rows) for p in past]


class CudaTorchStep(TorchStep):
    """``TorchStep`` for a model on the GPU: inputs moved to it, logits back on the CPU."""

    def __call__(self, input_ids, attention_mask, past):
        device = self.model.device
        logits, past = super().__call__(input_ids.to(device), attention_mask.to(device), past)
        return logits.cpu(), past

    def reorder(self, past, index):
        return super().reorder(past, torch.as_tensor(index, device=self.model.device))


def tensorrt_command() -> str:
    """The command that builds the engine on a GPU machine with this code."""
    return f"{TENSORRT_INSTALL} && python -m stages.export --set export.tensorrt=required"


def build_and_verify(model_dir: Path, tokenizer, out_dir: Path, cfg, meta: dict[str, Any], seed: int) -> dict[str, Any]:
    """The report's ``tensorrt`` section: build the engine from fp16/model.onnx, then check it like the
    ONNX graph, against the same model in fp16 on the same GPU. An engine that fails to build or to run
    is reported as "failed" (raised with ``export.tensorrt=required``) and its plan file removed."""
    trt = _trt()
    from chatforge.core.hashing import file_sha256
    from chatforge.inference.export import ExportError
    from chatforge.inference.verify import compare_speed, greedy_generate, greedy_loop, parity, prompt_ids
    from chatforge.train.loading import load_model

    plan_file = out_dir / PLAN_FILE
    start = time.perf_counter()
    try:
        build_plan(out_dir / "fp16" / "model.onnx", plan_file, meta)
        build_s = time.perf_counter() - start
        log.info("export: %s built in %.1f s (TensorRT %s)", plan_file, build_s, trt.__version__)
        engine = TrtStep(plan_file, meta)
        reference = CudaTorchStep(load_model(model_dir, dtype="float16", device="cuda"))
        prompts = prompt_ids(tokenizer, cfg.prompts, meta["context_length"],
                             max(cfg.max_new_tokens, cfg.benchmark_tokens))
        shapes = [s for s in cfg.parity_shapes if s[2] == 0 or s[1] == 1]      # the shapes the two profiles cover
        diffs = parity(reference, engine, shapes, prompts, meta, seed)
        eos, n = tokenizer.eos_token_id, cfg.max_new_tokens
        matches = [greedy_generate(reference.model, p, n, eos) == greedy_loop(engine, p, n, eos) for p in prompts]
        speed = compare_speed({"torch": reference, "tensorrt": engine}, prompts, cfg.benchmark_tokens)
    except RuntimeError as err:                  # a build or run failure: never leave an engine that did not run
        plan_file.unlink(missing_ok=True)
        if cfg.tensorrt == "required":
            raise ExportError(f"tensorrt: {err}") from err
        log.warning("export: TensorRT failed: %s", err)
        return {"status": "failed", "reason": str(err), "command": tensorrt_command()}
    return {
        "status": "built",
        "path": str(PLAN_FILE),
        "sha256": file_sha256(plan_file),
        "version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "profiles": ["prefill (past 0)", "decode (seq 1)"],
        "build_seconds": round(build_s, 1),
        "max_abs_diff": max(diffs.values()),
        "tolerance": cfg.tensorrt_tolerance,
        "parity": diffs,
        "greedy_match": all(matches),
        "greedy_prompts_matched": sum(matches),
        "greedy_prompts": len(matches),
        "torch_fp16_tokens_per_s": speed["torch"]["tokens_per_s"],
        "tokens_per_s": speed["tensorrt"]["tokens_per_s"],
        "torch_fp16_ttft_ms": speed["torch"]["ttft_ms"],
        "ttft_ms": speed["tensorrt"]["ttft_ms"],
    }
