"""The paper's metric convention (``metric_policy="paper"``/``"both"``) checked against medpy itself.

medpy (test-only dependency) is what the DyCON authors' evaluation code calls: ``dc``, ``jc``, ``hd95`` and ``asd``
with voxel spacing. Our implementation (``paper_case_metrics``) must agree with it to 1e-6 on random masks with
anisotropic spacing, and follow the authors' empty-mask handling (all four values 0 when a mask is empty).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from scipy import ndimage

from dycon_monai.evaluation import CASE_METRIC_KEYS, case_metrics
from dycon_monai.evaluation.compare import load_run
from dycon_monai.evaluation.metrics import directed_surface_distances, paper_case_metrics
from dycon_monai.evaluation.strata import (
    MONAI_ONLY_METRIC_KEYS,
    PAPER_METRIC_KEYS,
    case_metric_keys,
    describe,
    summarize_cases,
)
from dycon_monai.handlers.metrics_writer import METRICS_CSV_COLUMNS, CaseMetricsWriter, metrics_csv_columns

medpy_binary = pytest.importorskip("medpy.metric.binary")
_medpy_surface_distances = getattr(medpy_binary, "__surface_distances")


def _random_mask(rng, shape, density, grow):
    """Random blobs: sparse seeds dilated ``grow`` times (several components, some touching the array border)."""
    m = rng.random(shape) < density
    return ndimage.binary_dilation(m, iterations=grow) if grow else m


def _medpy_paper(pred, label, spacing):
    """The authors' per-case convention written with medpy (their loop: empty prediction or label -> zeros)."""
    if not pred.any() or not label.any():
        return {k: 0.0 for k in PAPER_METRIC_KEYS}
    out = {"paper_dice": medpy_binary.dc(pred, label), "paper_jaccard": medpy_binary.jc(pred, label)}
    for unit, vs in (("mm", spacing), ("vox", None)):
        out[f"paper_hd95_{unit}"] = medpy_binary.hd95(pred, label, voxelspacing=vs)
        out[f"paper_asd_{unit}"] = medpy_binary.asd(pred, label, voxelspacing=vs)
    return out


RANDOM_CASES = [
    (0, (24, 20, 12), (0.9, 1.3, 3.0), 0.004, 2),
    (1, (30, 18, 10), (0.7, 0.7, 5.0), 0.01, 1),
    (2, (16, 16, 16), (2.0, 1.0, 0.5), 0.05, 0),  # speckle: many one-voxel lesions
    (3, (20, 24, 8), (1.0, 1.0, 1.0), 0.003, 3),  # unit spacing: mm equals voxels
    (4, (12, 40, 9), (0.45, 1.7, 2.2), 0.008, 2),
]


@pytest.mark.parametrize("seed,shape,spacing,density,grow", RANDOM_CASES)
def test_paper_set_equals_medpy(seed, shape, spacing, density, grow):
    rng = np.random.default_rng(seed)
    pred = _random_mask(rng, shape, density, grow)
    label = _random_mask(rng, shape, density, grow)
    assert pred.any() and label.any() and not np.array_equal(pred, label)
    expected = _medpy_paper(pred, label, spacing)
    ours = paper_case_metrics(pred, label, spacing)
    assert list(ours) == list(PAPER_METRIC_KEYS)
    for k in PAPER_METRIC_KEYS:
        assert ours[k] == pytest.approx(expected[k], abs=1e-6), k
    # case_metrics carries the same values, under both policies that include them
    for policy in ("paper", "both"):
        m = case_metrics(pred, label, spacing, metric_policy=policy)
        for k in PAPER_METRIC_KEYS:
            assert m[k] == pytest.approx(expected[k], abs=1e-6), (policy, k)


