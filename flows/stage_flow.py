"""One stage on a worker of its pool: the ``chatforge-stage`` flow.

The pipeline flow (flows/pipeline.py) submits a run of the deployment ``chatforge-stage/<pool>``
for each stage placed on a pool; a worker of that pool runs it in its own checkout of the repo
(the deployment's pull step changes to ``$CHATFORGE_ROOT``):

1. check the checkout is at the flow's commit, take the flow's params.yaml and dvc.lock;
2. restore from the DVC remote what the stage reads (and what it last wrote);
3. ``dvc repro --single-item --pull <stage>``: DVC runs it, skips it when unchanged, or restores it
   from the run cache when another machine already ran it with the same inputs;
4. push its outputs and the run cache, then write its record (lock entry, where it ran, bytes
   moved) to the remote; the pipeline flow merges the lock entry into its dvc.lock.

Start a worker: ``CHATFORGE_ROOT=$PWD PYTHONPATH=$PWD prefect worker start --pool <pool>`` in a
clone of the repo (docs/across-machines.md).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.placement import STAGE_FLOW
from flows.remote import configure_remote, publish, restore, write_lock, write_record

log = logging.getLogger(__name__)

ROOT_ENV = "CHATFORGE_ROOT"


def checkout_commit(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def execute_stage(root: Path, request: dict[str, Any], key: str) -> dict[str, Any]:
    """Steps 1-4 above in checkout ``root``; returns the record it wrote to the remote under ``key``."""
    from flows.pipeline import run_stage

    stage = request["stage"]
    started = time.monotonic()
    here = checkout_commit(root)
    if request["commit"] and here != request["commit"]:
        raise RuntimeError(f"worker checkout {root} is at {here[:12]}, the pipeline at {request['commit'][:12]}: "
                           f"run `git -C {root} fetch && git -C {root} checkout {request['commit']}` and resubmit")
    (root / "params.yaml").write_text(request["params"], encoding="utf-8")
    write_lock(root, request["lock"])
    configure_remote(root, request["remote"])
    if request.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = request["tracking_uri"]
    pulled = restore(root, stage, request["lock"])
    status = run_stage(stage, request["parent_run_id"], str(root), request["force"], pull=True)
    entry, pushed = publish(root, stage)
    record = {"stage": stage, "status": status, "pool": request["pool"], "host": socket.gethostname(),
              "checkout": str(root), "lock": entry, "bytes_pulled": pulled, "bytes_pushed": pushed,
              "seconds": round(time.monotonic() - started, 1)}
    write_record(root, key, record)
    return record


@flow(name=STAGE_FLOW, flow_run_name="{request[stage]}@{request[pool]}", log_prints=True)
def stage_on_worker(request: dict[str, Any]) -> str:
    """Run one stage in this worker's checkout (``$CHATFORGE_ROOT``, else the working directory)."""
    from prefect.runtime import flow_run

    root = Path(os.environ.get(ROOT_ENV, ".")).resolve()
    record = execute_stage(root, request, str(flow_run.id))
    return record["status"]
