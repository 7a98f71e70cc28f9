"""Every bundle of the repository loads into MONAI Label: its ``BundleInferTask`` and ``BundleTrainTask`` build in the
MONAI Label venv (0.8.5) from an app prepared with ``prepare_app``, with the labels of the bundle's metadata; a bundle
whose inference reads NIfTI also segments a study through MONAI Label's infer task. The full server round trip (HTTP,
scoring, training) is ``test_server.py``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
PROBES = Path(__file__).resolve().parent / "probes"
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())

pytestmark = pytest.mark.slow


def _python() -> Path:
    python = VENV / "bin" / "python"
    if python.is_file():
        return python
    msg = f"no MONAI Label environment at {VENV}; create it with `make monailabel-env` or point MONAILABEL_VENV at one"
    if os.environ.get("DYCON_REQUIRE_MONAILABEL", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"DYCON_REQUIRE_MONAILABEL is set but {msg}")
    pytest.skip(msg)


def _app(bundle: str, tmp_path: Path) -> Path:
    from dycon_monai.monailabel import prepare_app

    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return prepare_app(tmp_path / "app", root, model_name=bundle, weights=weights) / "model" / bundle


def _probe(python: Path, script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [str(python), str(PROBES / script), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(("PROBE ", "INFER ")))
    return json.loads(line.split(" ", 1)[1])


def test_every_bundle_is_listed():
    assert {"dycon_isles", "dycon_la", "dycon_brats19", "dycon_pancreas"} <= set(BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_builds_monailabel_infer_and_train_tasks(bundle, tmp_path):
    python = _python()
    seen = _probe(python, "load_bundle.py", str(_app(bundle, tmp_path)))
    metadata = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    channel_def = next(iter(metadata["network_data_format"]["outputs"].values()))["channel_def"]
    expected = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    assert {k.lower(): v for k, v in seen["labels"].items()} == expected
    assert seen["dimension"] == 3 and seen["valid"] and seen["train_valid"]
    assert seen["inferer"] == "SlidingWindowInferer"


def test_brats_bundle_segments_a_flair_study_through_monailabel(tmp_path):
    python = _python()
    from dycon_monai.data import make_synthetic_brats

    make_synthetic_brats(tmp_path / "data", n_train=1, n_val=0, n_test=0)
    flair = next((tmp_path / "data").rglob("*_flair.nii.gz"))
    out = _probe(python, "infer_study.py", str(_app("dycon_brats19", tmp_path)), str(flair))
    import nibabel as nib

    assert out["shape"] == list(nib.load(str(flair)).shape) and set(out["values"]) <= {0.0, 1.0}


def test_pancreas_bundle_segments_a_dicom_series_through_monailabel(tmp_path):
    """MONAI Label's infer task takes the series folder; the bundle's chain checks and reads it with ITK."""
    python = _python()
    from dycon_monai.data.dicom import dicom_files
    from dycon_monai.data.synthetic_pancreas import make_synthetic_pancreas

    make_synthetic_pancreas(tmp_path / "data", n_train=1, n_test=1, shape=(32, 32, 16))
    series = next(p for p in sorted((tmp_path / "data").rglob("*")) if p.is_dir() and dicom_files(p))
    out = _probe(python, "infer_study.py", str(_app("dycon_pancreas", tmp_path)), str(series))
    assert out["shape"] == [32, 32, 16] and set(out["values"]) <= {0.0, 1.0}
