"""GPU exports: the fp16 graph and the TensorRT engine built from it, or the reason they were skipped.

On a machine without a CUDA GPU (or without ``tensorrt``) the report says why and gives the command
that builds them on a GPU machine; ``export.tensorrt=required`` turns that into an error.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from chatforge.inference.export import MODEL_FILE, ExportConfig, ExportError, export_graph, graph_files, write_metadata
from chatforge.inference.tensorrt_engine import build_and_verify, tensorrt_command
from chatforge.train.loading import load_model

log = logging.getLogger(__name__)


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
    trt = build_and_verify(model_dir, tokenizer, out_dir, cfg, meta, seed)
    # ONNX Runtime here is the CPU build, whose fp16 kernels are incomplete: the engine checks the fp16 graph.
    fp16["verified_by_tensorrt"] = trt["status"] == "built"
    if trt["status"] == "built":
        meta["tensorrt"] = {k: trt[k] for k in ("path", "sha256", "version", "gpu", "profiles")}
    write_metadata(out_dir, meta)
    return fp16, trt


def export_fp16(model_dir: Path, out_dir: Path, cfg: ExportConfig) -> dict[str, Any]:
    """fp16/model.onnx from the model loaded in fp16 on the GPU."""
    start = time.perf_counter()
    onnx_file = out_dir / "fp16" / MODEL_FILE
    export_graph(load_model(model_dir, dtype="float16", device="cuda"), onnx_file, opset=cfg.opset, max_batch=cfg.max_batch)
    files = graph_files(onnx_file)
    log.info("export: %s written in %.1f s", onnx_file, time.perf_counter() - start)
    return {"exported": True, "path": str(onnx_file.relative_to(out_dir)), "dtype": "float16", "sha256": files}
