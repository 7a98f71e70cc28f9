"""``python -m monai.bundle`` command lines for the dataset bundles' tests: build, run, check the exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dycon_monai.bundle import WORKFLOW_NAME

REPO = Path(__file__).resolve().parents[2]


def bundle_cmd(configs_dir: Path, command: str, configs: list, *args: str) -> list[str]:
    """``python -m monai.bundle <command>`` over ``configs`` (names in ``configs_dir``, or absolute paths)."""
    files = [str(c if Path(c).is_absolute() else configs_dir / c) for c in configs]
    workflow = ["--workflow_name", WORKFLOW_NAME] if command == "run" else []
    return [sys.executable, "-m", "monai.bundle", command, "--config_file", repr(files), *workflow, *args]


def run_cmd(cmd: list[str], expect_ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; fail with its output when the exit status is not the expected one."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    if not expect_ok:
        assert proc.returncode != 0, proc.stdout[-2000:]
    return proc


def split_args(root: Path) -> list[str]:
    """``--dataset_dir`` and the stand-in's own ``split.json``."""
    return ["--dataset_dir", str(root), "--split_file", str(root / "split.json")]
