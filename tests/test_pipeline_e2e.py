"""End to end in-process: the pipeline through `chatforge run` (Prefect + DVC + MLflow) on a copy of the repo.

It runs in a temporary git repo copied from this one, with the smoke profile applied by `--profile`,
against a real Prefect test server and a real sqlite MLflow store, then checks dvc.lock, the outputs,
the metrics and the parent/child runs; a second run must find the stages unchanged.

Which test covers what in the default run (`make test`):
- the whole smoke pipeline, every stage, is run once by tests/test_across_machines.py
  ::test_two_pools_two_clones_one_remote, on two Prefect pools: it makes every check of the whole
  in-process test below (dvc.lock, outputs, metrics, one parent run with a child per stage, a second
  run that runs nothing) and more (where each stage ran, artifacts through the remote);
- the in-process mode (the default, what `make demo` runs) is run here on its first stage by
  test_in_process_mode_runs_a_stage_then_finds_it_cached: `--profile`, the flow calling
  `dvc repro` in this checkout, the sqlite MLflow store with the parent and child run, the cached rerun.
The whole smoke pipeline in-process (test_pipeline_runs_end_to_end_then_is_cached) is marked slow
(`make test-all`): `make demo` runs the same in-process path on the full default.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)
    if (REPO.parent / "shared").exists():            # the shipped benchmark tasks read ../shared/data, as in CI
        (dest.parent / "shared").symlink_to(REPO.parent / "shared")
    git = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")
    return dest


def pipeline_runs(client):
    """(the chatforge experiment, its one ``pipeline`` parent run, {stage: child run})."""
    exp = client.get_experiment_by_name("chatforge")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    return exp, parents[0], {r.info.run_name: r for r in runs
                             if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}


def test_in_process_mode_runs_a_stage_then_finds_it_cached(tmp_path, mlflow_uri, prefect_server, capsys):
    import mlflow

    from flows.cli import main

    root = copy_repo(tmp_path / "repo")
    assert main(["run", "--root", str(root), "--profile", "smoke", "--only", "prepare_data"]) == 0
    assert list(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == ["prepare_data"]
    # 300 records: the smoke profile's cap, so --profile reached params.yaml (the default reads 7,168)
    assert json.loads((root / "reports/prepare_data.json").read_text())["records_in"] == 300
    for kind in ("documents", "conversations", "preferences", "prompts"):
        assert (root / "data/raw" / f"{kind}.jsonl").stat().st_size > 0
    client = mlflow.MlflowClient()
    exp, parent, children = pipeline_runs(client)
    assert list(children) == ["prepare_data"]
    assert children["prepare_data"].data.metrics["records_in"] == 300 and parent.data.metrics["stages_ran"] == 1

    capsys.readouterr()
    assert main(["run", "--root", str(root), "--only", "prepare_data"]) == 0
    assert "unchanged (cached)" in capsys.readouterr().out
    latest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.info.run_name == "pipeline" and latest.data.metrics["stages_cached"] == 1
    assert latest.data.metrics["stages_ran"] == 0


@pytest.mark.slow          # test_across_machines.py's two-pool run makes these checks in the default run
def test_pipeline_runs_end_to_end_then_is_cached(tmp_path, mlflow_uri, prefect_server, capsys):
    import mlflow

    from flows.cli import main

    root = copy_repo(tmp_path / "repo")
    assert main(["run", "--root", str(root), "--profile", "smoke"]) == 0
    stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(stages)

    # outputs and their reports
    prepare = json.loads((root / "reports/prepare_data.json").read_text())
    assert prepare["records_in"] == 300
    for kind in ("documents", "conversations", "preferences", "prompts"):
        assert (root / "data/raw" / f"{kind}.jsonl").stat().st_size > 0

    # MLflow: one parent run, a child per stage, with the stage's metrics
    client = mlflow.MlflowClient()
    exp, parent, children = pipeline_runs(client)
    assert sorted(children) == sorted(stages)
    assert children["prepare_data"].data.metrics["records_in"] == 300
    assert "benchmarks.policy.aggregate.value" in children["evaluate"].data.metrics
    assert parent.data.metrics["stages_ran"] == len(stages)

    # a second run re-runs nothing
    capsys.readouterr()
    assert main(["run", "--root", str(root)]) == 0
    assert "unchanged (cached)" in capsys.readouterr().out
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.run_name == "pipeline" and runs[0].data.metrics["stages_cached"] == len(stages)
    assert runs[0].data.metrics["stages_ran"] == 0
