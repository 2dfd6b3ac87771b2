"""Where each stage runs: the ``orchestration`` section of params.yaml.

With no pools named (the default) the flow runs every stage in-process in this checkout, exactly
as before. Naming a pool sends that stage to the Prefect work pool of that name: the flow submits
a run of the ``chatforge-stage/<pool>`` deployment, a worker of the pool runs the stage in its own
checkout, and artifacts travel through the DVC remote (flows/remote.py). The pool name ``local``
means "in the flow's own process and checkout" in either mode.

No stage reads this section (the stages' DVC params are unchanged by placement), so moving a stage
to another pool never makes DVC re-run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chatforge.core.config import field_help, load_params_file

SECTION = "orchestration"
LOCAL = "local"
STAGE_FLOW = "chatforge-stage"          # the flow name of flows/stage_flow.py; one deployment per pool


@dataclass(frozen=True)
class OrchestrationConfig:
    default_pool: str = field_help(LOCAL, "pool for stages not named in `pools`; 'local' = in this process")
    pools: dict[str, str] = field_help({}, "stage name -> Prefect work pool (e.g. {pretrain: gpu})")
    remote: str = field_help("../chatforge-remote",
                             "DVC remote for pool mode: a URL (s3://, gs://, ssh://...) or a folder, "
                             "relative to the repo root of the flow")
    retries: int = field_help(1, "resubmissions of a stage run that crashed or failed on its worker")
    poll_seconds: float = field_help(2.0, "how often the flow checks a submitted stage run")

    def pool_for(self, stage: str) -> str:
        return self.pools.get(stage, self.default_pool)

    @property
    def distributed(self) -> bool:
        """True when any stage leaves this process (pool mode)."""
        return self.default_pool != LOCAL or any(p != LOCAL for p in self.pools.values())

    def remote_url(self, root: Path) -> str:
        """The remote as DVC takes it: a URL as is, a folder made absolute against ``root``."""
        if "://" in self.remote:
            return self.remote
        path = Path(self.remote).expanduser()
        return str(path if path.is_absolute() else (root / path).resolve())

    def check(self, stages: list[str]) -> None:
        unknown = sorted(set(self.pools) - set(stages))
        if unknown:
            raise ValueError(f"params.yaml: key '{SECTION}.pools' names unknown stage(s) {unknown}; "
                             f"dvc.yaml has {stages}")


@dataclass(frozen=True)
class Params:
    orchestration: OrchestrationConfig


def load_orchestration(root: Path) -> OrchestrationConfig:
    """The section from ``root``/params.yaml; defaults (everything local) when it is absent."""
    from chatforge.core.config import read_params

    params_file = root / "params.yaml"
    if SECTION not in read_params(params_file):
        return OrchestrationConfig()
    return load_params_file(Params, params_file).orchestration


def deployment_name(pool: str) -> str:
    return f"{STAGE_FLOW}/{pool}"
