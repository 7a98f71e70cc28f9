"""Co-training through the bundles: ``co_training.json`` (one more config file) picks the dual-network trainer;
``dual_cce.json`` the heterogeneous pair of seed 003; ``serve_average.json`` serves the average of both networks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_overrides import LA_TINY, TINY

from dycon_monai.bundle import WORKFLOW_NAME, DyconWorkflow

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {"la": REPO / "bundles" / "dycon_la", "isles": REPO / "bundles" / "dycon_isles"}


def _cmd(bundle: str, configs: list, *args: str) -> list[str]:
    files = [str(c if Path(c).is_absolute() else BUNDLES[bundle] / "configs" / c) for c in configs]
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        repr(files),
        "--workflow_name",
        WORKFLOW_NAME,
        *args,
    ]


def _run(cmd: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=400, env=env
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    if not expect_ok:
        assert proc.returncode != 0, proc.stdout[-2000:]
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("co_tiny")
    (root / "la.json").write_text(json.dumps(LA_TINY))
    (root / "isles.json").write_text(json.dumps(TINY))
    return {"la": root / "la.json", "isles": root / "isles.json"}


def _la_data(root: Path) -> list[str]:
    return ["--dataset_dir", str(root), "--split_file", str(root / "split.json")]


@pytest.fixture(scope="module")
def la_co_run(synthetic_la, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("la_co")
    proc = _run(
        _cmd("la", ["train.json", tiny["la"], "co_training.json"], *_la_data(synthetic_la))
        + ["--output_dir", str(out), "--run_name", "co", "--ablation#pgl", "true"]
    )
    (out / "co_output.txt").write_text(proc.stdout + proc.stderr)
    return out / "co"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
@pytest.mark.parametrize(
    "names",
    [
        ("train.json", "co_training.json"),
        ("train.json", "co_training.json", "dual_cce.json"),
        ("train.json", "co_training.json", "evaluate.json", "serve_average.json"),
        ("train.json", "co_training.json", "dual_cce.json", "evaluate.json", "serve_average.json"),
        ("inference.json", "serve_average.json"),
        ("inference.json", "dual_cce.json"),
        ("inference.json", "dual_cce.json", "serve_average.json"),
    ],
)
def test_co_training_configs_parse(bundle, names):
    parser = DyconWorkflow(config_file=[str(BUNDLES[bundle] / "configs" / n) for n in names], logging_file=False).parser
    parser.parse()
    if "inference.json" not in names:
        assert parser["train"]["trainer"]["_target_"] == "dycon_monai.engines.CoTrainingTrainer"


def test_la_cps_dycon_trains_both_networks_and_writes_three_models(la_co_run):
    models = la_co_run / "models"
    a = torch.load(models / "model.pt", weights_only=True)
    b = torch.load(models / "model_b.pt", weights_only=True)
    average = torch.load(models / "model_average.pt", weights_only=True)
    assert set(average) == {f"networks.0.{k}" for k in a} | {f"networks.1.{k}" for k in b}
    for k in a:
        assert torch.equal(average[f"networks.0.{k}"], a[k]) and torch.equal(average[f"networks.1.{k}"], b[k])
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # two different networks
    info = json.loads((la_co_run / "run_info.json").read_text())
    weights = info["summary"]["loss_weights"] if "summary" in info else info["loss_weights"]
    assert weights["cps_weight"] == 1.0 and weights["fecl_weight"] == 1.0 and weights["pgl_weight"] == 1.0
    log = (la_co_run.parent / "co_output.txt").read_text()  # the StatsHandler lines
    assert "loss_cps:" in log and "loss_pgl:" in log


@pytest.mark.parametrize("serve", ["a", "average"])
def test_la_evaluate_serves_network_a_or_the_average(la_co_run, synthetic_la, tiny, serve):
    configs = ["train.json", tiny["la"], "co_training.json", "evaluate.json"]
    model = "model.pt"
    if serve == "average":
        configs.append("serve_average.json")
        model = "model_average.pt"
    _run(
        _cmd("la", configs, *_la_data(synthetic_la))
        + [
            "--output_dir",
            str(la_co_run),
            "--run_name",
            f"eval_{serve}",
            "--model_path",
            str(la_co_run / "models" / model),
        ]
    )
    with open(la_co_run / f"eval_{serve}" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)


@pytest.mark.slow  # ResNet34 + VNet pair: about 40 s on 2 cores
def test_la_dual_cce_trains_the_heterogeneous_pair_and_refuses_a_patch_it_cannot_take(synthetic_la, tiny, tmp_path):
    configs = ["train.json", tiny["la"], "co_training.json", "dual_cce.json"]
    proc = _run(
        _cmd("la", configs, *_la_data(synthetic_la))
        + ["--output_dir", str(tmp_path), "--run_name", "bad", "--patch_size", "[32, 32, 16]"],
        expect_ok=False,
    )
    assert "patch_size [32, 32, 16] does not suit dual_cce subnet A" in proc.stdout + proc.stderr
    proc = _run(
        _cmd("la", configs, *_la_data(synthetic_la))
        + ["--output_dir", str(tmp_path), "--run_name", "dual", "--patch_size", "[32, 32, 32]"]
        + ["--ablation#ue", "false", "--sw_stride", "[16, 16, 16]"]
    )
    a = torch.load(tmp_path / "dual" / "models" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "dual" / "models" / "model_b.pt", weights_only=True)
    assert any(k.startswith("encoder.layer4") for k in a)  # FlexibleUNet with its ResNet34 encoder
    assert any(k.startswith("down_tr") for k in b)  # MONAI VNet
    log = proc.stdout + proc.stderr
    assert "loss_efs:" in log and "loss_une: 0.0000" in log


def test_isles_co_training_saves_all_three_models_at_the_best_validation(synthetic_cohort, tiny, tmp_path):
    _run(
        _cmd("isles", ["train.json", tiny["isles"], "co_training.json"], "--dataset_dir", str(synthetic_cohort))
        + ["--output_dir", str(tmp_path), "--run_name", "co", "--method", "cps"]
    )
    models = tmp_path / "co" / "models"
    a = torch.load(models / "model.pt", weights_only=True)
    average = torch.load(models / "model_average.pt", weights_only=True)
    assert (models / "model_b.pt").is_file()
    for k in a:
        assert torch.equal(average[f"networks.0.{k}"], a[k])  # the same validation snapshot


def test_la_ckpt_export_of_the_average_matches_eager(la_co_run, tiny, tmp_path):
    configs = BUNDLES["la"] / "configs"
    ts = tmp_path / "average.ts"
    files = [str(configs / "inference.json"), str(tiny["la"]), str(configs / "serve_average.json")]
    _run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network", "--config_file", repr(files)]
        + ["--filepath", str(ts), "--ckpt_file", str(la_co_run / "models" / "model_average.pt")]
        + ["--meta_file", str(configs / "metadata.json"), "--bundle_root", str(BUNDLES["la"])]
    )
    scripted = torch.jit.load(str(ts), map_location="cpu").eval()
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    parser["device"] = "cpu"
    eager = parser.get_parsed_content("network").eval()
    eager.load_state_dict(torch.load(la_co_run / "models" / "model_average.pt", weights_only=True))
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x))
        probs = torch.softmax(scripted(x), 1)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 32, 16))
