"""The dycon_la bundle through ``python -m monai.bundle`` on the synthetic h5 stand-in: train, evaluate, infer, export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import bundle_cmd, run_cmd, split_args
from bundle_overrides import LA_TINY
from monai.bundle import ConfigParser

from dycon_monai.bundle import DyconWorkflow

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_la"
CONFIGS = BUNDLE / "configs"


def _cmd(command: str, configs: list, *args: str) -> list[str]:
    return bundle_cmd(CONFIGS, command, configs, *args)


def _run(cmd: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect_ok, timeout=300)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("la_tiny") / "tiny.json"
    path.write_text(json.dumps(LA_TINY))
    return path


@pytest.fixture(scope="module")
def la_run(synthetic_la, tiny_json, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("la_runs")
    _run(_cmd("run", ["train.json", tiny_json], *split_args(synthetic_la), "--output_dir", str(out), "--run_name", "t"))
    return out / "t"


@pytest.mark.parametrize(
    "names",
    [
        ("train.json",),
        ("train.json", "cpu_quick.json"),
        ("train.json", "cpu_quick.json", "evaluate.json"),
        ("train.json", "demo.json", "evaluate.json"),
        ("inference.json",),
        ("inference.json", "cpu_quick.json"),
    ],
)
def test_la_configs_parse(names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bundle_root "." is the bundle folder, whatever the working directory
    parser = DyconWorkflow(config_file=[str(CONFIGS / n) for n in names], logging_file=False).parser
    parser.parse()
    assert Path(parser.get_parsed_content("bundle_root")) == BUNDLE
    for key in ("device", "network_def", "initialize", "run"):
        assert key in parser


def test_la_bundle_files_follow_model_zoo_layout():
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "cpu_quick.json", "demo.json"):
        json.loads((CONFIGS / name).read_text())
    assert (CONFIGS / "logging.conf").is_file()
    assert (BUNDLE / "docs" / "README.md").is_file() and (BUNDLE / "docs" / "data_license.txt").is_file()
    assert (BUNDLE / "models" / "README.md").is_file()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["patch_size"] == [112, 112, 80] and train["batch_size"] == 4 and train["max_iterations"] == 6000
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert evaluate["sw_stride"] == [18, 18, 4]


def test_la_train_writes_model_and_labeled_subset(la_run):
    assert (la_run / "models" / "model.pt").is_file()
    datalist = json.loads((la_run / "datalist.json").read_text())
    assert len(datalist["training_labeled"]) == 2
    assert all("label" not in d for d in datalist["training_unlabeled"])
    assert len(datalist["training_unlabeled"]) == 3 and len(datalist["test"]) == 3


def test_la_evaluate_writes_both_metric_policies(la_run, synthetic_la, tiny_json):
    _run(
        _cmd(
            "run",
            ["train.json", tiny_json, "evaluate.json"],
            *split_args(synthetic_la),
            "--output_dir",
            str(la_run),
            "--run_name",
            "eval",
            "--model_path",
            str(la_run / "models" / "model.pt"),
        )
    )
    with open(la_run / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == json.loads((synthetic_la / "split.json").read_text())["test"]
    assert {"dice", "hd95_mm", "paper_dice", "paper_hd95_mm", "paper_asd_mm"} <= set(rows[0])
    # the label was read on the original 0.625 mm grid
    assert all(r["spacing_mm"] == "0.625x0.625x0.625" for r in rows)


def test_la_inference_writes_masks_next_to_case_names(la_run, synthetic_la, tiny_json, tmp_path):
    cases = tmp_path / "cases"
    case = sorted(p for p in synthetic_la.iterdir() if p.is_dir())[0]
    (cases / case.name).mkdir(parents=True)
    (cases / case.name / "mri_norm2.h5").write_bytes((case / "mri_norm2.h5").read_bytes())
    _run(
        _cmd(
            "run",
            ["inference.json", tiny_json],
            "--dataset_dir",
            str(cases),
            "--output_dir",
            str(tmp_path / "out"),
            "--run_name",
            "infer",
            "--model_path",
            str(la_run / "models" / "model.pt"),
        )
    )
    seg = nib.load(str(next((tmp_path / "out" / "infer").rglob("*_seg.nii.gz"))))
    assert seg.shape == (64, 56, 32)
    np.testing.assert_allclose(np.diag(seg.affine)[:3], [0.625] * 3, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


def test_la_ckpt_export_and_verify_net(la_run, tiny_json, tmp_path):
    ts = tmp_path / "model.ts"
    _run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
        + ["--config_file", repr([str(CONFIGS / "inference.json"), str(tiny_json)])]
        + ["--filepath", str(ts), "--ckpt_file", str(la_run / "models" / "model.pt")]
        + ["--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(BUNDLE)]
    )
    scripted = torch.jit.load(str(ts), map_location="cpu").eval()
    assert scripted(torch.zeros(1, 1, 32, 32, 16)).shape == (1, 2, 32, 32, 16)
    proc = _run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
        + ["--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json")]
        + ["--bundle_root", str(BUNDLE), "--device", "cpu"]
    )
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_la_missing_case_of_split_stops_before_training(synthetic_la, tiny_json, tmp_path):
    bad = tmp_path / "split.json"
    split = json.loads((synthetic_la / "split.json").read_text())
    bad.write_text(json.dumps({"train": split["train"] + ["NO_SUCH_CASE"], "test": split["test"]}))
    proc = _run(
        _cmd("run", ["train.json", tiny_json], "--dataset_dir", str(synthetic_la), "--split_file", str(bad))
        + ["--output_dir", str(tmp_path / "o")],
        expect_ok=False,
    )
    assert "NO_SUCH_CASE" in proc.stdout + proc.stderr
    assert not list((tmp_path / "o").rglob("model.pt"))


def test_la_inference_postprocessing_creates_no_run_folder(tmp_path, monkeypatch):
    """MONAI Label builds inference.json's post-processing for every model it loads: nothing may be created."""
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser.get_parsed_content("postprocessing", instantiate=True)
    assert Path(parser.get_parsed_content("run_dir")).name.startswith("infer_")
    assert not (tmp_path / "runs").exists()


def test_la_upper_bound_trains_with_no_unlabeled_cases(synthetic_la, tiny_json, tmp_path):
    """labeled_count all leaves the unlabeled stream empty: supervised trains, a semi-supervised method is refused."""
    base = split_args(synthetic_la) + ["--labeled_count", "all", "--output_dir", str(tmp_path)]
    _run(_cmd("run", ["train.json", tiny_json], *base, "--method", "supervised", "--run_name", "up"))
    assert (tmp_path / "up" / "models" / "model.pt").is_file()
    datalist = json.loads((tmp_path / "up" / "datalist.json").read_text())
    assert datalist["training_unlabeled"] == []
    proc = _run(_cmd("run", ["train.json", tiny_json], *base, "--method", "mean_teacher", "--run_name", "mt"), False)
    assert "unlabeled_data_loader" in proc.stdout + proc.stderr
