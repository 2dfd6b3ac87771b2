"""The chatforge pipeline as a Prefect flow over DVC's stage graph.

dvc.yaml is the only definition of the DAG: the flow asks DVC for the stages in dependency
order and runs ``dvc repro --single-item <stage>`` for each, as a Prefect task with retries.
DVC decides whether a stage is stale (and skips it otherwise); the flow adds retries, logs,
schedules/deployments and the MLflow parent run that each stage's run hangs under.

Run: ``chatforge run`` (in-process, ephemeral Prefect server), or through the deployment in
prefect.yaml with a process work pool.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from chatforge.core.tracking import PARENT_RUN_ENV, configure_mlflow, git_commit, tracking_uri
from flows.placement import LOCAL, OrchestrationConfig, load_orchestration

_SKIPPED = re.compile(r"Stage '([^']+)' (didn't change|is cached)")


def dvc_stage_order(root: Path = Path(".")) -> list[str]:
    """Stage names from dvc.yaml, dependencies first (DVC's own graph, not a list of ours)."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph                                    # edge: stage -> what it depends on
        ordered = list(networkx.topological_sort(graph.reverse(copy=False)))
        return [s.name for s in ordered if getattr(s, "cmd", None)]   # drop `dvc add` nodes


def stage_env(parent_run_id: str | None, root: Path) -> dict[str, str]:
    """The environment a stage process gets: our python first on PATH, the parent run, the store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri(root)            # absolute, so `dvc exp --temp` runs land here
    env.pop("MLFLOW_RUN_ID", None)                             # mlflow would resume it instead of nesting
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE, tags=["dvc"], task_run_name="{stage}")
def run_stage(stage: str, parent_run_id: str | None, root: str, force: bool = False, pull: bool = False) -> str:
    """``dvc repro --single-item <stage>``; returns "ran" or "cached". Output goes to the run log.
    ``pull``: restore the stage from the remote's run cache when another machine ran it already."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else []) \
        + (["--pull"] if pull else [])
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=stage_env(parent_run_id, Path(root)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    tail: list[str] = []
    skipped = False
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        skipped = skipped or bool(_SKIPPED.search(line))
        tail = (tail + [line])[-40:]
        logger.info("%s | %s", stage, line)
    if proc.wait():
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail))
    status = "cached" if skipped else "ran"
    logger.info("%s: %s in %.1f s", stage, status, time.monotonic() - started)
    return status


@flow(name="chatforge", log_prints=True)
def pipeline(only: list[str] | None = None, root: str = ".", force: bool = False) -> dict[str, str]:
    """Run every DVC stage in order (or just ``only``); returns {stage: "ran" | "cached"}."""
    import mlflow

    logger = get_run_logger()
    root_path = Path(root).resolve()
    stages = dvc_stage_order(root_path)
    unknown = sorted(set(only or []) - set(stages))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {stages}")
    selected = [s for s in stages if only is None or s in only]
    logger.info("stages: %s", " -> ".join(selected))
    placement = load_orchestration(root_path)
    placement.check(stages)
    configure_mlflow(root_path)
    results: dict[str, str] = {}
    with mlflow.start_run(run_name="pipeline", tags={"git_commit": git_commit(root_path),
                                                     "dvc_exp": os.environ.get("DVC_EXP_NAME", "")}) as parent:
        if placement.distributed:
            results = run_on_pools(root_path, placement, selected, parent.info.run_id, force)
        else:
            for stage in selected:
                results[stage] = run_stage(stage, parent.info.run_id, str(root_path), force)
        mlflow.log_params({f"stage.{s}": r for s, r in results.items()})
        mlflow.log_metrics({"stages_ran": sum(r == "ran" for r in results.values()),
                            "stages_cached": sum(r == "cached" for r in results.values())})
    return results


def run_on_pools(root: Path, placement: OrchestrationConfig, stages: list[str], parent_run_id: str,
                 force: bool) -> dict[str, str]:
    """Pool mode: each stage on its pool's worker (flows/dispatch.py), in DVC's order, one at a time;
    artifacts and lock entries through the DVC remote. A stage that dvc.lock and the remote show
    unchanged is not submitted (flows/freshness.py). Logs which stage ran where."""
    import mlflow

    from flows.dispatch import ensure_deployments, submit_stage
    from flows.freshness import unchanged_in_remote
    from flows.remote import configure_remote, read_lock
    from flows.stage_flow import execute_stage

    logger = get_run_logger()
    url = placement.remote_url(root)
    configure_remote(root, url)
    commit = git_commit(root)
    if commit.endswith("-dirty"):
        logger.warning("uncommitted changes in %s: workers run the committed code with this params.yaml", root)
    ensure_deployments({placement.pool_for(s) for s in stages} - {LOCAL})
    results: dict[str, str] = {}
    for stage in stages:
        pool = placement.pool_for(stage)
        if pool != LOCAL and not force and unchanged_in_remote(root, stage):
            results[stage] = "cached"
            logger.info("%s: unchanged by dvc.lock, outputs in the remote: not submitted to pool %s", stage, pool)
            mlflow.log_params({f"placement.{stage}": f"{pool} (unchanged, not submitted)"})
            continue
        request = {"stage": stage, "pool": pool, "commit": commit.removesuffix("-dirty"),
                   "params": (root / "params.yaml").read_text(encoding="utf-8"), "lock": read_lock(root),
                   "remote": url, "tracking_uri": tracking_uri(root), "parent_run_id": parent_run_id,
                   "force": force}
        if pool == LOCAL:
            request["commit"] = ""                          # this checkout itself
            record = execute_stage(root, request, f"{parent_run_id}-{stage}")
        else:
            record = submit_stage(root, placement, request)
        results[stage] = record["status"]
        mlflow.log_params({f"placement.{stage}": f"{pool}@{record['host']}"})
        mlflow.log_metrics({f"bytes_pulled.{stage}": record["bytes_pulled"],
                            f"bytes_pushed.{stage}": record["bytes_pushed"]})
    return results