@pytest.mark.parametrize("seed,shape,spacing,density,grow", RANDOM_CASES[:3])
def test_directed_surface_distances_equal_medpy_elementwise(seed, shape, spacing, density, grow):
    """Same surface voxels in the same order, same distances: the bounding-box crop changes nothing."""
    rng = np.random.default_rng(seed + 100)
    a, b = _random_mask(rng, shape, density, grow), _random_mask(rng, shape, density, grow)
    for vs in (spacing, None):
        ref = _medpy_surface_distances(a, b, vs, 1)
        got = directed_surface_distances(a, b, vs)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_paper_hd95_pools_both_directions_and_asd_is_directed():
    """A small prediction inside a big label: pooled percentile and directed mean differ from MONAI's set."""
    label = np.zeros((40, 40, 20), bool)
    label[8:32, 8:32, 4:16] = True
    pred = np.zeros_like(label)
    pred[18:22, 18:22, 9:11] = True
    sp = (1.0, 1.0, 2.0)
    m = case_metrics(pred, label, sp)
    d_pg = directed_surface_distances(pred, label, sp)
    d_gp = directed_surface_distances(label, pred, sp)
    assert m["paper_asd_mm"] == pytest.approx(d_pg.mean())
    assert m["paper_hd95_mm"] == pytest.approx(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    assert m["paper_asd_mm"] < m["asd_mm"]  # MONAI pools both directions; the far label surface dominates
    assert m["paper_hd95_mm"] <= m["hd95_mm"] + 1e-6  # MONAI takes the larger directed percentile


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_paper_empty_policy():
    shape, sp = (12, 10, 8), (1.0, 2.0, 3.0)
    empty, lesion = np.zeros(shape, bool), _box(shape, (2, 2, 2), (6, 5, 4))
    zeros = dict.fromkeys(PAPER_METRIC_KEYS, 0.0)
    # both empty: the authors' loop scores an empty prediction (0, 0, 0, 0). medpy.dc alone is not 0 there: NaN
    # with numpy integer counts (medpy 0.5.2), 1 through its ZeroDivisionError branch with Python integers
    both = case_metrics(empty, empty, sp)
    assert {k: both[k] for k in PAPER_METRIC_KEYS} == zeros
    with np.errstate(invalid="ignore"):
        medpy_both = medpy_binary.dc(empty, empty)
    assert math.isnan(medpy_both) or medpy_both == 1.0
    assert both["dice"] == 1.0  # the MONAI set keeps our policy
    # empty prediction, lesion in the label: all 0 (medpy's hd95 / asd would raise)
    missed = case_metrics(empty, lesion, sp)
    assert {k: missed[k] for k in PAPER_METRIC_KEYS} == zeros and math.isnan(missed["hd95_mm"])
    with pytest.raises(RuntimeError):
        medpy_binary.hd95(empty, lesion)
    # empty label, lesion predicted: Dice and Jaccard 0 as medpy gives, distances 0 as the authors set them
    false_alarm = case_metrics(lesion, empty, sp)
    assert false_alarm["paper_dice"] == medpy_binary.dc(lesion, empty) == 0.0
    assert false_alarm["paper_jaccard"] == medpy_binary.jc(lesion, empty) == 0.0
    assert false_alarm["paper_hd95_mm"] == false_alarm["paper_asd_vox"] == 0.0
    assert false_alarm["empty"] == "label"
    # identical masks: Dice 1, distances 0
    same = paper_case_metrics(lesion, lesion, sp)
    assert same["paper_dice"] == same["paper_jaccard"] == 1.0 and same["paper_hd95_mm"] == same["paper_asd_mm"] == 0.0


def test_metric_policy_selects_keys():
    label = _box((12, 10, 8), (2, 2, 2), (6, 5, 4))
    pred = _box((12, 10, 8), (3, 2, 2), (7, 6, 4))
    monai = case_metrics(pred, label, (1, 1, 2), metric_policy="monai")
    paper = case_metrics(pred, label, (1, 1, 2), metric_policy="paper")
    both = case_metrics(pred, label, (1, 1, 2))
    assert list(monai) == list(CASE_METRIC_KEYS) == list(case_metric_keys("monai"))
    assert list(both) == list(CASE_METRIC_KEYS + PAPER_METRIC_KEYS) == list(case_metric_keys("both"))
    assert list(paper) == list(case_metric_keys("paper"))
    assert not set(paper) & set(MONAI_ONLY_METRIC_KEYS) and set(PAPER_METRIC_KEYS) <= set(paper)
    for k in set(monai) - set(MONAI_ONLY_METRIC_KEYS):  # policy-free keys agree
        assert paper[k] == monai[k] == both[k]
    for k in monai:
        assert both[k] == monai[k]
    with pytest.raises(ValueError, match=r"metric_policy must be one of \['monai', 'paper', 'both'\], got 'medpy'"):
        case_metrics(pred, label, metric_policy="medpy")
    with pytest.raises(ValueError, match="metric_policy"):
        CaseMetricsWriter("unused", metric_policy="MONAI")


def test_describe_median_is_optional():
    plain = describe([1.0, 5.0, float("nan"), 2.0])
    assert list(plain) == ["mean", "std", "n", "n_undefined"] and plain["mean"] == pytest.approx(8 / 3)
    d = describe([1.0, 5.0, float("nan"), 2.0], median=True)
    assert list(d) == ["mean", "std", "median", "n", "n_undefined"] and d["median"] == 2.0 and d["n"] == 3
    assert describe([None], median=True) == {"mean": None, "std": None, "median": None, "n": 0, "n_undefined": 1}
    assert "median" not in describe([1.0])


# -- the writer ------------------------------------------------------------------------------------------------

SHAPE = (14, 12, 10)
SPACING = (1.5, 1.0, 2.5)


def _cases():
    """(case_id, pred, label): overlap, missed lesion (empty prediction), both empty, false alarm (empty label)."""
    return [
        (
            "sub-a",
            _box(SHAPE, (2, 2, 2), (7, 7, 5)) | _box(SHAPE, (10, 9, 7), (13, 11, 9)),
            _box(SHAPE, (3, 2, 2), (8, 8, 6)),
        ),
        ("sub-b", np.zeros(SHAPE, bool), _box(SHAPE, (5, 5, 5), (9, 9, 8))),
        ("sub-c", np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)),
        ("sub-d", _box(SHAPE, (1, 1, 1), (4, 4, 3)), np.zeros(SHAPE, bool)),
    ]


