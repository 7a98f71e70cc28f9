"""The dycon_brats19 bundle through ``python -m monai.bundle`` on the synthetic stand-in: train, evaluate, infer, export."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_cli import (
    bundle_cmd,
    export_and_run_torchscript,
    run_cmd,
    split_args,
    split_error_messages,
    verify_bundle_net,
)
from bundle_overrides import BRATS_TINY
from monai.bundle import ConfigParser

from dycon_monai.bundle import DyconWorkflow
from dycon_monai.data.brats19 import BRATS_RELEASE_FOLDER
from dycon_monai.data.synthetic_brats import make_synthetic_brats

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_brats19"
CONFIGS = BUNDLE / "configs"


def _cmd(command: str, configs: list, *args: str) -> list[str]:
    return bundle_cmd(CONFIGS, command, configs, *args)


def _run(cmd: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect_ok, timeout=600)


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    """5 training, 1 validation and 2 test cases of the published split (``split.json`` lists them)."""
    return make_synthetic_brats(tmp_path_factory.mktemp("brats_bundle"), n_train=5, n_val=1, n_test=2, seed=0)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("brats_tiny") / "tiny.json"
    path.write_text(json.dumps(BRATS_TINY))
    return path


@pytest.fixture(scope="module")
def brats_run(brats, tiny_json, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats_runs")
    _run(_cmd("run", ["train.json", tiny_json], *split_args(brats), "--output_dir", str(out), "--run_name", "t"))
    return out / "t"


@pytest.mark.parametrize(
    "names",
    [
        ("train.json",),
        ("train.json", "cpu_quick.json", "evaluate.json"),
        ("train.json", "demo.json", "evaluate.json"),
        ("inference.json", "cpu_quick.json"),
    ],
)
def test_brats_configs_parse(names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bundle_root "." is the bundle folder, whatever the working directory
    parser = DyconWorkflow(config_file=[str(CONFIGS / n) for n in names], logging_file=False).parser
    parser.parse()
    assert Path(parser.get_parsed_content("bundle_root")) == BUNDLE
    for key in ("device", "network_def", "initialize", "run"):
        assert key in parser


def test_brats_bundle_files_follow_model_zoo_layout_and_paper_protocol():
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "cpu_quick.json", "demo.json"):
        json.loads((CONFIGS / name).read_text())
    assert (CONFIGS / "logging.conf").is_file() and (BUNDLE / "models" / "README.md").is_file()
    assert "BraTS" in (BUNDLE / "docs" / "data_license.txt").read_text()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for heading in ("## Data", "## Performance", "## MONAI Bundle Commands", "# Bad inputs", "# License"):
        assert f"\n{heading}\n" in readme, heading
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["patch_size"] == [96, 96, 96] and train["batch_size"] == 8 and train["max_iterations"] == 6000
    assert train["modalities"] == ["flair"] and train["target"] == "whole_tumor" and train["labeled_count"] == 25
    assert json.loads((CONFIGS / "evaluate.json").read_text())["sw_stride"] == [64, 64, 64]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    for name in ("demo.json", "cpu_quick.json"):  # they only override keys train / evaluate define
        assert [k for k in json.loads((CONFIGS / name).read_text()) if k not in parser] == [], name


@pytest.mark.parametrize("modalities, target, io", [(["flair"], "whole_tumor", (1, 2)), (None, "subregions", (4, 4))])
def test_network_channels_follow_modalities_and_target(modalities, target, io):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"modalities": modalities or ["flair", "t1", "t1ce", "t2"], "target": target})
    net = parser.get_parsed_content("network_def")
    assert (net.in_channels, net.out_channels) == io
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    if modalities:
        assert meta["inputs"]["image"]["num_channels"] == len(modalities)
        assert meta["outputs"]["pred"]["num_channels"] == io[1]


def test_brats_train_writes_model_and_labeled_subset(brats_run):
    assert (brats_run / "models" / "model.pt").is_file()
    datalist = json.loads((brats_run / "datalist.json").read_text())
    assert len(datalist["training_labeled"]) == 2 and len(datalist["training_unlabeled"]) == 3
    assert all("label" not in d for d in datalist["training_unlabeled"])
    assert len(datalist["validation"]) == 1 and len(datalist["test"]) == 2
    summary = json.loads((brats_run / "run_info.json").read_text())
    assert "flair" in json.dumps(summary) and "whole_tumor" in json.dumps(summary)


def test_brats_evaluate_scores_test_cases_on_their_grid(brats_run, brats, tiny_json):
    _run(
        _cmd(
            "run",
            ["train.json", tiny_json, "evaluate.json"],
            *split_args(brats),
            "--output_dir",
            str(brats_run),
            "--run_name",
            "eval",
            "--model_path",
            str(brats_run / "models" / "model.pt"),
        )
    )
    with open(brats_run / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == json.loads((brats / "split.json").read_text())["test"]
    assert {"dice", "hd95_mm", "paper_dice", "paper_hd95_mm"} <= set(rows[0])
    assert all(r["spacing_mm"] == "1x1x1" for r in rows)


def test_brats_inference_and_ckpt_export(brats_run, brats, tiny_json, tmp_path):
    hgg = brats / BRATS_RELEASE_FOLDER / "HGG"
    workflow = DyconWorkflow(  # in-process, the workflow `monai.bundle run --workflow_name` builds (saves a start-up)
        config_file=[str(CONFIGS / "inference.json"), str(tiny_json)],
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(hgg),
        output_dir=str(tmp_path / "out"),
        run_name="infer",
        model_path=str(brats_run / "models" / "model.pt"),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    segs = sorted((tmp_path / "out" / "infer").rglob("*_flair_seg.nii.gz"))
    assert len(segs) == len([p for p in hgg.iterdir() if p.is_dir()])
    seg = nib.load(str(segs[0]))
    src = nib.load(str(hgg / segs[0].parent.name / f"{segs[0].parent.name}_flair.nii.gz"))
    assert seg.shape == src.shape == (32, 32, 24)
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)  # back on the file's grid and orientation
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    ckpt = brats_run / "models" / "model.pt"
    shape = export_and_run_torchscript(
        BUNDLE, ["inference.json", tiny_json], ckpt, tmp_path / "m.ts", (1, 1, 16, 16, 16)
    )
    assert shape == (1, 2, 16, 16, 16)


def test_brats_verify_net_in_out():
    verify_bundle_net(BUNDLE)


def test_brats_missing_case_of_split_stops_before_training(brats, tiny_json, tmp_path):
    chain = split_error_messages(BUNDLE, ["train.json", tiny_json], brats, "BraTS19_NO_SUCH_1", tmp_path)
    assert any("BraTS19_NO_SUCH_1" in m and "split file" in m for m in chain), chain


@pytest.mark.slow
def test_brats_demo_trains_and_segments_the_stand_in(tmp_path):
    """demo.json end to end (60 iterations, 32 x 32 x 24): well above chance on the synthetic tumours."""
    data = make_synthetic_brats(tmp_path / "data", n_train=10, n_val=2, n_test=3, seed=0)
    base = ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "runs")]
    _run(_cmd("run", ["train.json", "demo.json"], *base, "--run_name", "demo"))
    model = tmp_path / "runs" / "demo" / "models" / "model.pt"
    _run(
        _cmd(
            "run", ["train.json", "demo.json", "evaluate.json"], *base, "--run_name", "eval", "--model_path", str(model)
        )
    )
    with open(tmp_path / "runs" / "eval" / "metrics.csv") as f:
        dice = [float(r["dice"]) for r in csv.DictReader(f)]
    assert len(dice) == 3 and float(np.mean(dice)) > 0.5
