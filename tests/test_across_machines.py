"""Across machines: the smoke pipeline with stages on two Prefect work pools, each served by a process
worker in its own git clone, sharing only a local DVC remote and a real ``mlflow server`` (loopback).

The flow runs in a third checkout (the user's), which holds dvc.lock and nothing else: every output
goes from the clone that made it, through the remote, to the clone that reads it. A second run on the
unchanged workspace submits nothing. A stage whose job is killed mid-run is resubmitted and finishes
on a worker of its pool, and the killed attempt leaves nothing in the remote.

test_two_pools_two_clones_one_remote is the default run's whole-pipeline test: besides the pool
checks it makes every check of tests/test_pipeline_e2e.py's in-process whole-pipeline run (dvc.lock,
outputs, metrics, one parent run with a child per stage, a second run that runs nothing), which is
marked slow; test_pipeline_e2e.py keeps the in-process mode in the default run on one stage.
The cluster (mlflow server, two workers; the Prefect test server is the test run's) is set up once
for this module: the killed-job test runs after the two-pool test on the same cluster (or alone).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import REPO, copy_repo

# data stages on the default pool "cpu", training stages on "gpu" (a pool name: no GPU is used here)
PLACEMENT = {"default_pool": "cpu", "pools": {s: "gpu" for s in ("pretrain", "sft", "train_reward", "rlhf")},
             "remote": "../remote", "poll_seconds": 0.25}
# On top of the smoke profile, so that this test fits the default run: the tests' tiny architecture
# (2 layers, hidden 32, as tests/conftest.py's tiny model) and 4 pretraining steps instead of 9 (the
# smoke model's steps took ~2 s each); export verifies and times one prompt for 4 tokens (it spent
# ~45 s decoding 4 x (24 + 32) tokens twice), the generation benchmark writes 8 tokens, not 48
# (~20 s over three models). Every stage, output and metric is still made.
FASTER = {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64},
          "pretrain": {"max_tokens": 8192},
          "export": {"prompts": [[{"role": "user", "content": "Hello! How are you today?"}]],
                     "max_new_tokens": 4, "benchmark_tokens": 4},
          "evaluate": {"benchmarks": {"tasks": [
              {"task": "hh_harmless_mc", "limit": 4},
              {"task": "gsm8k_local", "metric": "exact_match", "filter": "strict-match", "limit": 2,
               "max_gen_toks": 8}]}}}


def test_placement_names_pools_and_rejects_unknown_stages(tmp_path):
    from chatforge.core.config import ConfigError
    from flows.placement import OrchestrationConfig, load_orchestration

    assert not load_orchestration(REPO).distributed                   # the repo's default: all in-process
    cfg = OrchestrationConfig(default_pool="cpu", pools={"pretrain": "gpu"}, remote="../remote")
    assert (cfg.pool_for("pretrain"), cfg.pool_for("export"), cfg.distributed) == ("gpu", "cpu", True)
    assert cfg.remote_url(tmp_path / "repo") == str(tmp_path / "remote")
    assert OrchestrationConfig(remote="s3://bucket/x").remote_url(tmp_path) == "s3://bucket/x"
    with pytest.raises(ValueError, match="orchestration.pools.*pretrian"):
        OrchestrationConfig(pools={"pretrian": "gpu"}).check(["pretrain"])
    (tmp_path / "params.yaml").write_text("orchestration:\n  pools: {pretrain: 3}\n")
    with pytest.raises(ConfigError, match="orchestration.pools.pretrain"):
        load_orchestration(tmp_path)


def test_a_stage_is_unchanged_by_its_lock_entry_and_the_remote_without_its_data(tmp_path):
    """Pool mode's second run submits nothing: flows/freshness.py finds a stage unchanged from the
    flow's checkout (code, params, dvc.lock) and the remote, without the data; and changed when its
    params, its code, the file it reads inside an upstream directory, or the remote's copy moved."""
    from flows.freshness import unchanged_in_remote
    from flows.remote import configure_remote

    root = tmp_path / "repo"
    root.mkdir()
    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=root, check=True, capture_output=True)
    fresh = lambda: tuple(unchanged_in_remote(root, s) for s in ("a", "b", "c"))
    git(root, "init", "-q")
    (root / "params.yaml").write_text("b: {n: 1}\n")
    (root / "x.txt").write_text("x\n")
    (root / "y.txt").write_text("y\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "mkdir -p a && cp x.txt y.txt a/", "deps": ["x.txt", "y.txt"], "outs": ["a"]},
        "b": {"cmd": "cat a/x.txt params.yaml > b.txt", "deps": ["a/x.txt"], "params": ["b"], "outs": ["b.txt"]},
        "c": {"cmd": "cp b.txt c.txt", "deps": ["b.txt"], "outs": ["c.txt"]}}}))
    dvc("init", "-q")
    configure_remote(root, str(tmp_path / "remote"))

    def run_elsewhere(*stages: str) -> None:
        """Run and push, then drop the data and the cache: the flow's checkout holds only dvc.lock."""
        dvc("repro", *stages)
        dvc("push")
        for path in ("a", "b.txt", ".dvc/cache"):
            shutil.rmtree(root / path) if (root / path).is_dir() else (root / path).unlink(missing_ok=True)

    run_elsewhere("a", "b")                                          # c never ran: no lock entry
    assert fresh() == (True, True, False)
    (root / "params.yaml").write_text("b: {n: 2}\n")
    assert fresh() == (True, False, False)                           # b's params moved
    (root / "params.yaml").write_text("b: {n: 1}\n")
    (root / "y.txt").write_text("y2\n")
    assert fresh() == (False, True, False)                           # a's dependency moved
    run_elsewhere("a")
    assert fresh() == (True, True, False)                            # a's new output keeps b's a/x.txt
    (root / "x.txt").write_text("x2\n")
    run_elsewhere("a")
    assert fresh() == (True, False, False)                           # b's a/x.txt is another file now
    run_elsewhere("b")
    assert fresh() == (True, True, False)
    b_out = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["b"]["outs"][0]["md5"]
    (tmp_path / "remote" / "files" / "md5" / b_out[:2] / b_out[2:]).unlink()
    assert fresh() == (True, False, False)                           # the remote lost b's output


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_k8s_job_templates_declare_what_they_use(name):
    """Every {{ placeholder }} of the job is a declared variable; the gpu pool's jobs request a GPU."""
    template = json.loads((REPO / "deploy" / "k8s" / f"{name}-base-job-template.json").read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"{{ *(\w+) *}}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (name == "gpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(1800):                                  # minutes on a loaded 2-core machine
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url}")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


