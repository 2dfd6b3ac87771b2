"""``chatforge run``: the whole pipeline in-process, on an ephemeral Prefect server.

Nothing to start by hand: with no ``PREFECT_API_URL`` set, Prefect starts a temporary local API
server for the flow. Prints which stages ran and which DVC found unchanged.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# Prefect's ephemeral server needs more than its 20 s default to start (and migrate its DB) on
# a 2-core machine (measured: ~27 s for a fresh PREFECT_HOME); set before prefect is imported.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "chatforge,stages",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",   # stage code logging outside a flow run
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="apply profiles/NAME.yaml to params.yaml first (e.g. gpu-small)")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages (in DAG order)")
    p.add_argument("--force", action="store_true", help="re-run stages even when DVC finds them unchanged")
    p.add_argument("--root", type=Path, default=Path("."), help="the chatforge repo (default: .)")


def run(args: argparse.Namespace) -> int:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from rich.console import Console
    from rich.table import Table

    from chatforge.core.tracking import tracking_uri
    from flows.pipeline import pipeline
    from flows.profiles import apply_profile

    console = Console()
    root = args.root.resolve()
    if not (root / "dvc.yaml").exists():
        console.print(f"[red]{root}: no dvc.yaml here; run from the chatforge repo or pass --root[/red]")
        return 2
    if args.profile:
        changed = apply_profile(root, args.profile)
        console.print(f"params.yaml: applied profiles/{args.profile}.yaml ({len(changed)} keys changed)")
    started = time.monotonic()
    results = pipeline(only=args.only, root=str(root), force=args.force)
    table = Table(title=f"chatforge pipeline ({time.monotonic() - started:.0f} s)")
    table.add_column("stage")
    table.add_column("result")
    for stage, status in results.items():
        table.add_row(stage, "[green]ran[/green]" if status == "ran" else "[dim]unchanged (cached)[/dim]")
    console.print(table)
    console.print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri(root)}")
    return 0
