from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from dycon_monai.evaluation import CASE_METRIC_KEYS, case_metrics, lesion_detection_counts
from dycon_monai.evaluation.strata import PAPER_METRIC_KEYS


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


SHAPE = (24, 20, 12)


def test_overlap_and_volume_by_hand():
    label = _box(SHAPE, (2, 2, 2), (6, 6, 6))  # 64 voxels
    pred = _box(SHAPE, (4, 2, 2), (8, 6, 6))  # 64 voxels, 32 shared
    m = case_metrics(pred, label, spacing=(1.0, 2.0, 0.5))
    assert list(m) == list(CASE_METRIC_KEYS + PAPER_METRIC_KEYS)  # the default policy "both"
    assert m["dice"] == pytest.approx(2 * 32 / 128, abs=1e-7)
    assert m["iou"] == pytest.approx(32 / 96, abs=1e-7)
    assert m["label_volume_ml"] == pytest.approx(64 * 1.0 / 1000)
    assert m["abs_volume_diff_ml"] == 0.0
    assert m["empty"] == "none"
    # shifted by 2 voxels along an axis of spacing 1 mm: every distance is a multiple of 1 mm, at most 2
    assert 0 < m["hd95_mm"] <= 2.0 + 1e-6
    assert m["hd95_vox"] == pytest.approx(m["hd95_mm"])


def test_unit_spacing_gives_equal_mm_and_voxel_values():
    label = _box(SHAPE, (2, 2, 2), (9, 8, 6))
    pred = _box(SHAPE, (3, 1, 2), (9, 9, 8))
    m = case_metrics(pred, label, spacing=None)
    assert m["hd95_mm"] == m["hd95_vox"] and m["asd_mm"] == m["asd_vox"]
    m2 = case_metrics(pred, label, spacing=(2.0, 2.0, 2.0))
    assert m2["hd95_mm"] == pytest.approx(2 * m2["hd95_vox"], rel=1e-6)
    assert m2["asd_mm"] == pytest.approx(2 * m2["asd_vox"], rel=1e-6)


def test_lesion_wise_counts_and_f1():
    label = (
        _box(SHAPE, (1, 1, 1), (4, 4, 4)) | _box(SHAPE, (1, 8, 1), (4, 11, 4)) | _box(SHAPE, (15, 15, 6), (18, 18, 9))
    )
    # one predicted blob spanning the first two true lesions, nothing on the third, one stray blob
    pred = _box(SHAPE, (2, 2, 2), (3, 10, 3)) | _box(SHAPE, (10, 1, 9), (12, 3, 11))
    c = lesion_detection_counts(pred, label)
    assert c == {"tp": 2, "fp": 1, "fn": 1, "n_label": 3, "n_pred": 2}
    m = case_metrics(pred, label, (1, 1, 1))
    assert m["lesion_f1"] == pytest.approx(2 / (2 + (1 + 1) / 2))
    assert m["abs_lesion_count_diff"] == 1
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"]) == (2, 1, 1)


def test_fragments_on_one_lesion_are_one_tp_and_no_fp():
    label = _box(SHAPE, (2, 2, 2), (10, 10, 10))
    pred = _box(SHAPE, (2, 2, 2), (4, 4, 4)) | _box(SHAPE, (7, 7, 7), (9, 9, 9))
    assert lesion_detection_counts(pred, label) == {"tp": 1, "fp": 0, "fn": 0, "n_label": 1, "n_pred": 2}
    assert case_metrics(pred, label)["lesion_f1"] == 1.0


def test_components_are_26_connected():
    label = np.zeros(SHAPE, dtype=bool)
    label[2, 2, 2] = label[3, 3, 3] = True  # corner contact only
    m = case_metrics(label, label)
    assert m["label_lesions"] == 1


def test_empty_policy_both_empty():
    z = np.zeros(SHAPE, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = case_metrics(z, z, (1, 1, 1))
    assert (m["dice"], m["iou"], m["hd95_mm"], m["asd_mm"], m["hd95_vox"], m["asd_vox"]) == (1, 1, 0, 0, 0, 0)
    assert m["lesion_f1"] == 1.0 and m["abs_volume_diff_ml"] == 0 and m["abs_lesion_count_diff"] == 0
    assert m["empty"] == "both"


@pytest.mark.parametrize("which", ["pred", "label"])
def test_empty_policy_one_empty(which):
    z = np.zeros(SHAPE, dtype=bool)
    full = _box(SHAPE, (2, 2, 2), (6, 6, 6)) | _box(SHAPE, (10, 10, 6), (12, 12, 8))
    pred, label = (z, full) if which == "pred" else (full, z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = case_metrics(pred, label, (2.0, 2.0, 2.0))
    assert m["dice"] == 0 and m["iou"] == 0 and m["lesion_f1"] == 0
    assert all(math.isnan(m[k]) for k in ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"))
    assert m["empty"] == which
    assert m["abs_volume_diff_ml"] == pytest.approx(full.sum() * 8 / 1000)
    assert m["abs_lesion_count_diff"] == 2
    assert (m["lesion_fp"], m["lesion_fn"]) == ((2, 0) if which == "label" else (0, 2))


def test_monai_own_empty_behaviour_is_what_the_policy_replaces():
    """MONAI returns nan / inf with warnings on empty masks; case_metrics decides before calling it."""
    z = torch.zeros(1, 1, 8, 8, 8)
    o = z.clone()
    o[..., 2:5, 2:5, 2:5] = 1
    assert math.isnan(compute_dice(z, z, include_background=True).item())
    with pytest.warns(UserWarning):
        asd = compute_average_surface_distance(z, o, include_background=True, symmetric=True).item()
    assert not math.isfinite(asd)
    with pytest.warns(UserWarning):
        assert not math.isfinite(compute_hausdorff_distance(o, z, include_background=True, percentile=95).item())


def test_input_layouts_are_equivalent():
    label = _box(SHAPE, (2, 2, 2), (9, 8, 6))
    pred = _box(SHAPE, (3, 1, 2), (9, 9, 8))
    ref = case_metrics(pred, label, (1, 1, 2))
    chan = case_metrics(torch.from_numpy(pred[None]).float(), torch.from_numpy(label[None]).float(), (1, 1, 2))
    onehot = case_metrics(np.stack([~pred, pred]).astype(np.float32), label[None].astype(np.uint8), (1, 1, 2))
    for other in (chan, onehot):
        for k in CASE_METRIC_KEYS:
            assert other[k] == pytest.approx(ref[k]) if isinstance(ref[k], float) else other[k] == ref[k]


def test_bad_inputs_have_clear_errors():
    label = _box(SHAPE, (2, 2, 2), (9, 8, 6))
    with pytest.raises(ValueError, match="pred: expected a discrete mask"):
        case_metrics(np.full(SHAPE, 0.3, dtype=np.float32), label)
    with pytest.raises(ValueError, match=r"same spatial shape.*\(24, 20, 12\)"):
        case_metrics(label[:-1], label)
    with pytest.raises(ValueError, match="spacing: expected one value per spatial axis"):
        case_metrics(label, label, spacing=(1.0, 1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        case_metrics(label, label, spacing=(1.0, 0.0, 1.0))
