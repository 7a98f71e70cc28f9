"""Per-run file readers of the evaluation, and the atomic writers it uses (from :mod:`dycon_monai.utils.io`)."""

from __future__ import annotations

import csv
import os
from typing import Any

from dycon_monai.utils.io import (
    atomic_save_figure,
    atomic_save_nifti,
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    json_safe,
)

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_save_figure",
    "atomic_save_nifti",
    "json_safe",
    "read_metrics_csv",
]


#: Columns of ``metrics.csv`` that stay text even when they look like numbers.
TEXT_COLUMNS: frozenset[str] = frozenset({"case_id", "empty", "size_stratum", "distribution_stratum", "spacing"})


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.csv`` written by :func:`atomic_write_csv`: numbers become floats, empty cells NaN.

    Columns in :data:`TEXT_COLUMNS` are kept as text.
    """
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v is None:
                    continue
                if k in TEXT_COLUMNS:
                    row[k] = v
                    continue
                if v == "":
                    row[k] = float("nan")
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows
