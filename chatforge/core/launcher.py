"""Start a training stage in one process, or in several through torchrun or accelerate.

A stage's ``main`` calls ``relaunch_command``: when its ``launcher`` param asks for torchrun or
accelerate and this process was not itself started by us, it gets back the command that runs the
same stage module with the same arguments under that launcher, runs it, and returns its exit
status. Inside the launched processes the stage runs normally; the Trainer (through accelerate)
picks up RANK/WORLD_SIZE/MASTER_ADDR from the environment and joins the process group (NCCL on
GPUs, gloo on CPU). FSDP and DeepSpeed ZeRO come from accelerate config files (profiles/accelerate/).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Launcher = Literal["python", "torchrun", "accelerate"]
LAUNCHED_ENV = "CHATFORGE_LAUNCHED"     # set in the children, so they do not launch again


def relaunch_command(launcher: Launcher, module: str, argv: list[str], *, nproc_per_node: int = 1,
                     accelerate_config: Path | None = None) -> list[str] | None:
    """The command that runs ``python -m module argv`` under ``launcher``; None to run in-process."""
    if launcher == "python" or os.environ.get(LAUNCHED_ENV):
        return None
    if launcher == "torchrun":
        # --standalone: a single node with a local rendezvous; multi-node runs call torchrun themselves
        # with --nnodes/--rdzv-endpoint and `--set pretrain.launcher=python`.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc_per_node}", "-m", module, *argv]
    if accelerate_config is None:
        raise ValueError("launcher 'accelerate' needs 'accelerate_config' (e.g. profiles/accelerate/fsdp.yaml)")
    if not accelerate_config.exists():
        raise FileNotFoundError(f"{accelerate_config}: accelerate config file not found")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
            "-m", module, *argv]


def run_launched(command: list[str]) -> int:
    """Run ``command`` with the marker set; returns its exit status."""
    log.info("launching: %s", " ".join(command))
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    return subprocess.run(command, env=env, check=False).returncode


def local_rank() -> int:
    """This process's index on its machine (torchrun and accelerate set LOCAL_RANK): its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only rank 0 logs runs and writes outputs."""
    return world()[0] == 0


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
