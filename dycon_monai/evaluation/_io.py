"""Atomic file writes (temporary file in the target folder, then ``os.replace``) and per-run file readers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

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


def _file_mode() -> int:
    """Mode of a newly created file under the current umask (mkstemp itself creates files as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then move it onto ``path`` atomically.

    ``suffix`` is the temporary file's ending (writers such as nibabel choose the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, _w)


def json_safe(obj: Any) -> Any:
    """Recursively turn NaN / inf into ``None`` and numpy scalars into Python numbers (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (NaN -> null), indented, atomically."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV with the given column order; NaN is written as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        clean = {}
        for k in columns:
            v = row.get(k, "")
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else repr(v)
            clean[k] = v
        writer.writerow(clean)
    return atomic_write_text(path, buf.getvalue())


def atomic_save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically; the format comes from ``path``'s extension."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def atomic_save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``array`` as NIfTI (``.nii`` or ``.nii.gz`` from ``path``) atomically."""
    import nibabel as nib

    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else np.asarray(affine))
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)


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
