"""Resumable training checkpoints on top of the transformers Trainer's ``checkpoint-N/`` directories.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG state of every
rank, trainer state), so a process killed mid-save leaves a half directory that
``transformers.trainer_utils.get_last_checkpoint`` would happily resume from. Here a checkpoint
only counts once it is complete: after every rank has written its files (a barrier), rank 0
writes ``COMPLETE`` with an atomic rename, and ``last_complete_checkpoint`` ignores directories
without it. ``save_total_limit`` must keep at least two, so the newest complete checkpoint is
never rotated away before its successor is marked.

``run.json`` in the checkpoint directory records what the checkpoints were trained with (the
config and digests of the data and tokenizer); a run with a different one starts afresh instead
of resuming a stranger's optimizer state.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from chatforge.core.files import atomic_write_text, write_json

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
RUN_FILE = "run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the ``checkpoint-N`` directories under ``root``, by step."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def checkpoint_step(path: Path) -> int:
    """The optimizer step of a ``checkpoint-N`` directory."""
    m = _CHECKPOINT.match(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a checkpoint-N directory")
    return int(m.group(1))


def last_complete_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint with its ``COMPLETE`` marker, or None."""
    complete = [p for _, p in checkpoint_dirs(root) if (p / MARKER).exists()]
    return complete[-1] if complete else None


def prepare_checkpoint_dir(root: Path, fingerprint: dict[str, Any]) -> Path | None:
    """Make ``root`` ready for a run with ``fingerprint``; returns the checkpoint to resume from.

    Half-written checkpoints are removed; all checkpoints are removed when ``run.json`` says they
    belong to a different run. Call on rank 0 only (other ranks wait, then use
    ``last_complete_checkpoint``).
    """
    root.mkdir(parents=True, exist_ok=True)
    run_file = root / RUN_FILE
    previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.exists() else None
    if previous is not None and previous != fingerprint:
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        stale = checkpoint_dirs(root)
        if stale:
            log.warning("%s: %d checkpoint(s) from a run with different %s; starting afresh", root,
                        len(stale), ", ".join(changed))
        for _, path in stale:
            shutil.rmtree(path)
    for _, path in checkpoint_dirs(root):
        if not (path / MARKER).exists():
            log.warning("%s: incomplete (killed while saving); removing it", path)
            shutil.rmtree(path)
    write_json(run_file, fingerprint)
    resume = last_complete_checkpoint(root)
    if resume is not None:
        log.info("resuming from %s", resume)
    return resume


def mark_complete(checkpoint: Path) -> None:
    atomic_write_text(checkpoint / MARKER, "complete\n")


def completion_callback():
    """A TrainerCallback that marks each checkpoint complete once every rank has saved."""
    from transformers import TrainerCallback

    class MarkCheckpointComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()                 # every rank's files (its RNG state) are written
            if state.is_world_process_zero:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return MarkCheckpointComplete()
