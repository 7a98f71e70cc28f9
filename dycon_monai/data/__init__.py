"""Datasets: ISLES'22 layout scanner and splits, synthetic MNI152-based cohort, MONAI transform chains.

Submodules are imported lazily, so ``python -m dycon_monai.data.synthetic`` and ``python -m
dycon_monai.data.isles22`` run without importing each other (and MONAI is only imported for the transforms).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BinarizeLabeld",
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
    "make_synthetic_cohort": "synthetic",
    "isles22_datalist": "isles22",
    "save_datalist": "isles22",
    "load_datalist": "isles22",
    "scan_isles22": "isles22",
    "LABEL_MAPPINGS": "isles22",
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
