"""The dycon_isles bundle through the real ``python -m monai.bundle`` command line, on a tiny synthetic cohort.

One tiny training run (a few iterations of DyCON on 32^3 patches of the 6 mm cohort) is shared by the tests of its
outputs, of evaluation, inference and TorchScript export. Bad inputs (unknown key or method, no dataset, an earlier
run in the way) stop before any training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_overrides import TINY
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_isles"
CONFIGS = BUNDLE / "configs"
WORKFLOW = "dycon_monai.bundle.DyconWorkflow"


def bundle_cmd(command: str, configs: list[str | Path], *args: str) -> list[str]:
    files = [str(c if Path(c).is_absolute() else CONFIGS / c) for c in configs]
    workflow = ["--workflow_name", WORKFLOW] if command == "run" else []
    return [sys.executable, "-m", "monai.bundle", command, "--config_file", repr(files), *workflow, *args]


def run_cli(cmd: list[str], expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    if not expect_ok:
        assert proc.returncode != 0, f"expected a failure:\n{proc.stdout[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def trained_run(synthetic_cohort, tiny_json, tmp_path_factory) -> Path:
    """A finished tiny DyCON training run (its run folder)."""
    out = tmp_path_factory.mktemp("runs")
    run_cli(
        bundle_cmd(
            "run",
            ["train.json", tiny_json],
            "--dataset_dir",
            str(synthetic_cohort),
            "--output_dir",
            str(out),
            "--run_name",
            "tiny",
            "--seed",
            "3",
        )
    )
    return out / "tiny"


def test_train_writes_checkpoints_model_and_run_record(trained_run, tiny_json):
    models = trained_run / "models"
    assert (models / "model.pt").is_file()
    assert (models / "checkpoint_final_iteration=2.pt").is_file()
    ckpt = torch.load(models / "checkpoint_final_iteration=2.pt", map_location="cpu", weights_only=False)
    assert {"network", "head", "teacher", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 2
    # model.pt is the bare backbone state dict: it loads strictly into network_def
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(tiny_json)])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu"), strict=True)
    # seed and the full resolved config are saved with the run
    info = json.loads((trained_run / "run_info.json").read_text())
    assert info["seed"] == 3 and info["method"] == "dycon" and info["dataset"] == "synthetic"
    assert info["labeled_cases"] >= 1 and info["run_dir"] == str(trained_run)
    config = json.loads((trained_run / "config.json").read_text())
    assert config["max_iterations"] == 2 and config["seed"] == 3 and config["network_def"]["channels"] == [4, 8, 16]
    datalist = json.loads((trained_run / "datalist.json").read_text())
    assert all("label" not in item for item in datalist["training_unlabeled"])
    assert list(trained_run.glob("events.out.tfevents.*")) and (trained_run / "log.txt").is_file()


def test_saved_config_reruns(trained_run, tmp_path):
    """The saved config.json is a complete bundle config: the same run from it alone needs no other file."""
    parser = ConfigParser()
    parser.read_config(str(trained_run / "config.json"))
    parser["output_dir"] = str(tmp_path)
    assert parser.get_parsed_content("epoch_length") == 2
    assert parser.get_parsed_content("method_config") == {
        "uncl_weight": 1.0,
        "fecl_weight": 1.0,
        "consistency_weight": 0.0,
    }


def test_evaluate_writes_metrics_summary_and_pictures(trained_run, synthetic_cohort, tiny_json):
    run_cli(
        bundle_cmd(
            "run",
            ["train.json", tiny_json, "evaluate.json"],
            "--dataset_dir",
            str(synthetic_cohort),
            "--output_dir",
            str(trained_run),
            "--run_name",
            "eval_test",
            "--model_path",
            str(trained_run / "models" / "model.pt"),
        )
    )
    out = trained_run / "eval_test"
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"case_id", "dice", "iou", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"} <= set(header)
    assert len(rows) >= 2
    summary = json.loads((out / "summary.json").read_text())
    for key in ("dice", "iou", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        assert {"mean", "std"} <= set(summary["metrics"][key])
    assert summary["run"]["method"] == "dycon" and summary["run"]["training_run"] == str(trained_run)
    assert summary["run"]["split"] == "test" and summary["run"]["dataset"] == "synthetic"
    assert list((out / "overlays").glob("*.png"))
    assert list((out / "entropy").glob("*_entropy.nii.gz"))
    # the evaluation was made on the test split's cases, in their original geometry
    ids = [r.split(",")[0] for r in rows[1:]]
    datalist = json.loads((out / "datalist.json").read_text())
    assert ids == [item["case_id"] for item in datalist["test"]]


def _odd_geometry_copy(src: Path, dst: Path) -> nib.Nifti1Image:
    """The image flipped along x (LAS), with anisotropic 5 x 6 x 7 mm voxels and a shifted origin."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj, dtype=np.float32)[::-1]
    affine = np.diag([-5.0, 6.0, 7.0, 1.0])
    affine[:3, 3] = [80.0, -90.0, -60.0]
    out = nib.Nifti1Image(data, affine)
    nib.save(out, str(dst))
    return out


