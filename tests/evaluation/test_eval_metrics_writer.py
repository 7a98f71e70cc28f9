"""CaseMetricsWriter on a real MONAI SupervisedEvaluator with a network whose output is known."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, AsDiscreted, Compose

from dycon_monai.evaluation import PredictionEntropyd, case_metrics
from dycon_monai.handlers.metrics_writer import METRICS_CSV_COLUMNS, CaseMetricsWriter

SHAPE = (20, 16, 12)
SPACING = (2.0, 2.0, 3.0)


class MaskToLogits(torch.nn.Module):
    """'Network' that predicts the foreground encoded in the image (> 0.5) with confident two-class logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x[:, :1] > 0.5).float()
        return torch.cat([1 - fg, fg], dim=1) * 8.0 - 4.0


def _box(lo, hi):
    m = np.zeros(SHAPE, dtype=np.float32)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


def _cases():
    """(case_id, pred mask, label mask): overlap, missed lesion + empty prediction, both empty."""
    return [
        ("sub-a", _box((2, 2, 2), (8, 8, 6)) + _box((12, 10, 7), (15, 13, 10)), _box((3, 2, 2), (8, 9, 6))),
        ("sub-b", np.zeros(SHAPE, np.float32), _box((5, 5, 5), (9, 9, 8))),
        ("sub-c", np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)),
    ]


def _loader(batch_size=2):
    affine = np.diag(list(SPACING) + [1.0])
    data = []
    for cid, pred, label in _cases():
        meta = {"filename_or_obj": f"/data/{cid}_dwi.nii.gz"}
        image = MetaTensor(torch.from_numpy(pred)[None], affine=torch.as_tensor(affine), meta=dict(meta))
        lab = MetaTensor(torch.from_numpy(label)[None], affine=torch.as_tensor(affine), meta=dict(meta))
        data.append({"image": image, "label": lab, "case_id": cid})
    return DataLoader(Dataset(data), batch_size=batch_size, num_workers=0)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_writer_on_supervised_evaluator(tmp_path):
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            PredictionEntropyd(keys="pred", entropy_key="entropy"),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=_loader(), network=MaskToLogits(), postprocessing=post
    )
    run_info = {"method": "dycon", "labeled_fraction": 0.1, "dataset": "isles22"}
    writer = CaseMetricsWriter(tmp_path / "eval", num_overlays=2, run_info=run_info)
    writer.attach(evaluator)
    evaluator.run()

    out = tmp_path / "eval"
    rows = _read_csv(out / "metrics.csv")
    assert list(rows[0]) == list(METRICS_CSV_COLUMNS)
    assert [r["case_id"] for r in rows] == ["sub-a", "sub-b", "sub-c"]
    for row, (_, pred, label) in zip(rows, _cases()):
        expected = case_metrics(pred, label, SPACING)
        for k in ("dice", "iou", "hd95_mm", "asd_mm", "hd95_vox", "lesion_f1", "abs_volume_diff_ml"):
            got = float(row[k]) if row[k] != "" else float("nan")
            assert (math.isnan(got) and math.isnan(expected[k])) or got == pytest.approx(expected[k]), (row, k)
        assert row["spacing_mm"] == "2x2x3" and row["spacing_source"].endswith("affine")
    assert [r["empty"] for r in rows] == ["none", "pred", "both"]
    assert rows[1]["hd95_mm"] == "" and float(rows[2]["dice"]) == 1.0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"] == run_info and summary["n_cases"] == 3
    dice = [case_metrics(p, lab, SPACING)["dice"] for _, p, lab in _cases()]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["metrics"]["hd95_mm"]["n"] == 2 and summary["metrics"]["hd95_mm"]["n_undefined"] == 1
    assert summary["empty_policy"]["n_empty_pred_only"] == 1 and summary["empty_policy"]["n_both_empty"] == 1
    assert summary["strata"]["size"]["lesion_free"]["n"] == 1
    assert summary["strata"]["distribution"]["single"]["case_ids"] == ["sub-a", "sub-b"]

    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["sub-a.png", "sub-b.png"]
    ent = nib.load(out / "entropy" / "sub-a_entropy.nii.gz")
    assert ent.shape == SHAPE and np.allclose(np.diag(ent.affine)[:3], SPACING)
    assert 0 < float(ent.get_fdata().max()) < 0.01  # confident logits: tiny but non-zero entropy
    assert not list(out.rglob(".*")), "temporary files left behind"
    assert writer.summary is not None and writer.summary["n_cases"] == 3

    evaluator.run()  # a second evaluation starts afresh
    assert len(_read_csv(out / "metrics.csv")) == 3


def test_writer_batch_first_soft_predictions(tmp_path):
    """decollate=False and no post-transforms: the writer arg-maxes the logits itself and derives the entropy."""
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=_loader(batch_size=3), network=MaskToLogits(), decollate=False
    )
    writer = CaseMetricsWriter(tmp_path, num_overlays=0, save_entropy_maps=True)
    writer.attach(evaluator)
    evaluator.run()
    rows = _read_csv(tmp_path / "metrics.csv")
    assert [r["case_id"] for r in rows] == ["sub-a", "sub-b", "sub-c"]
    expected = case_metrics(_cases()[0][1], _cases()[0][2], SPACING)
    assert float(rows[0]["dice"]) == pytest.approx(expected["dice"])
    assert not (tmp_path / "overlays").exists()
    assert (tmp_path / "entropy" / "sub-b_entropy.nii.gz").is_file()


def test_writer_reports_missing_keys(tmp_path):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: [{"pred": torch.zeros(1, *SHAPE)}])
    CaseMetricsWriter(tmp_path).attach(engine)
    with pytest.raises(KeyError, match="'label'"):
        engine.run([0], max_epochs=1)