def _engine():
    affine = torch.as_tensor(np.diag([*SPACING, 1.0]))
    cases = _cases()

    def step(engine, i):
        cid, pred, label = cases[i]
        p = MetaTensor(torch.from_numpy(pred[None].astype(np.float32)), affine=affine)
        g = MetaTensor(torch.from_numpy(label[None].astype(np.float32)), affine=affine)
        engine.state.batch = [{"case_id": cid}]
        return [{"pred": p, "label": g}]

    return Engine(step), list(range(len(cases)))


def _run(tmp_path, policy):
    engine, data = _engine()
    kwargs = {} if policy is None else {"metric_policy": policy}
    writer = CaseMetricsWriter(tmp_path / str(policy), num_overlays=0, save_entropy_maps=False, **kwargs)
    writer.attach(engine)
    engine.run(data, max_epochs=1)
    with open(tmp_path / str(policy) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((tmp_path / str(policy) / "summary.json").read_text())


def test_writer_writes_both_sets_by_default(tmp_path):
    rows, summary = _run(tmp_path, None)
    assert list(rows[0]) == list(METRICS_CSV_COLUMNS) == list(metrics_csv_columns("both"))
    expected = [_medpy_paper(p, g, SPACING) for _, p, g in _cases()]
    for row, exp in zip(rows, expected):
        for k in PAPER_METRIC_KEYS:
            assert float(row[k]) == pytest.approx(exp[k], abs=1e-6), (row["case_id"], k)
    assert [r["hd95_mm"] == "" for r in rows] == [False, True, False, True]  # MONAI set: undefined -> empty cell
    assert summary["metric_policy"] == "both"
    pm = summary["paper_metrics"]
    assert list(pm) == list(PAPER_METRIC_KEYS)
    for k in PAPER_METRIC_KEYS:
        vals = [e[k] for e in expected]
        assert pm[k]["n"] == 4 and pm[k]["n_undefined"] == 0  # the paper's zeros are averaged in
        assert pm[k]["mean"] == pytest.approx(np.mean(vals)) and pm[k]["median"] == pytest.approx(np.median(vals))
        assert pm[k]["std"] == pytest.approx(np.std(vals))
    assert summary["paper_convention"]["empty"].startswith("prediction or label empty")
    assert summary["metrics"]["hd95_mm"]["n_undefined"] == 2 and summary["empty_policy"]["n_distance_undefined"] == 2
    assert "paper_dice" in summary["strata"]["size"]["small"]["metrics"]
    # a run read back from its metrics.csv alone gets the same paper summary
    (tmp_path / "None" / "summary.json").unlink()
    again = load_run(tmp_path / "None")["summary"]
    assert again["metric_policy"] == "both"
    assert again["paper_metrics"]["paper_hd95_vox"]["mean"] == pytest.approx(pm["paper_hd95_vox"]["mean"])


def test_writer_policies_monai_and_paper(tmp_path):
    rows, summary = _run(tmp_path, "monai")
    assert list(rows[0]) == list(metrics_csv_columns("monai")) and not any(k.startswith("paper_") for k in rows[0])
    assert summary["metric_policy"] == "monai" and "paper_metrics" not in summary

    rows, summary = _run(tmp_path, "paper")
    assert list(rows[0]) == list(metrics_csv_columns("paper"))
    assert not set(rows[0]) & set(MONAI_ONLY_METRIC_KEYS) and "lesion_f1" in rows[0]
    assert summary["metric_policy"] == "paper" and "dice" not in summary["metrics"]
    assert summary["metrics"]["lesion_f1"]["n"] == 4 and summary["empty_policy"]["n_distance_undefined"] == 0
    assert summary["paper_metrics"]["paper_dice"]["mean"] == pytest.approx(
        np.mean([_medpy_paper(p, g, SPACING)["paper_dice"] for _, p, g in _cases()])
    )
    assert summarize_cases([dict(r) for r in rows])["metric_policy"] == "paper"
