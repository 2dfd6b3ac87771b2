"""MLflow tracking for stages: one helper that every stage opens its run with.

- The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else the embedded default
  ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts/`` (absolute paths, so
  runs from ``dvc exp run`` land in the same store).
- When the Prefect flow runs a stage it passes its parent run id in ``CHATFORGE_PARENT_RUN_ID``
  (never ``MLFLOW_RUN_ID``: mlflow and transformers read that as "resume this run"); the stage's
  run becomes a child of it. A stage run on its own opens a top-level run.
- Each run gets params (the resolved config, flattened), tags (stage, git commit, DVC experiment)
  and the config file as an artifact; ``StageRun.report`` writes ``reports/<stage>.json`` and logs
  its numbers as metrics.

mlflow is imported inside functions: it costs ~2.5 s, and library modules that unit tests
import must not pay it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chatforge.core.config import flatten, save_config, to_dict
from chatforge.core.files import write_json
from chatforge.core.launcher import is_main_process

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "CHATFORGE_PARENT_RUN_ID"
EXPERIMENT_ENV = "CHATFORGE_EXPERIMENT"
DEFAULT_EXPERIMENT = "chatforge"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure logging once, from a stage's or the CLI's main()."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "filelock", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the absolute sqlite file at the repo root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(root or Path.cwd()).resolve() / 'mlflow.db'}"


def configure_mlflow(root: Path | None = None, experiment: str | None = None) -> str:
    """Point mlflow at our store and select (creating if needed) the experiment; returns its id."""
    import mlflow

    root = (root or Path.cwd()).resolve()
    mlflow.set_tracking_uri(tracking_uri(root))
    name = experiment or os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    found = mlflow.get_experiment_by_name(name)
    if found is None and tracking_uri(root).startswith(("http://", "https://")):
        # A tracking server picks the artifact store (its --artifacts-destination), so that stages on
        # other machines write their artifacts there too, not to a path on the machine that made it.
        exp_id = mlflow.create_experiment(name)
    elif found is None:
        artifacts = (root / "mlartifacts").resolve()
        # Absolute artifact location: the default is relative to the CWD at creation time.
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
    else:
        exp_id = found.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path | None = None) -> str:
    """The current commit (with ``-dirty`` when tracked files have changes), or ``unknown``. dvc.lock does
    not count: ``dvc repro`` rewrites it after each stage, so every stage after the first would be dirty."""
    try:
        cwd = root or Path.cwd()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(exclude,top)dvc.lock"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def numeric_metrics(data: Any, prefix: str = "") -> dict[str, float]:
    """The numbers in a (nested) report, flattened to ``a.b`` keys, for mlflow.log_metrics (bools as 0/1)."""
    return {k: float(v) for k, v in flatten(data, prefix).items() if isinstance(v, (int, float))}


class StageRun:
    """What a stage's ``with stage_run(...) as run`` gets: log metrics, artifacts, the report."""

    def __init__(self, stage: str, mlflow_run: Any | None):
        self.stage = stage
        self._run = mlflow_run

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run else None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._run:
            import mlflow

            mlflow.log_metrics(numeric_metrics(metrics), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._run and path.exists():
            import mlflow

            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._run:
            import mlflow

            mlflow.log_text(text, artifact_file)

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator[None]:
        """A nested MLflow run for a second model trained in the same stage (its trainer's params would
        clash with the first's in one run); nothing when this stage logs no run."""
        if not self._run:
            yield
            return
        import mlflow

        with mlflow.start_run(run_name=f"{self.stage}/{name}", nested=True):
            yield

    def report(self, path: Path, data: dict[str, Any]) -> None:
        """Write the stage's report (a DVC metrics file), log its numbers and the file itself."""
        if not is_main_process():
            return
        write_json(path, data)
        self.log_metrics(data)
        self.log_artifact(path)


@contextlib.contextmanager
def stage_run(stage: str, cfg: Any, *, root: Path | None = None, save_to: Path | None = None) -> Iterator[StageRun]:
    """Open the stage's MLflow run (child of the pipeline's run when there is one).

    ``cfg`` is the stage's resolved config: logged as params and as ``config.yaml``; with
    ``save_to`` it is also written there (next to the stage's outputs). On rank != 0 nothing is
    logged and a no-op StageRun is yielded.
    """
    if not is_main_process():
        yield StageRun(stage, None)
        return
    import mlflow

    root = (root or Path.cwd()).resolve()
    configure_mlflow(root)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags = {"stage": stage, "dvc_stage": stage, "git_commit": git_commit(root),
            "dvc_exp": os.environ.get("DVC_EXP_NAME", "")}
    if save_to is not None:
        save_config(cfg, save_to)
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags) as run:
        params = flatten(to_dict(cfg))
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        with tempfile.TemporaryDirectory() as tmp:
            cfg_file = Path(tmp) / "config.yaml"
            save_config(cfg, cfg_file)
            mlflow.log_artifact(str(cfg_file))
        log.info("%s: MLflow run %s%s", stage, run.info.run_id, f" (child of {parent})" if parent else "")
        yield StageRun(stage, run)
