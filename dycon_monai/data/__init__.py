"""Datasets: ISLES'22, LA 2018, BraTS 2019 and Pancreas-CT scanners and splits, synthetic cohorts, readers, MONAI transform chains.

Submodules are imported lazily, so ``python -m dycon_monai.data.synthetic`` and ``python -m
dycon_monai.data.isles22`` run without importing each other (and MONAI is only imported for the transforms).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "brats19_datalist",
    "brats19_inference_datalist",
    "brats_inference_transforms",
    "brats_label_loader",
    "brats_train_transforms",
    "make_synthetic_brats",
    "scan_brats19",
    "make_synthetic_pancreas",
    "pancreas_datalist",
    "pancreas_inference_datalist",
    "pancreas_inference_transforms",
    "pancreas_label_loader",
    "pancreas_train_transforms",
    "scan_pancreas",
    "inspect_dicom_series",
    "BinarizeLabeld",
    "DatasetNotFoundError",
    "check_dataset",
    "H5Reader",
    "la2018_datalist",
    "la_inference_transforms",
    "la_label_loader",
    "la_train_transforms",
    "make_synthetic_la",
    "scan_la2018",
    "LABEL_MAPPINGS",
    "inference_transforms",
    "isles22_datalist",
    "labeled_train_transforms",
    "load_datalist",
    "make_synthetic_cohort",
    "save_datalist",
    "scan_isles22",
    "unlabeled_train_transforms",
    "validation_transforms",
]

_WHERE = {
    "brats19_datalist": "brats19",
    "brats19_inference_datalist": "brats19",
    "scan_brats19": "brats19",
    "brats_train_transforms": "brats19_transforms",
    "brats_inference_transforms": "brats19_transforms",
    "brats_label_loader": "brats19_transforms",
    "make_synthetic_brats": "synthetic_brats",
    "make_synthetic_pancreas": "synthetic_pancreas",
    "pancreas_datalist": "pancreas",
    "pancreas_inference_datalist": "pancreas",
    "scan_pancreas": "pancreas",
    "pancreas_train_transforms": "pancreas_transforms",
    "pancreas_inference_transforms": "pancreas_transforms",
    "pancreas_label_loader": "pancreas_transforms",
    "inspect_dicom_series": "dicom",
    "H5Reader": "h5",
    "DatasetNotFoundError": "isles22_layout",
    "check_dataset": "isles22_layout",
    "la2018_datalist": "la2018",
    "scan_la2018": "la2018",
    "la_train_transforms": "la_transforms",
    "la_inference_transforms": "la_transforms",
    "la_label_loader": "la_transforms",
    "make_synthetic_la": "synthetic_la",
    "make_synthetic_cohort": "synthetic",
    "isles22_datalist": "isles22",
    "save_datalist": "isles22",
    "load_datalist": "isles22",
    "scan_isles22": "isles22_layout",
    "LABEL_MAPPINGS": "isles22_files",
    "BinarizeLabeld": "transforms",
    "labeled_train_transforms": "transforms",
    "unlabeled_train_transforms": "transforms",
    "validation_transforms": "transforms",
    "inference_transforms": "transforms",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
