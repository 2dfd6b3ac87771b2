"""Run an exported chatforge model with ONNX Runtime: the export directory in, a decoding step out.

``load_export(dir)`` opens ``dir/model.onnx`` (the fp32 graph that ``chatforge.inference.export`` wrote, with
its weights in the ``model.onnx.data`` side file) and reads ``dir/chatforge_export.json``, the
metadata that says how the graph's inputs are laid out. ``OrtStep`` wraps the session in the
``Step`` protocol of ``chatforge.inference.decoding``, so ``sample_tokens``, ``beam_search`` and
``ChatModel`` decode through ONNX Runtime with the same loop as through PyTorch.

The graph takes ``input_ids (B, T)``, ``attention_mask (B, P+T)`` and one key and one value tensor
per layer ``past.{i}.key|value (B, n_kv, P, Dh)``, and returns ``logits (B, T, V)`` and the grown
``present.{i}.key|value (B, n_kv, P+T, Dh)``. The cache between steps is that list of numpy
arrays, fed back as the next step's past; the first step gets zero-length past arrays (P = 0).

Only numpy, onnxruntime and torch (for the step's tensors) are imported: no transformers model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "chatforge_export.json"
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def read_metadata(export_dir: Path) -> dict[str, Any]:
    """The export's metadata; a directory that is not an export is an error saying what to run."""
    path = export_dir / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a chatforge ONNX export (no {METADATA_FILE}); "
                                "run `python -m stages.export` (or `dvc repro export`) to write one")
    return json.loads(path.read_text(encoding="utf-8"))


def load_export(export_dir: Path, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                threads: int = 0):
    """(session, metadata) for the fp32 graph in ``export_dir``.

    The session is opened from the file *path* so that ONNX Runtime finds ``model.onnx.data``
    next to it. ``threads`` = 0 lets ONNX Runtime use every core.
    """
    import onnxruntime as ort

    export_dir = Path(export_dir)
    meta = read_metadata(export_dir)
    model_file = export_dir / meta.get("model_file", MODEL_FILE)
    if not model_file.exists():
        raise FileNotFoundError(f"{model_file}: missing from the export (re-run the export stage)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_file), sess_options=options, providers=list(providers))
    log.info("onnx_runtime: %s opened (%s, opset %s, %s)", model_file, meta["dtype"], meta["opset"],
             ", ".join(session.get_providers()))
    return session, meta


class OrtStep:
    """A ``Step`` through an ONNX Runtime session of the exported graph (see the module docstring)."""

    def __init__(self, session, meta: dict[str, Any]):
        self.session = session
        self.input_names: list[str] = list(meta["input_names"])
        self.output_names: list[str] = list(meta["output_names"])
        self.kv_names = self.input_names[2:]             # past.{i}.key, past.{i}.value, ...
        self.kv_heads = int(meta["num_kv_heads"])
        self.head_dim = int(meta["head_dim"])
        self.dtype = NUMPY_DTYPES[meta["dtype"]]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """Zero-length past arrays (B, n_kv, 0, Dh): the cache before the first token."""
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype) for _ in self.kv_names]

    def cache_from_torch(self, tensors) -> list[np.ndarray]:
        """A cache from torch tensors in graph order (k0, v0, k1, v1, ...), e.g. a random one for tests."""
        return [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=self.dtype) for t in tensors]

    def __call__(self, input_ids, attention_mask, past: list[np.ndarray] | None):
        import torch

        ids = np.ascontiguousarray(np.asarray(input_ids), dtype=np.int64)             # (B, T)
        mask = np.ascontiguousarray(np.asarray(attention_mask), dtype=np.int64)       # (B, P+T)
        if past is None:
            past = self.empty_past(ids.shape[0])
        if mask.shape != (ids.shape[0], past[0].shape[2] + ids.shape[1]):
            # The graph would run on a wrong-sized mask and give wrong logits without a word.
            raise ValueError(f"attention_mask has shape {mask.shape}; expected (batch, past + new) = "
                             f"({ids.shape[0]}, {past[0].shape[2]} + {ids.shape[1]})")
        feeds = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.kv_names, past))}
        logits, *present = self.session.run(self.output_names, feeds)
        return torch.from_numpy(logits).float(), present                              # (B, T, V)

    def forward_batch(self, input_ids, attention_mask, position_ids, kv):
        """The batched step of ``chatforge.inference.batching``, with the cache as torch tensors
        (numpy views both ways, no copy). The graph places new tokens at positions P, P+1, ...
        after its past: ``position_ids`` cannot be passed, and the batch keeps every row's
        tokens right-aligned instead (``explicit_positions`` is False)."""
        import torch

        past = [t.contiguous().numpy() for t in kv] if kv else None
        logits, present = self(input_ids, attention_mask, past)
        return logits, [torch.from_numpy(p) for p in present]

    explicit_positions = False

    def reorder(self, past: list[np.ndarray], index) -> list[np.ndarray]:
        rows = np.asarray(index, dtype=np.int64)
        return [p[rows] for p in past]
