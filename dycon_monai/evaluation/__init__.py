"""Evaluation: per-case metrics (MONAI + ISLES'22 lesion-wise), lesion strata, pictures and run comparison.

See ``docs/evaluation.md`` for units, the empty policy, strata thresholds and the per-run file format.

Names are imported on first use, so that ``python -m dycon_monai.evaluation.compare`` starts without loading
MONAI and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "CASE_METRIC_KEYS": "definitions",
    "EMPTY_POLICY": "definitions",
    "SUMMARY_METRIC_KEYS": "definitions",
    "as_binary_mask": "metrics",
    "case_metrics": "metrics",
    "lesion_components": "metrics",
    "lesion_detection_counts": "metrics",
    "SIZE_THRESHOLDS_ML": "strata",
    "SIZE_THRESHOLDS_VOXELS": "strata",
    "describe": "strata",
    "distribution_stratum": "strata",
    "size_stratum": "strata",
    "strata_tables": "strata",
    "summarize_cases": "strata",
    "plot_training_curves": "pictures",
    "read_scalar_logs": "pictures",
    "save_overlay": "pictures",
    "select_slices": "pictures",
    "PredictionEntropyd": "transforms",
    "prediction_entropy": "transforms",
    "PAPER_RESULTS": "compare",
    "compare_runs": "compare",
    "load_run": "compare",
}

__all__ = [
    "CASE_METRIC_KEYS",
    "EMPTY_POLICY",
    "PAPER_RESULTS",
    "PredictionEntropyd",
    "SIZE_THRESHOLDS_ML",
    "SIZE_THRESHOLDS_VOXELS",
    "SUMMARY_METRIC_KEYS",
    "as_binary_mask",
    "case_metrics",
    "compare_runs",
    "describe",
    "distribution_stratum",
    "lesion_components",
    "lesion_detection_counts",
    "load_run",
    "plot_training_curves",
    "prediction_entropy",
    "read_scalar_logs",
    "save_overlay",
    "select_slices",
    "size_stratum",
    "strata_tables",
    "summarize_cases",
]

if TYPE_CHECKING:
    from dycon_monai.evaluation.compare import PAPER_RESULTS, compare_runs, load_run
    from dycon_monai.evaluation.definitions import CASE_METRIC_KEYS, EMPTY_POLICY, SUMMARY_METRIC_KEYS
    from dycon_monai.evaluation.metrics import as_binary_mask, case_metrics, lesion_components, lesion_detection_counts
    from dycon_monai.evaluation.pictures import plot_training_curves, read_scalar_logs, save_overlay, select_slices
    from dycon_monai.evaluation.strata import (
        SIZE_THRESHOLDS_ML,
        SIZE_THRESHOLDS_VOXELS,
        describe,
        distribution_stratum,
        size_stratum,
        strata_tables,
        summarize_cases,
    )
    from dycon_monai.evaluation.transforms import PredictionEntropyd, prediction_entropy


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dycon_monai.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dycon_monai.evaluation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
