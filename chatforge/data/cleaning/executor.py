"""Where clean_data's datatrove pipelines run: worker processes on this machine, a Slurm cluster or Ray.

A corpus that outgrows one machine changes ``clean_data.executor`` in params, not code:

    executor: {kind: local, tasks: 2, workers: 2}                           # the default: 2 processes here
    executor: {kind: slurm, tasks: 512, workers: 128, work_dir: /shared/clean_data,
               slurm: {partition: cpu, time: "04:00:00", env_command: "source .venv/bin/activate"}}
    executor: {kind: ray, tasks: 512, workers: 128, work_dir: /shared/clean_data, ray: {address: auto}}

The pipelines become one chain of datatrove executors (LocalPipelineExecutor, SlurmPipelineExecutor or
RayPipelineExecutor), each ``depends=`` on the one before, so Slurm gets them as jobs with ``afterok``
dependencies and the local and Ray executors run them in order. ``work_dir`` holds datatrove's logs,
stats and intermediate shards; on a cluster it must be a filesystem that every node and this one see.
The stage still writes its outputs itself, atomically, once the last pipeline is done.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.executor.base import PipelineExecutor

from chatforge.core.config import field_help

log = logging.getLogger(__name__)

# The most tasks a pipeline may have: clean_data's exact dedup keeps the copy of the lowest task by giving
# each task a priority, and datatrove's exact-dedup priorities are uint16 in [1, 65535] (dedup.py).
MAX_SHARDS = 65534

# Imported once by the forkserver that datatrove's local workers are forked from. Without them every worker
# of every pipeline imports datatrove, spaCy and trafilatura itself: ~7 s per pipeline on 2 busy cores,
# against ~1 s with them (the forkserver starts once per process, so only the first pool pays for it).
FORKSERVER_PRELOAD = ["__main__", "chatforge.data.cleaning.blocks", "chatforge.data.cleaning.dedup", "datatrove.pipeline.filters",
                      "datatrove.pipeline.dedup", "spacy", "trafilatura", "ftfy"]


@dataclass(frozen=True)
class SlurmConfig:
    partition: str = field_help("", "Slurm partition (required for kind: slurm)")
    time: str = field_help("04:00:00", "time limit of each job (sbatch --time)")
    cpus_per_task: int = field_help(1, "CPUs per task")
    mem_per_cpu_gb: int = field_help(2, "memory per CPU in GB (raise cpus_per_task for more memory per task)")
    qos: str = field_help("normal", "Slurm QOS")
    job_name: str = field_help("clean_data", "job name prefix; each pipeline's job is <job_name>_<pipeline>")
    env_command: str = field_help("", "shell command that activates the environment on the nodes, "
                                      "e.g. 'source .venv/bin/activate'")
    venv_path: str = field_help("", "or: a venv activate script to source")
    sbatch_args: dict[str, str | int] = field_help({}, "extra sbatch directives, e.g. {account: myproject}")
    max_array_size: int = field_help(1001, "the cluster's job array limit (datatrove splits bigger arrays)")
    poll_s: int = field_help(60, "how often the stage checks whether the jobs have finished")


@dataclass(frozen=True)
class RayConfig:
    address: str = field_help("", "ray.init address: '' starts or joins a local Ray, 'auto' the running cluster")
    cpus_per_task: int = field_help(1, "CPUs reserved per task")
    mem_per_cpu_gb: float = field_help(2.0, "memory reserved per CPU, GB")
    tasks_per_job: int = field_help(1, "datatrove tasks per Ray task")
    time_s: int = field_help(0, "time limit per task in seconds (0 = none)")


@dataclass(frozen=True)
class ExecutorConfig:
    kind: Literal["local", "slurm", "ray"] = field_help("local", "local processes, a Slurm cluster or Ray")
    tasks: int = field_help(2, "shards of the input: the per-document pipelines run this many tasks")
    workers: int = field_help(2, "tasks at once: processes (local), array tasks (slurm, -1 = no limit), "
                                 "Ray tasks (-1 = all)")
    start_method: Literal["forkserver", "spawn", "fork"] = field_help(
        "forkserver", "how local workers start (datatrove's default; fork is faster but unsafe with threads)")
    work_dir: Path = field_help(Path("data/cache/clean_data"), "datatrove logs, stats and intermediate shards "
                                                               "(scratch; shared by all nodes on a cluster)")
    resume: bool = field_help(False, "keep work_dir and skip tasks an earlier, interrupted run finished "
                                     "(only with the same params and input)")
    keep_work_dir: bool = field_help(False, "keep work_dir after a successful run (to read datatrove's logs)")
    slurm: SlurmConfig = field_help(SlurmConfig(), "SlurmPipelineExecutor settings (kind: slurm)")
    ray: RayConfig = field_help(RayConfig(), "RayPipelineExecutor settings (kind: ray)")

    def __post_init__(self):
        if not 1 <= self.tasks <= MAX_SHARDS:
            raise ValueError(f"executor.tasks must be between 1 and {MAX_SHARDS}, got {self.tasks}")
        if self.workers < 1 and not (self.workers == -1 and self.kind != "local"):
            raise ValueError(f"executor.workers must be >= 1 (or -1 for slurm/ray), got {self.workers}")
        if self.kind == "slurm" and not self.slurm.partition:
            raise ValueError("executor.kind is slurm: set executor.slurm.partition")


def build_executor(pipeline: list, name: str, tasks: int, cfg: ExecutorConfig, logging_dir: Path,
                   depends: PipelineExecutor | None = None) -> PipelineExecutor:
    """The datatrove executor of kind ``cfg.kind`` for one pipeline (nothing is launched)."""
    if cfg.kind == "local":
        workers = tasks if cfg.workers == -1 else min(cfg.workers, tasks)
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                                     depends=depends, start_method=cfg.start_method)
    if cfg.kind == "slurm":
        s = cfg.slurm
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb, workers=cfg.workers, job_name=f"{s.job_name}_{name}", qos=s.qos,
            env_command=s.env_command or None, venv_path=s.venv_path or None,
            sbatch_args={k: str(v) for k, v in s.sbatch_args.items()}, max_array_size=s.max_array_size,
            depends=depends, logging_dir=str(logging_dir))
    r = cfg.ray
    return RayPipelineExecutor(pipeline, tasks=tasks, workers=cfg.workers, depends=depends,
                               logging_dir=str(logging_dir), cpus_per_task=r.cpus_per_task,
                               mem_per_cpu_gb=r.mem_per_cpu_gb, tasks_per_job=r.tasks_per_job, time=r.time_s or None)


def build_chain(pipelines: list[tuple[str, list, int]], cfg: ExecutorConfig, logs: Path) -> list[PipelineExecutor]:
    """One executor per (name, steps, tasks), each depending on the one before; logs under ``logs/<name>``."""
    chain: list[PipelineExecutor] = []
    for name, steps, tasks in pipelines:
        chain.append(build_executor(steps, name, tasks, cfg, logs / name, chain[-1] if chain else None))
    return chain


def run_chain(chain: list[PipelineExecutor], cfg: ExecutorConfig, preload: list[str] | None = None) -> None:
    """Run every executor of ``chain`` (through the last one's dependencies); return when all are done.
    ``preload``: the modules the local forkserver imports once (default: the cleaning pipeline's)."""
    last = chain[-1]
    if cfg.kind == "local":
        if cfg.start_method == "forkserver":
            import multiprocess

            multiprocess.set_forkserver_preload(FORKSERVER_PRELOAD if preload is None else preload)
        last.run()
    elif cfg.kind == "ray":
        try:
            import ray
        except ImportError as err:
            raise RuntimeError("clean_data.executor.kind is ray: install Ray (pip install 'ray[default]')") from err
        if not ray.is_initialized():
            ray.init(address=cfg.ray.address or None)
        last.run()
    else:
        last.run()                  # sbatch every job of the chain and return
        wait_for_slurm(last, cfg.slurm.poll_s)


def wait_for_slurm(executor: SlurmPipelineExecutor, poll_s: int) -> None:
    """Block until every task of the chain's last job has completed; raise when the job left the queue
    with tasks undone or can never start (a job before it failed)."""
    logs = f"{executor.logging_dir.path}/logs and {executor.slurm_logs_folder}"
    while left := len(executor.get_incomplete_ranks(skip_completed=True)):
        queue = subprocess.run(["squeue", "--noheader", "--jobs", str(executor.job_id), "--format", "%T %r"],
                               capture_output=True, text=True, check=False).stdout
        if "DependencyNeverSatisfied" in queue:
            raise RuntimeError(f"Slurm job {executor.job_id} ({executor.job_name}) will never start: a job it "
                               f"depends on failed; see the earlier pipelines' logs next to {logs}")
        if not queue.strip() and executor.get_incomplete_ranks(skip_completed=True):
            raise RuntimeError(f"Slurm job {executor.job_id} ({executor.job_name}) ended with {left} of "
                               f"{executor.world_size} tasks undone; see {logs}")
        log.info("waiting for Slurm job %s (%s): %d of %d tasks left", executor.job_id, executor.job_name, left,
                 executor.world_size)
        time.sleep(poll_s)
