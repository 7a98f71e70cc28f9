"""The demo driver (``python -m dycon_monai.demo``): cohort reuse and the metrics table; ``make demo`` runs it."""

from __future__ import annotations

import json
import math

import pytest

from dycon_monai import demo


def test_bundle_dir_is_the_checkout_bundle():
    assert (demo.BUNDLE_DIR / "configs" / "demo.json").is_file()


def test_metrics_table_shows_mm_and_voxels():
    summary = {
        "metrics": {
            "dice": {"mean": 0.93, "std": 0.045, "n": 4, "n_undefined": 0},
            "iou": {"mean": 0.87, "std": 0.07, "n": 4, "n_undefined": 0},
            "hd95_mm": {"mean": 3.0, "std": 0.0, "n": 3, "n_undefined": 1},
            "hd95_vox": {"mean": 1.0, "std": 0.0, "n": 3, "n_undefined": 1},
            "asd_mm": {"mean": math.nan, "std": math.nan, "n": 0, "n_undefined": 4},
            "asd_vox": {"mean": math.nan, "std": math.nan, "n": 0, "n_undefined": 4},
        }
    }
    lines = demo.format_metrics_table(summary).splitlines()
    assert [line.split()[0] for line in lines] == ["metric", "Dice", "IoU", "HD95", "ASD"]
    assert "0.930" in lines[1] and "0.045" in lines[1]
    assert "1.000 +- 0.000" in lines[3] and "(1 undefined: empty mask)" in lines[3]
    assert "n/a" in lines[4]


def test_prepare_cohort_reuses_the_same_cohort_and_refuses_another(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "synthetic_cohort.json").write_text(json.dumps({"cases": 12, "seed": 0, "spacing": [6.0, 6.0, 6.0]}))
    assert demo.prepare_cohort(data, cases=12, seed=0, spacing=6.0) == data
    with pytest.raises(FileExistsError, match="different synthetic cohort"):
        demo.prepare_cohort(data, cases=40, seed=0, spacing=3.0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        demo.prepare_cohort(other, cases=12, seed=0, spacing=6.0)
