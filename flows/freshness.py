"""Pool mode: is a stage up to date without its data here? Then it need not be submitted.

The flow's checkout holds the code, params.yaml and dvc.lock, not the data (that lives in the
workers' clones and the DVC remote). A stage whose dvc.lock entry still matches this checkout and
the lock entries of the stages it reads, and whose outputs are all in the remote, would only be
found unchanged by its worker, after a flow-run start (seconds on a process worker, a pod start on
Kubernetes). DVC's own test decides the first half without the data: ``Stage.changed`` with
``allow_missing`` (what ``dvc repro --allow-missing`` uses) accepts a missing dependency unless an
upstream stage's lock entry gives that path another hash; a file inside an upstream directory output
is looked up in that directory's manifest in the remote. The second half asks the remote for each
output's object (a directory's manifest is pushed after its files, so it stands for them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flows.remote import persist_outs, read_lock

log = logging.getLogger(__name__)


def _nested_deps_match(odb, deps: list, outs: list) -> bool:
    """A dependency inside an upstream directory output (sft reads data/clean/conversations.jsonl
    of clean_data's data/clean) is a path DVC's test does not compare: look its hash up in that
    directory's manifest in the remote. A dependency around an upstream output: no such test here."""
    from dvc_data.hashfile.tree import Tree

    for dep in deps:
        d = os.path.normpath(dep.def_path)
        for out in outs:
            o = os.path.normpath(out.def_path)
            if o.startswith(d + os.sep):
                return False
            if not d.startswith(o + os.sep):
                continue
            if not (out.hash_info and out.hash_info.isdir and dep.hash_info):
                return False
            try:
                tree = Tree.load(odb, out.hash_info)
            except (FileNotFoundError, OSError):
                return False
            _, entry = tree.get(tuple(Path(os.path.relpath(d, o)).parts), (None, None))
            if entry is None or entry.value != dep.hash_info.value:
                return False
    return True


def unchanged_in_remote(root: Path, stage: str) -> bool:
    """True when ``stage`` in checkout ``root`` is unchanged by dvc.lock and the remote holds its outputs."""
    from dvc.repo import Repo

    if stage not in read_lock(root):
        return False
    with Repo(str(root)) as repo:
        spec = next(s for s in repo.index.stages if getattr(s, "name", None) == stage)
        upstream = list(repo.index.graph.successors(spec))             # edge: stage -> what it reads
        odb = repo.cloud.get_remote_odb(None, "status")
        if not _nested_deps_match(odb, spec.deps, [out for s in upstream for out in s.outs]):
            return False
        with repo.lock:
            if spec.changed(allow_missing=True, upstream=upstream):
                return False
        keep = persist_outs(repo, stage)                               # never pushed (flows/remote.py)
        missing = [str(out) for out in spec.outs if out.def_path not in keep
                   and not (out.hash_info.value and odb.exists(out.hash_info.value))]
    if missing:
        log.info("%s: unchanged in dvc.lock, but the remote lacks %s", stage, ", ".join(missing))
    return not missing