class Cluster:
    def __init__(self, tmp: Path, api_url: str, tracking_uri: str):
        self.tmp, self.api_url, self.tracking_uri = tmp, api_url, tracking_uri
        self.workers: dict[str, subprocess.Popen] = {}

    def env(self, clone: Path | None = None) -> dict[str, str]:
        env = dict(os.environ, PREFECT_API_URL=self.api_url, MLFLOW_TRACKING_URI=self.tracking_uri,
                   PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
        if clone is not None:
            env.update(CHATFORGE_ROOT=str(clone), PYTHONPATH=str(clone),
                       PREFECT_HOME=str(self.tmp / f"prefect-home-{clone.name}"))
        return env

    def start_worker(self, pool: str, name: str) -> Path:
        clone = self.tmp / name
        git(self.tmp, "clone", "-q", str(self.tmp / "repo"), name)
        log = (self.tmp / f"{name}.log").open("w")
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
             "--name", name], cwd=clone, env=self.env(clone), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return clone

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15                      # for all of them: a worker that hangs on
        for proc in self.workers.values():                   # SIGTERM (seen here) costs 15 s, not 30 s each
            stop_group(proc, max(0.0, deadline - time.monotonic()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _mlflow_seed_db, prefect_server):
    from flows.profiles import apply_profile

    tmp = tmp_path_factory.mktemp("across")
    db = tmp / "mlflow.db"
    shutil.copyfile(_mlflow_seed_db, db)                      # migrated once per test run (conftest)
    port = free_port()
    mlflow_log = (tmp / "mlflow-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
                               str(tmp / "mlartifacts"), "--workers", "1"], stdout=mlflow_log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              # no job runner (two more processes, each importing mlflow): chatforge runs no server jobs
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    root = copy_repo(tmp / "repo")
    apply_profile(root, "smoke")
    (root / "profiles" / "two-pools.yaml").write_text(yaml.safe_dump({"orchestration": PLACEMENT, **FASTER}))
    apply_profile(root, "two-pools")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "smoke profile on two pools")
    try:
        c = Cluster(tmp, prefect_server, f"http://127.0.0.1:{port}")
        c.start_worker("cpu", "clone-cpu")                     # they start while mlflow does
        c.start_worker("gpu", "clone-gpu")
        try:
            wait_http(f"http://127.0.0.1:{port}/health", server, "mlflow server")
            with pytest.MonkeyPatch.context() as mp:
                for key, value in c.env().items():
                    mp.setenv(key, value)
                yield c
        finally:
            c.stop()
    finally:
        stop_group(server)


