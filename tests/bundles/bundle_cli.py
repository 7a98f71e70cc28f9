"""``python -m monai.bundle`` command lines for the dataset bundles' tests: build, run, check the exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out

from dycon_monai.bundle import WORKFLOW_NAME, DyconWorkflow

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


def export_and_run_torchscript(
    bundle: Path, configs: list, ckpt: Path, out: Path, in_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """``ckpt_export`` of ``network_def`` (in-process, MONAI's own code path); the output shape of the exported net."""
    configs_dir = bundle / "configs"
    ckpt_export(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=str(ckpt),
        meta_file=str(configs_dir / "metadata.json"),
        config_file=[str(c if Path(c).is_absolute() else configs_dir / c) for c in configs],
        bundle_root=str(bundle),
    )
    scripted = torch.jit.load(str(out), map_location="cpu").eval()
    return tuple(scripted(torch.zeros(*in_shape)).shape)


def verify_bundle_net(bundle: Path) -> None:
    """MONAI's ``verify_net_in_out`` on the bundle's ``inference.json`` and metadata."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        device="cpu",
        bundle_root=str(bundle),
    )


def split_error_messages(bundle: Path, configs: list, dataset_dir: Path, extra_case: str, tmp_path: Path) -> list[str]:
    """Initialise a training workflow on the stand-in's ``split.json`` with ``extra_case`` added to its training
    part; the messages of the error chain raised. Also asserts that the run stopped before writing any weights.
    """
    split = json.loads((dataset_dir / "split.json").read_text())
    split_file = tmp_path / "bad_split.json"
    split_file.write_text(json.dumps(dict(split, train=split["train"] + [extra_case])))
    configs_dir = bundle / "configs"
    workflow = DyconWorkflow(
        config_file=[str(c if Path(c).is_absolute() else configs_dir / c) for c in configs],
        logging_file=False,
        dataset_dir=str(dataset_dir),
        split_file=str(split_file),
        output_dir=str(tmp_path / "o"),
    )
    with pytest.raises(RuntimeError) as info:
        workflow.initialize()
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert not list((tmp_path / "o").rglob("model.pt"))
    return chain
