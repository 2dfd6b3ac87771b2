"""Stage artifacts through a DVC remote, so that each stage can run in its own checkout.

A stage that runs in another checkout (a worker of its pool) needs its dependencies, the
outputs of earlier stages that may have run elsewhere, and must hand back its own outputs and
its dvc.lock entry. The lock entry says which content each output has (by hash), so:

- ``restore`` pulls the objects an entry names from the remote and checks them out;
- ``publish`` pushes a finished stage's outputs and the run cache, then writes the stage's
  record (its lock entry, where it ran, bytes moved) to ``<remote>/chatforge/stage-runs/``.
  The record is written last: a stage killed before it leaves nothing that the flow reads, and
  DVC pushes content-addressed objects through a temporary name, so no partial file is visible.

Uncached outputs (``cache: false`` metrics such as reports/*.json, which evaluate reads) are not
pushed by ``dvc push``; DVC's own run cache solves this by committing them to the cache as copies
(dvc/stage/cache.py, ``StageCache._uncached_outs``), and so do we. ``persist`` outputs (pretrain's
resumable checkpoints) stay on the machine that wrote them, as DVC's run cache also leaves them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

REMOTE_NAME = "chatforge"
RECORDS = ("chatforge", "stage-runs")


def configure_remote(root: Path, url: str) -> None:
    """Make ``url`` this checkout's default DVC remote, in .dvc/config.local (never committed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, repo.config.edit("local") as conf:
        conf["remote"][REMOTE_NAME] = {"url": url}
        conf["core"]["remote"] = REMOTE_NAME


def read_lock(root: Path) -> dict[str, Any]:
    path = root / "dvc.lock"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}


def write_lock(root: Path, stages: dict[str, Any]) -> None:
    """Write dvc.lock with ``stages`` (DVC's schema 2.0 layout), atomically."""
    from chatforge.core.files import atomic_write_text

    atomic_write_text(root / "dvc.lock", yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


def merge_lock_entry(root: Path, stage: str, entry: dict[str, Any]) -> None:
    stages = read_lock(root)
    stages[stage] = entry
    write_lock(root, stages)


def _overlaps(a: str, b: str) -> bool:
    a, b = os.path.normpath(a), os.path.normpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _object_bytes(repo: Any, hash_infos: Any) -> int:
    total = 0
    for hi in hash_infos:
        value = getattr(hi, "value", None) or getattr(getattr(hi, "hash_info", None), "value", None)
        if not value:
            continue
        path = repo.cache.local.oid_to_path(value)
        if os.path.isfile(path):
            total += os.path.getsize(path)
    return total


def _temp_stage(repo: Any, entry: dict[str, Any], out_paths: list[str]) -> Any:
    """A stage object holding ``entry``'s outputs in ``out_paths``, every one cached (the run cache's trick)."""
    entry = dict(entry, outs=[o for o in entry.get("outs", []) if o["path"] in out_paths])
    return repo.stage_cache._create_stage(entry)


def persist_outs(repo: Any, stage: str) -> set[str]:
    spec = next(s for s in repo.index.stages if getattr(s, "name", None) == stage)
    return {out.def_path for out in spec.outs if out.persist}


def restore(root: Path, stage: str, lock: dict[str, Any]) -> int:
    """Check out, from the remote, the outputs that ``stage`` reads and the ones it last wrote
    (by ``lock``, the flow's dvc.lock); returns the bytes pulled."""
    from dvc.repo import Repo

    pulled = 0
    with Repo(str(root)) as repo:
        spec = next(s for s in repo.index.stages if getattr(s, "name", None) == stage)
        deps = [dep.def_path for dep in spec.deps]
        known = {getattr(s, "name", None) for s in repo.index.stages}
        for name, entry in lock.items():
            keep = persist_outs(repo, name) if name in known else set()
            paths = [o["path"] for o in entry.get("outs", []) if o["path"] not in keep
                     and (name == stage or any(_overlaps(o["path"], d) for d in deps))]
            if not paths:
                continue
            temp = _temp_stage(repo, entry, paths)
            with repo.stage_cache._cache_type_copy():
                for objs in temp.get_used_objs().values():
                    result = repo.cloud.pull(objs)
                    if result.failed:
                        raise RuntimeError(f"stage {stage}: {len(result.failed)} object(s) of {name}'s outputs "
                                           f"{paths} are missing from the DVC remote; re-run {name}")
                    pulled += _object_bytes(repo, result.transferred)
                with repo.lock:
                    temp.checkout()
            log.info("%s: restored %s from %s's lock entry", stage, ", ".join(paths), name)
    return pulled


def publish(root: Path, stage: str) -> tuple[dict[str, Any], int]:
    """Push ``stage``'s outputs (uncached ones too, persist ones not) and the run cache;
    returns its dvc.lock entry and the bytes pushed."""
    from dvc.repo import Repo

    entry = read_lock(root)[stage]
    with Repo(str(root)) as repo:
        spec = next(s for s in repo.index.stages if getattr(s, "name", None) == stage)
        uncached = {out.def_path for out in spec.outs if not out.use_cache}
        paths = [o["path"] for o in entry.get("outs", []) if o["path"] not in persist_outs(repo, stage)]
        temp = _temp_stage(repo, entry, paths)
        pushed = 0
        with repo.stage_cache._cache_type_copy(), repo.lock:
            for out in temp.outs:
                if out.def_path in uncached:
                    out.commit()                   # a copy into the cache; the workspace file stays as is
            for objs in temp.get_used_objs().values():
                result = repo.cloud.push(objs)
                if result.failed:
                    raise RuntimeError(f"stage {stage}: pushing {len(result.failed)} object(s) failed")
                pushed += _object_bytes(repo, result.transferred)
        repo.stage_cache.push(None)
    return entry, pushed


def _records_path(repo: Any, key: str) -> tuple[Any, str]:
    remote = repo.cloud.get_remote(None, "push")
    return remote.fs, remote.fs.join(remote.path, *RECORDS, f"{key}.json")


def write_record(root: Path, key: str, record: dict[str, Any]) -> None:
    """Write a stage run's record to the remote (through a temporary name where the remote has renames)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        fs, path = _records_path(repo, key)
        fs.makedirs(fs.parent(path), exist_ok=True)
        tmp = path + ".tmp"
        fs.pipe_file(tmp, json.dumps(record, indent=1).encode())
        fs.mv(tmp, path)


def read_record(root: Path, key: str) -> dict[str, Any] | None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        fs, path = _records_path(repo, key)
        if not fs.exists(path):
            return None
        return json.loads(fs.cat_file(path))
