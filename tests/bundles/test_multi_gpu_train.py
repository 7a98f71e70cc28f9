"""``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo): the teacher ends identical on both ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_overrides import TINY

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "dycon_isles" / "configs"

#: one iteration past the validation at iteration 2, so both ranks also step after validating
MULTI_GPU_TINY = {**TINY, "max_iterations": 3}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("framework", ["mean_teacher", "co_training"])
def test_torchrun_two_processes_keep_identical_teacher(synthetic_cohort, tmp_path, framework):
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(MULTI_GPU_TINY))
    extra = [str(CONFIGS / "co_training.json")] if framework == "co_training" else []
    configs = repr([str(CONFIGS / "train.json"), *extra, str(CONFIGS / "multi_gpu_train.json"), str(tiny)])
    cmd = [
        *launcher,
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--workflow_name",
        "dycon_monai.bundle.DyconWorkflow",
        "--dataset_dir",
        str(synthetic_cohort),
        "--output_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "ddp",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600, env=env
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    run = tmp_path / "runs" / "ddp"
    check = json.loads((run / "distributed_check.json").read_text())
    for name in ("student", "teacher") if framework == "mean_teacher" else ("student", "network_b"):
        assert check[name]["ranks"] == 2 and check[name]["identical"], check
        assert len(set(check[name]["sha256"])) == 1
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2
    # one run folder shared by both ranks, written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]
    ckpt = torch.load(run / "models" / "checkpoint_final_iteration=3.pt", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 3 and (
        "teacher" in ckpt if framework == "mean_teacher" else "network_b" in ckpt
    )
    assert (run / "models" / "model.pt").is_file()
