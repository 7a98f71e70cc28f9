"""SIGKILL during training, then resume from the last atomic checkpoint: same final weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dycon_monai.handlers import latest_checkpoint

WORKER = Path(__file__).resolve().parent / "resume_worker.py"
TOTAL = 9  # resume_worker: 3 epochs x 3 iterations


def _worker(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def _iteration_of(path: Path) -> int:
    return int(path.name.split("=")[1].split(".")[0])


def _all_checkpoints_complete(ckpt_dir: Path) -> list[int]:
    done = []
    for p in sorted(ckpt_dir.glob("*.pt")):
        ckpt = torch.load(p, weights_only=True)  # a partial file would fail here
        assert ckpt["trainer"]["iteration"] == _iteration_of(p)
        done.append(_iteration_of(p))
    return done


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    full_dir.mkdir()
    run_dir.mkdir()
    reference = _worker(full_dir, "--full")
    out = _finish(reference)
    assert reference.returncode == 0, out

    # 1) killed (SIGKILL) halfway through writing the checkpoint of iteration 5
    proc = _worker(run_dir, "--die-in-save", "5")
    out = _finish(proc)
    assert proc.returncode == -signal.SIGKILL, out
    ckpt_dir = run_dir / "ckpt"
    assert _all_checkpoints_complete(ckpt_dir) == [3, 4]
    assert any(p.name.startswith(".tmp-") for p in ckpt_dir.iterdir())  # the interrupted write, never a .pt

    # 2) resumed, then killed from outside while training (slowed down so the kill lands mid-run)
    proc = _worker(run_dir, "--sleep", "0.5")
    deadline = time.time() + 240
    while time.time() < deadline:
        last = latest_checkpoint(ckpt_dir)
        if last is not None and _iteration_of(last) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode == -signal.SIGKILL, out
    assert "iteration 5 " in out and f"iteration {TOTAL} " not in out  # continued from 4, stopped before the end
    kept = _all_checkpoints_complete(ckpt_dir)
    assert 6 <= max(kept) < TOTAL

    # 3) resumed to the end
    proc = _worker(run_dir)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert f"iteration {max(kept) + 1} " in out and "iteration 1 " not in out

    ref = torch.load(full_dir / "final.pt", weights_only=True)
    got = torch.load(run_dir / "final.pt", weights_only=True)
    for part in ("student", "teacher"):
        assert ref[part].keys() == got[part].keys()
        for k in ref[part]:
            assert torch.equal(ref[part][k], got[part][k]), f"{part} {k} differs"