def test_inference_writes_segmentation_and_entropy_in_input_geometry(
    trained_run, synthetic_cohort, tiny_json, tmp_path
):
    src = next(Path(synthetic_cohort).glob("rawdata/*/ses-0001/dwi/*_dwi.nii.gz"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ref = _odd_geometry_copy(src, inputs / "case_a.nii.gz")
    run_cli(
        bundle_cmd(
            "run",
            ["inference.json", tiny_json],
            "--dataset_dir",
            str(inputs),
            "--image_pattern",
            "*.nii.gz",
            "--output_dir",
            str(tmp_path / "out"),
            "--run_name",
            "infer",
            "--model_path",
            str(trained_run / "models" / "model.pt"),
        )
    )
    out = tmp_path / "out" / "infer"
    seg = nib.load(str(out / "case_a_seg.nii.gz"))
    ent = nib.load(str(out / "case_a_entropy.nii.gz"))
    for img in (seg, ent):
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    seg_values = np.unique(np.asarray(seg.dataobj))
    assert set(seg_values.tolist()) <= {0, 1}
    entropy = np.asarray(ent.dataobj)
    assert entropy.dtype == np.float32 and entropy.min() >= 0.0 and entropy.max() <= 1.0 + 1e-5


def test_ckpt_export_torchscript_matches_eager(trained_run, tiny_json, tmp_path):
    ts_path = tmp_path / "model.ts"
    files = repr([str(CONFIGS / "inference.json"), str(tiny_json)])
    run_cli(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--config_file", files]
        + ["--filepath", str(ts_path), "--ckpt_file", str(trained_run / "models" / "model.pt")]
        + ["--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(BUNDLE)]
    )
    scripted = torch.jit.load(str(ts_path), map_location="cpu")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(tiny_json)])
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(trained_run / "models" / "model.pt", map_location="cpu"))
    eager.eval()
    scripted.eval()
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-5, atol=1e-5)


def test_verify_net_in_out_passes():
    proc = run_cli(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--bundle_root",
            str(BUNDLE),
            "--device",
            "cpu",
        ]
    )
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ bad inputs


def test_unknown_config_key_is_an_error(tmp_path):
    proc = run_cli(
        bundle_cmd("run", ["train.json"], "--max_iteration", "5", "--output_dir", str(tmp_path)), expect_ok=False
    )
    assert "ValueError: Unknown config key" in proc.stderr and "Did you mean --max_iterations" in proc.stderr
    assert not any(tmp_path.iterdir())


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def run_in_process(configs: list[str], **overrides) -> None:
    """``monai.bundle.run`` in this process (what the CLI does, minus the interpreter start)."""
    from monai.bundle import run

    run(config_file=[str(CONFIGS / c) for c in configs], logging_file=False, workflow_name=WORKFLOW, **overrides)


def test_unknown_method_lists_choices(synthetic_cohort, tmp_path):
    with pytest.raises(RuntimeError) as err:
        run_in_process(["train.json"], method="dycon_v2", dataset_dir=str(synthetic_cohort), output_dir=str(tmp_path))
    cause = _root_cause(err.value)
    assert isinstance(cause, ValueError) and "unknown method 'dycon_v2'" in str(cause)
    for choice in ("supervised", "mean_teacher", "mt_uncl", "mt_fecl", "dycon"):
        assert choice in str(cause)
    assert not any(tmp_path.iterdir())


def test_missing_dataset_names_layout_and_demo(tmp_path):
    proc = run_cli(
        bundle_cmd("run", ["train.json"], "--dataset_dir", str(tmp_path / "ISLES-2022"), "--output_dir", str(tmp_path)),
        expect_ok=False,
    )
    output = proc.stdout + proc.stderr  # the workflow logs the root cause (stdout), the traceback follows (stderr)
    last = output[output.rindex("error: ") :]
    assert last.startswith("error: DatasetNotFoundError: No readable ISLES'22 dataset")
    assert "rawdata/sub-strokecase0001/ses-0001/dwi/" in last and "derivatives/" in last and "make demo" in last
    assert not (tmp_path / "ISLES-2022").exists()


def test_existing_run_is_never_overwritten(synthetic_cohort, tmp_path):
    earlier = tmp_path / "exp"
    earlier.mkdir()
    (earlier / "run_info.json").write_text('{"seed": 0}')
    (earlier / "model.pt").write_bytes(b"earlier weights")
    with pytest.raises(FileExistsError) as err:
        run_in_process(["train.json"], dataset_dir=str(synthetic_cohort), output_dir=str(tmp_path), run_name="exp")
    cause = _root_cause(err.value)
    assert isinstance(cause, FileExistsError) and "--overwrite true" in str(cause) and str(earlier) in str(cause)
    assert (earlier / "model.pt").read_bytes() == b"earlier weights"
    assert sorted(p.name for p in earlier.iterdir()) == ["model.pt", "run_info.json"]


def test_resume_continues_in_a_new_run_folder(trained_run, synthetic_cohort, tiny_json, tmp_path):
    run_in_process(
        ["train.json", str(tiny_json)],
        dataset_dir=str(synthetic_cohort),
        output_dir=str(tmp_path),
        run_name="resumed",
        resume_from=str(trained_run / "models"),
        max_iterations=4,
        seed=3,
    )
    ckpt = torch.load(
        tmp_path / "resumed" / "models" / "checkpoint_final_iteration=4.pt", map_location="cpu", weights_only=False
    )
    assert ckpt["trainer"]["iteration"] == 4
    assert (trained_run / "models" / "checkpoint_final_iteration=2.pt").is_file()  # the earlier run is untouched
