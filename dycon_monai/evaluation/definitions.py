"""Names shared by the evaluation modules: metric keys and the empty policy (no heavy imports here)."""

from __future__ import annotations

__all__ = ["CASE_METRIC_KEYS", "SUMMARY_METRIC_KEYS", "EMPTY_POLICY"]

#: Keys returned by :func:`case_metrics`, in the column order of ``metrics.csv``.
CASE_METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95_mm",
    "asd_mm",
    "hd95_vox",
    "asd_vox",
    "abs_volume_diff_ml",
    "abs_lesion_count_diff",
    "lesion_f1",
    "lesion_tp",
    "lesion_fp",
    "lesion_fn",
    "label_voxels",
    "pred_voxels",
    "label_volume_ml",
    "pred_volume_ml",
    "label_lesions",
    "pred_lesions",
    "empty",
)

#: Metrics that are averaged (mean +- std) in summaries and reports.
SUMMARY_METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95_mm",
    "asd_mm",
    "hd95_vox",
    "asd_vox",
    "abs_volume_diff_ml",
    "abs_lesion_count_diff",
    "lesion_f1",
)

#: The empty policy in words; written into every ``summary.json``.
EMPTY_POLICY: dict[str, str] = {
    "both_empty": "dice=1, iou=1, hd95=0, asd=0, lesion_f1=1",
    "one_empty": "dice=0, iou=0, lesion_f1=0, hd95=asd=NaN (undefined)",
    "undefined_distances": "left out of mean and std; counted as n_undefined beside every mean",
    "always_defined": "abs_volume_diff_ml, abs_lesion_count_diff",
}