def stop_group(proc: subprocess.Popen, wait: float = 30) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL after ``wait`` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def stage_flow_runs() -> int:
    """How many stage runs the pipeline flows have submitted to the pools so far."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows.placement import STAGE_FLOW

    with get_client(sync_client=True) as client:
        return client.count_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[STAGE_FLOW])))


def records(tmp: Path) -> dict[str, dict]:
    """{flow run id: record} of every stage run written to the remote."""
    return {p.stem: json.loads(p.read_text()) for p in (tmp / "remote" / "chatforge" / "stage-runs").glob("*.json")}


def test_two_pools_two_clones_one_remote(cluster, capsys, pytestconfig):
    import mlflow

    from flows.cli import main
    from flows.pipeline import dvc_stage_order

    root = cluster.tmp / "repo"
    stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    started = time.monotonic()
    assert main(["run", "--root", str(root)]) == 0
    first_run_s = time.monotonic() - started

    # every stage ran once, on the pool the params name, in that pool's clone
    ran_keys = records(cluster.tmp).keys()
    ran = {r["stage"]: r for r in records(cluster.tmp).values()}
    assert sorted(ran) == sorted(stages)
    for stage, record in ran.items():
        pool = PLACEMENT["pools"].get(stage, PLACEMENT["default_pool"])
        assert (record["pool"], record["status"]) == (pool, "ran")
        assert record["checkout"] == str(cluster.tmp / f"clone-{pool}")
    # artifacts flowed through the remote: the cpu clone read what the gpu clone made, and back
    assert min(ran[s]["bytes_pulled"] for s in ("pretrain", "export", "evaluate")) > 0   # each reads the other pool's
    assert (cluster.tmp / "clone-cpu" / "models" / "policy" / "model.safetensors").exists()   # made on gpu
    assert (cluster.tmp / "clone-gpu" / "data" / "clean" / "conversations.jsonl").exists()    # made on cpu
    assert not (root / "models").exists()                         # the flow's checkout holds only dvc.lock
    assert sorted(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == sorted(stages)
    if pytestconfig.getoption("capture") == "no":                # with -s: where each stage ran
        with capsys.disabled():
            print(f"\nfirst run {first_run_s:.0f} s; bytes pushed {sum(r['bytes_pushed'] for r in ran.values())}, "
                  f"pulled {sum(r['bytes_pulled'] for r in ran.values())}")
            for stage in dvc_stage_order(root):                # the order they ran in
                print(f"  {stage:16s} {ran[stage]['pool']:4s} {ran[stage]['seconds']:6.1f} s  pulled "
                      f"{ran[stage]['bytes_pulled']:>9d}  pushed {ran[stage]['bytes_pushed']:>9d}")
    # the outputs are whole where they were made (the checks of tests/test_pipeline_e2e.py's local run)
    cpu = cluster.tmp / "clone-cpu"
    assert json.loads((cpu / "reports" / "prepare_data.json").read_text())["records_in"] == 300
    for kind in ("documents", "conversations", "preferences", "prompts"):
        assert (cpu / "data" / "raw" / f"{kind}.jsonl").stat().st_size > 0

    # MLflow server: one parent run, every stage's run its child; the registry aliases are set
    client = mlflow.MlflowClient(cluster.tracking_uri)
    exp = client.get_experiment_by_name("chatforge")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(stages)
    assert children["prepare_data"].data.metrics["records_in"] == 300
    assert "benchmarks.policy.aggregate.value" in children["evaluate"].data.metrics
    assert parent.data.metrics["stages_ran"] == len(stages)
    assert parent.data.params["placement.pretrain"].startswith("gpu@")
    assert client.get_model_version_by_alias("chatforge-policy", "candidate").version == "1"

    # the same workspace again: nothing runs, nothing is even submitted (dvc.lock and the remote say
    # every stage is unchanged: flows/freshness.py)
    submitted = stage_flow_runs()
    capsys.readouterr()
    started = time.monotonic()
    assert main(["run", "--root", str(root)]) == 0
    second_run_s = time.monotonic() - started
    assert "unchanged (cached)" in capsys.readouterr().out
    assert records(cluster.tmp).keys() == ran_keys and stage_flow_runs() == submitted
    latest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.info.run_name == "pipeline" and latest.data.metrics["stages_ran"] == 0
    assert latest.data.metrics["stages_cached"] == len(stages)
    assert latest.data.params["placement.pretrain"] == "gpu (unchanged, not submitted)"
    if pytestconfig.getoption("capture") == "no":
        with capsys.disabled():
            print(f"second run {second_run_s:.0f} s")


def stage_process_group(stage: str, under: Path) -> int | None:
    """The process group of a running ``python -m stages.<stage>`` in a checkout under ``under`` (a
    worker's job for it), if any; other processes on the machine are never touched."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if b"-m" in cmd and f"stages.{stage}".encode() in cmd and cwd.is_relative_to(under):
            return os.getpgid(int(proc.name))
    return None


def test_killed_stage_is_resubmitted_and_leaves_nothing(cluster):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    root = cluster.tmp / "repo"
    cluster.start_worker("cpu", "clone-cpu2")                      # a second worker of the pool
    before = set(records(cluster.tmp))
    run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--root", str(root), "--only",
                            "prepare_data", "--force"], cwd=root, env=cluster.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pgid = None
    while pgid is None and run.poll() is None:
        pgid = stage_process_group("prepare_data", cluster.tmp)
        time.sleep(0.2)
    assert pgid is not None, run.communicate()[0][-3000:]
    worker_pgids = {os.getpgid(p.pid) for p in cluster.workers.values()}
    assert pgid not in worker_pgids                                # the job, not the worker process
    os.killpg(pgid, signal.SIGKILL)
    out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out[-4000:]

    with get_client(sync_client=True) as client:
        attempts = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["prepare_data@cpu"])))
    states = sorted(r.state.type.value for r in attempts if str(r.id) not in before)
    assert "CRASHED" in states and "COMPLETED" in states, states
    crashed = [str(r.id) for r in attempts if r.state.type.value == "CRASHED"]
    new = {k: v for k, v in records(cluster.tmp).items() if k not in before}
    assert [r["stage"] for r in new.values()] == ["prepare_data"] and not set(crashed) & set(new)
    # every object in the remote is whole: its content hashes to its name
    files = cluster.tmp / "remote" / "files" / "md5"
    for obj in files.rglob("*"):
        if obj.is_file() and not obj.name.endswith(".dir"):
            assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name, obj
