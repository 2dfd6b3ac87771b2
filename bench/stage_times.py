"""Where a pipeline run spent its time: each stage's wall time, read back from MLflow.

Every stage opens one MLflow run (chatforge/core/tracking.py: stage_run), so the tracking store
already holds each stage's start and end. This prints, for the latest run of each stage of
dvc.yaml (or for the children of one `chatforge run`, with --parent), in the order they ran: its
wall time, its share of the total and the finer timings its report logged (training, evaluation
sampling, export). Stages that DVC skipped as unchanged have no new run: their last run is shown
with its date.

Run: python bench/stage_times.py [--parent RUN_ID] [--root .]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Finer timings some stage reports log as metrics (seconds), shown beside the stage's wall time.
PARTS = {"train_seconds": "train", "eval_seconds": "eval sampling", "onnx.export_seconds": "export graph"}


def latest_runs(client, experiment_id: str, stages: list[str], parent: str | None) -> dict[str, object]:
    """{stage: its latest finished MLflow run} (only children of ``parent`` when given)."""
    query = f"tags.mlflow.parentRunId = '{parent}'" if parent else ""
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=5000)
    found: dict[str, object] = {}
    for run in runs:
        stage = run.data.tags.get("stage")
        if stage in stages and stage not in found and run.info.end_time:
            found[stage] = run
    return found


def main(argv: list[str] | None = None) -> int:
    import mlflow

    from chatforge.core.tracking import tracking_uri

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="the repo whose dvc.yaml and mlflow.db to read")
    parser.add_argument("--parent", help="a `chatforge run` parent run id: only its stages")
    args = parser.parse_args(argv)

    stages = list(yaml.safe_load((args.root / "dvc.yaml").read_text())["stages"])
    client = mlflow.MlflowClient(tracking_uri(args.root))
    experiment = client.get_experiment_by_name("chatforge")
    if experiment is None:
        print(f"no 'chatforge' experiment in {tracking_uri(args.root)}: nothing has run yet (make demo)")
        return 0
    runs = latest_runs(client, experiment.experiment_id, stages, args.parent)
    seconds = {s: (r.info.end_time - r.info.start_time) / 1000 for s, r in runs.items()}
    total = sum(seconds.values()) or 1.0
    print(f"{'stage':16s} {'wall s':>8s} {'share':>6s}  {'finished (UTC)':16s}  parts")
    # in the order they ran; stages with no run at the end
    for stage in sorted(stages, key=lambda s: runs[s].info.start_time if s in runs else float("inf")):
        if stage not in runs:
            print(f"{stage:16s} {'-':>8s} {'-':>6s}  {'never run':16s}")
            continue
        run = runs[stage]
        end = datetime.fromtimestamp(run.info.end_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        parts = ", ".join(f"{label} {run.data.metrics[key]:.0f} s" for key, label in PARTS.items()
                          if key in run.data.metrics)
        print(f"{stage:16s} {seconds[stage]:8.1f} {seconds[stage] / total:6.1%}  {end:16s}  {parts}")
    print(f"{'total':16s} {sum(seconds.values()):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
