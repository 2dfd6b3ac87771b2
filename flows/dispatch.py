"""The pipeline flow's side of pool mode: deployments per pool, submit a stage, wait, retry.

Each pool gets one deployment of the ``chatforge-stage`` flow (flows/stage_flow.py), created here
when missing (a process work pool is created too when the pool does not exist; a Kubernetes pool
is made once by hand from deploy/k8s-base-job-template.json). A stage is submitted with
``run_deployment`` as a subflow of the pipeline run, so the Prefect UI shows it under the
pipeline; the flow waits for it, then reads the record the worker wrote to the DVC remote and
merges its lock entry into this checkout's dvc.lock.

A stage run that ends Crashed (its process was killed: OOM, a lost node, a killed worker's job)
or Failed is submitted again, ``orchestration.retries`` times; any worker of the pool may take
it. Nothing of a killed attempt reaches the remote (flows/remote.py writes the record last).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from flows.placement import STAGE_FLOW, OrchestrationConfig, deployment_name
from flows.remote import merge_lock_entry, read_record

log = logging.getLogger(__name__)

ENTRYPOINT = "flows/stage_flow.py:stage_on_worker"
# The worker's own checkout: each worker exports CHATFORGE_ROOT (templated when the run starts).
PULL_STEPS = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CHATFORGE_ROOT }}"}}]
RESUBMIT = {"CRASHED", "FAILED"}
WAIT_HINT_SECONDS = 30.0


def ensure_deployments(pools: set[str]) -> None:
    """One ``chatforge-stage/<pool>`` deployment per pool (an upsert); a process pool if none exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from flows.stage_flow import stage_on_worker

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(STAGE_FLOW)
        for pool in sorted(pools):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                log.info("created process work pool %s", pool)
            client.create_deployment(
                flow_id=flow_id, name=pool, work_pool_name=pool, entrypoint=ENTRYPOINT, pull_steps=PULL_STEPS,
                parameter_openapi_schema=stage_on_worker.parameters.model_dump(),
                description=f"one chatforge stage on a worker of pool {pool} (flows/stage_flow.py)",
                tags=["chatforge"])


def submit_stage(root: Path, cfg: OrchestrationConfig, request: dict[str, Any]) -> dict[str, Any]:
    """Run ``request`` on its pool and wait; returns the worker's record (lock merged into dvc.lock)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    stage, pool = request["stage"], request["pool"]
    for attempt in range(cfg.retries + 1):
        run = run_deployment(deployment_name(pool), parameters={"request": request}, timeout=0,
                             flow_run_name=f"{stage}@{pool}", as_subflow=True)
        logger.info("%s: submitted to pool %s as flow run %s (attempt %d)", stage, pool, run.id, attempt + 1)
        started, hinted = time.monotonic(), False
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    break
                if not hinted and state is not None and state.type.value in {"SCHEDULED", "PENDING"} \
                        and time.monotonic() - started > WAIT_HINT_SECONDS:
                    logger.warning("%s: no worker of pool %s has taken flow run %s yet; start one in a clone of "
                                   "the repo: CHATFORGE_ROOT=$PWD PYTHONPATH=$PWD prefect worker start --pool %s",
                                   stage, pool, run.id, pool)
                    hinted = True
                time.sleep(cfg.poll_seconds)
        kind = state.type.value
        if kind == "COMPLETED":
            record = read_record(root, str(run.id))
            if record is None:
                raise RuntimeError(f"{stage}: flow run {run.id} completed but wrote no record to the DVC remote "
                                   f"{cfg.remote_url(root)}; do the worker and this checkout use the same remote?")
            merge_lock_entry(root, stage, record["lock"])
            logger.info("%s: %s on pool %s (%s, %s), %d bytes pulled, %d pushed, %.1f s", stage, record["status"],
                        pool, record["host"], record["checkout"], record["bytes_pulled"], record["bytes_pushed"],
                        record["seconds"])
            return record
        if kind not in RESUBMIT:
            break
        logger.warning("%s: flow run %s ended %s (%s)", stage, run.id, kind, state.message or "")
    raise RuntimeError(f"stage {stage} did not complete on pool {pool}: flow run {run.id} ended {kind} "
                       f"({state.message or 'no message'}). See `prefect flow-run logs {run.id}`; stages that "
                       f"finished are in dvc.lock and the remote, so `chatforge run` again resumes from {stage}.")
