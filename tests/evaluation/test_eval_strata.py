from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import dycon_monai
from dycon_monai.evaluation import (
    SIZE_THRESHOLDS_ML,
    SIZE_THRESHOLDS_VOXELS,
    describe,
    distribution_stratum,
    size_stratum,
    strata_tables,
    summarize_cases,
)


def test_size_stratum_boundaries():
    lo, hi = SIZE_THRESHOLDS_ML
    assert size_stratum(volume_ml=0.0) == "lesion_free"
    assert size_stratum(volume_ml=0.01) == "small"
    assert size_stratum(volume_ml=lo - 1e-9) == "small"
    assert size_stratum(volume_ml=lo) == "medium"
    assert size_stratum(volume_ml=hi - 1e-9) == "medium"
    assert size_stratum(volume_ml=hi) == "large"
    assert size_stratum(voxels=SIZE_THRESHOLDS_VOXELS[0] - 1) == "small"
    assert size_stratum(voxels=SIZE_THRESHOLDS_VOXELS[1]) == "large"
    # the voxel thresholds are the ml thresholds at 2 mm isotropic (0.008 ml per voxel)
    assert [v * 0.008 for v in SIZE_THRESHOLDS_VOXELS] == pytest.approx(list(SIZE_THRESHOLDS_ML))
    with pytest.raises(ValueError, match="exactly one"):
        size_stratum()
    with pytest.raises(ValueError, match="increasing"):
        size_stratum(volume_ml=1.0, thresholds_ml=(5.0, 2.0))


def test_distribution_stratum():
    assert [distribution_stratum(n) for n in (0, 1, 2, 37)] == ["lesion_free", "single", "scattered", "scattered"]
    with pytest.raises(ValueError):
        distribution_stratum(-1)


def test_thresholds_reproduce_the_paper_proportions_on_the_reference_splits():
    """Paper Fig. 7: small 12, medium 3, large 7 of 22 scans; our thresholds on all ISLES'22 lesion cases."""
    path = Path(dycon_monai.__file__).parent / "data" / "splits" / "isles22_fold0.json"
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    facts = json.loads(path.read_text()).get("metrics")
    if not facts:
        pytest.skip(f"{path} has no per-case 'metrics' (lesion facts)")
    strata = [size_stratum(voxels=int(c["volume"])) for c in facts if int(c["volume"]) > 0]
    share = {s: strata.count(s) / len(strata) for s in ("small", "medium", "large")}
    for s, paper in (("small", 12 / 22), ("medium", 3 / 22), ("large", 7 / 22)):
        assert share[s] == pytest.approx(paper, abs=0.03), (s, share)


def test_describe_leaves_out_undefined_values():
    d = describe([1.0, float("nan"), 3.0, None, ""])
    assert d == {"mean": 2.0, "std": 1.0, "n": 2, "n_undefined": 3}
    assert describe([float("nan")]) == {"mean": None, "std": None, "n": 0, "n_undefined": 1}


def _row(cid, dice, vol_ml, lesions, hd=1.0, empty="none"):
    return {
        "case_id": cid,
        "dice": dice,
        "hd95_mm": hd,
        "asd_mm": hd,
        "label_volume_ml": vol_ml,
        "label_lesions": lesions,
        "empty": empty,
    }


def test_strata_tables_and_summary():
    rows = [
        _row("a", 0.5, 1.0, 1),
        _row("b", 0.7, 5.0, 4),
        _row("c", 0.9, 15.0, 2),
        _row("d", 0.8, 40.0, 1),
        _row("e", 1.0, 0.0, 0, hd=0.0, empty="both"),
        _row("f", 0.0, 3.0, 3, hd=float("nan"), empty="pred"),
    ]
    t = strata_tables(rows, metrics=("dice", "hd95_mm"))
    assert {k: v["n"] for k, v in t["size"].items()} == {"small": 3, "medium": 1, "large": 1, "lesion_free": 1}
    assert t["size"]["small"]["case_ids"] == ["a", "b", "f"]
    assert t["size"]["small"]["metrics"]["dice"]["mean"] == pytest.approx(0.4)
    assert t["size"]["small"]["metrics"]["hd95_mm"]["n_undefined"] == 1
    assert {k: v["n"] for k, v in t["distribution"].items()} == {"single": 2, "scattered": 3, "lesion_free": 1}

    s = summarize_cases(rows, metrics=("dice", "hd95_mm"), run_info={"method": "dycon"})
    assert s["run"] == {"method": "dycon"} and s["n_cases"] == 6
    assert s["metrics"]["dice"]["mean"] == pytest.approx(3.9 / 6)
    assert s["metrics"]["hd95_mm"]["n"] == 5 and s["metrics"]["hd95_mm"]["n_undefined"] == 1
    e = s["empty_policy"]
    assert (e["n_both_empty"], e["n_empty_label_only"], e["n_empty_pred_only"], e["n_distance_undefined"]) == (
        1,
        0,
        1,
        1,
    )
    assert "one_empty" in e and s["strata"]["definitions"]["size_thresholds_ml"] == list(SIZE_THRESHOLDS_ML)
    assert not math.isnan(s["strata"]["size"]["large"]["metrics"]["dice"]["mean"])
