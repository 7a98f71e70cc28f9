"""The dycon_pancreas bundle through ``python -m monai.bundle`` on the synthetic stand-in (DICOM series): train, evaluate, infer, export."""

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
from bundle_overrides import PANCREAS_TINY
from monai.bundle import ConfigParser

from dycon_monai.bundle import DyconWorkflow
from dycon_monai.data.pancreas import PANCREAS_RELEASE_FOLDER
from dycon_monai.data.synthetic_pancreas import make_synthetic_pancreas

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_pancreas"
CONFIGS = BUNDLE / "configs"


def _cmd(command: str, configs: list, *args: str) -> list[str]:
    return bundle_cmd(CONFIGS, command, configs, *args)


def _run(cmd: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect_ok, timeout=600)


@pytest.fixture(scope="module")
def pancreas(tmp_path_factory) -> Path:
    """4 training and 2 test cases of the published split (``split.json`` lists them), DICOM series."""
    return make_synthetic_pancreas(tmp_path_factory.mktemp("pancreas_bundle"), n_train=4, n_test=2, shape=(32, 32, 16))


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pancreas_tiny") / "tiny.json"
    path.write_text(json.dumps(PANCREAS_TINY))
    return path


@pytest.fixture(scope="module")
def pancreas_run(pancreas, tiny_json, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pancreas_runs")
    _run(_cmd("run", ["train.json", tiny_json], *split_args(pancreas), "--output_dir", str(out), "--run_name", "t"))
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
def test_pancreas_configs_parse(names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bundle_root "." is the bundle folder, whatever the working directory
    parser = DyconWorkflow(config_file=[str(CONFIGS / n) for n in names], logging_file=False).parser
    parser.parse()
    assert Path(parser.get_parsed_content("bundle_root")) == BUNDLE
    for key in ("device", "network_def", "initialize", "run"):
        assert key in parser


def test_pancreas_bundle_files_follow_model_zoo_layout_and_paper_protocol():
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "cpu_quick.json", "demo.json"):
        json.loads((CONFIGS / name).read_text())
    assert (CONFIGS / "logging.conf").is_file() and (BUNDLE / "models" / "README.md").is_file()
    assert "Pancreas-CT" in (BUNDLE / "docs" / "data_license.txt").read_text()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for heading in ("## Data", "## Performance", "## MONAI Bundle Commands", "# Bad inputs", "# License"):
        assert f"\n{heading}\n" in readme, heading
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["patch_size"] == [96, 96, 96] and train["batch_size"] == 8 and train["max_iterations"] == 6000
    assert train["hu_window"] == [-120.0, 240.0] and train["labeled_count"] == 12
    assert train["labeled_crop"] == "pos_neg"  # never the ground-truth crop by default
    assert json.loads((CONFIGS / "evaluate.json").read_text())["sw_stride"] == [16, 16, 16]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    for name in ("demo.json", "cpu_quick.json"):  # they only override keys train / evaluate define
        assert [k for k in json.loads((CONFIGS / name).read_text()) if k not in parser] == [], name
    parser.parse()
    assert parser.get_parsed_content("drop_cases") == ["PANCREAS_0025", "PANCREAS_0070"]
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    net = parser.get_parsed_content("network_def")
    assert (net.in_channels, net.out_channels) == (meta["inputs"]["image"]["num_channels"], 2)


def test_pancreas_train_writes_model_and_labeled_subset(pancreas_run):
    assert (pancreas_run / "models" / "model.pt").is_file()
    datalist = json.loads((pancreas_run / "datalist.json").read_text())
    assert len(datalist["training_labeled"]) == 2 and len(datalist["training_unlabeled"]) == 2
    assert all("label" not in d for d in datalist["training_unlabeled"])
    assert datalist["validation"] == [] and len(datalist["test"]) == 2
    summary = json.dumps(json.loads((pancreas_run / "run_info.json").read_text()))
    assert "hu_window" in summary and "dropped_cases" in summary


def test_pancreas_evaluate_scores_whole_test_volumes_on_their_grid(pancreas_run, pancreas, tiny_json):
    _run(
        _cmd(
            "run",
            ["train.json", tiny_json, "evaluate.json"],
            *split_args(pancreas),
            "--output_dir",
            str(pancreas_run),
            "--run_name",
            "eval",
            "--model_path",
            str(pancreas_run / "models" / "model.pt"),
        )
    )
    with open(pancreas_run / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == json.loads((pancreas / "split.json").read_text())["test"]
    assert {"dice", "hd95_mm", "paper_dice", "paper_hd95_mm"} <= set(rows[0])
    assert all(r["spacing_mm"] == "1x1x2" for r in rows)  # the series' own grid, not the 1 mm training grid
    info = json.loads((pancreas_run / "eval" / "run_info.json").read_text())
    assert "never cropped to the ground truth" in json.dumps(info)  # the metrics say which region was segmented


def test_pancreas_inference_and_ckpt_export(pancreas_run, pancreas, tiny_json, tmp_path):
    cases = pancreas / PANCREAS_RELEASE_FOLDER
    workflow = DyconWorkflow(  # in-process, the workflow `monai.bundle run --workflow_name` builds (saves a start-up)
        config_file=[str(CONFIGS / "inference.json"), str(tiny_json)],
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(cases),
        output_dir=str(tmp_path / "out"),
        run_name="infer",
        model_path=str(pancreas_run / "models" / "model.pt"),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    segs = sorted((tmp_path / "out" / "infer").rglob("*_seg.nii.gz"))
    assert len(segs) == len([p for p in cases.iterdir() if p.is_dir()])
    seg = nib.load(str(segs[0]))
    assert seg.shape == (32, 32, 16)  # the series' own grid
    assert np.allclose(np.abs(np.diag(seg.affine))[:3], [1.0, 1.0, 2.0])
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    ckpt = pancreas_run / "models" / "model.pt"
    shape = export_and_run_torchscript(
        BUNDLE, ["inference.json", tiny_json], ckpt, tmp_path / "m.ts", (1, 1, 16, 16, 16)
    )
    assert shape == (1, 2, 16, 16, 16)


def test_pancreas_verify_net_in_out():
    verify_bundle_net(BUNDLE)


def test_pancreas_missing_case_of_split_stops_before_training(pancreas, tiny_json, tmp_path):
    chain = split_error_messages(BUNDLE, ["train.json", tiny_json], pancreas, "PANCREAS_0099", tmp_path)
    assert any("PANCREAS_0099" in m and "split file" in m for m in chain), chain


@pytest.mark.slow
def test_pancreas_demo_trains_and_segments_the_stand_in(tmp_path):
    """demo.json end to end (60 iterations, 32^3 patches): above chance on the synthetic pancreas."""
    data = make_synthetic_pancreas(tmp_path / "data", n_train=10, n_test=3, seed=0)
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
    assert len(dice) == 3 and float(np.mean(dice)) > 0.3
