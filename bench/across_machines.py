"""Pool mode overhead: the smoke pipeline in-process (today's default) vs one pool with one worker vs
two pools with a worker each (training stages on "gpu", the rest on "cpu"; no GPU is used).

Each mode runs from scratch in its own copy of the repo (workers in their own clones, a local folder
as DVC remote), in one run of this script, against one temporary Prefect server and one
``mlflow server`` on loopback. Stages run one at a time in every mode, so pool mode can only add
time: a flow-run start per stage, the pulls and pushes. Bytes are what the workers moved.
Run: python bench/across_machines.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.run_command import PREFECT_DEFAULTS

for key, value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="chatforge-bench-prefect-"))
os.environ.pop("MLFLOW_TRACKING_URI", None)

from tests.test_across_machines import (
    Cluster,
    free_port,
    git,
    records,
    stop_group,
    wait_http,
)
from tests.test_pipeline_e2e import copy_repo

TRAINING = ("pretrain", "sft", "train_reward", "rlhf")
MODES = {
    "in-process (default)": None,
    "1 pool, 1 worker": {"default_pool": "cpu", "pools": {}},
    "2 pools, 2 workers": {"default_pool": "cpu", "pools": {s: "gpu" for s in TRAINING}},
}


def prepare(folder: Path, placement: dict | None) -> Path:
    import yaml

    from flows.profiles import apply_profile

    root = copy_repo(folder / "repo")
    apply_profile(root, "smoke")
    if placement:
        (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump(
            {"orchestration": {**placement, "remote": "../remote", "poll_seconds": 1.0}}))
        apply_profile(root, "bench")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "bench")
    return root


def main() -> None:
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli import main as chatforge

    tmp = Path(tempfile.mkdtemp(prefix="chatforge-bench-across-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination",
                               str(tmp / "mlartifacts"), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    per_stage: dict[str, list[dict]] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, "mlflow server")
        os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        with prefect_test_harness(server_startup_timeout=180):
            api = get_current_settings().api.url
            for mode, placement in MODES.items():
                folder = tmp / f"mode{len(rows)}"
                folder.mkdir()
                root = prepare(folder, placement)
                cluster = Cluster(folder, api, os.environ["MLFLOW_TRACKING_URI"])
                for pool in sorted(set((placement or {}).get("pools", {}).values())
                                   | ({placement["default_pool"]} if placement else set())):
                    cluster.start_worker(pool, f"clone-{pool}")
                os.environ.update(PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1")
                started = time.monotonic()
                try:
                    assert chatforge(["run", "--root", str(root)]) == 0
                finally:
                    cluster.stop()
                seconds = time.monotonic() - started
                done = list(records(folder).values()) if placement else []
                rows.append((mode, seconds, sum(r["bytes_pushed"] for r in done), sum(r["bytes_pulled"] for r in done)))
                per_stage[mode] = done
    finally:
        stop_group(server)
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0][1]
    print(f"\n{'mode':24s} {'wall s':>8s} {'x in-process':>13s} {'bytes pushed':>13s} {'bytes pulled':>13s}")
    for mode, seconds, pushed, pulled in rows:
        print(f"{mode:24s} {seconds:8.1f} {seconds / base:13.2f} {pushed:13d} {pulled:13d}")
    from flows.pipeline import dvc_stage_order

    order = dvc_stage_order(REPO)
    for mode, done in ((m, d) for m, d in per_stage.items() if d):   # in-process mode writes no records
        print(f"\n{mode}: stage, pool, seconds on the worker (pull + dvc repro + push), bytes pulled, pushed")
        for r in sorted(done, key=lambda r: order.index(r["stage"])):     # the remote's record names are run ids
            print(f"  {r['stage']:16s} {r['pool']:4s} {r['seconds']:7.1f} {r['bytes_pulled']:10d} {r['bytes_pushed']:10d}")


if __name__ == "__main__":
    main()
