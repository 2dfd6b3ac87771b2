"""bench/gpu_check.sh in its CPU dry mode: the same code as on a GPU at toy sizes, one table and its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_mode_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry", "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gpu-small pretrain (dry)" in run.stdout and "smollm2-gpu SFT (dry)" in run.stdout
    report = json.loads(out.read_text())
    for key in ("pretrain_gpu_small", "sft_smollm2_gpu"):
        r = report[key]
        assert r["tokens_per_s"] > 0 and r["steps"] == 2 and r["first_loss"] > 0
    assert report["tensorrt"] and report["device"] == "cpu"
