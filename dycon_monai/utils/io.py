"""Atomic file writes: a temporary file in the target folder, then ``os.replace`` onto the final name.

A reader (or a run killed halfway) therefore only ever sees the old file or the complete new one, never a partial
file. :func:`atomic_write` is the one implementation; the other functions are thin writers on top of it. With
``fsync=True`` the data and the folder entry are flushed to disk before returning (checkpoints, datalists and
published weights use it, so they survive a power loss as well as a killed process).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "TMP_PREFIX",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_save_figure",
    "atomic_save_nifti",
    "atomic_torch_save",
    "atomic_copyfile",
    "json_safe",
]

#: Name prefix of the temporary files of :func:`atomic_torch_save` and :func:`atomic_copyfile` (a saver may remove
#: leftovers of a killed run by this prefix).
TMP_PREFIX = ".tmp-"


def _file_mode() -> int:
    """Mode of a newly created file under the current umask (mkstemp itself creates files as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(path: Path) -> None:
    """``fsync`` a folder so that a rename in it is durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    writer: Callable[[str], None],
    suffix: str = "",
    *,
    prefix: str | None = None,
    fsync: bool = False,
) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then move it onto ``path`` atomically.

    The folder is created if needed. The file gets the mode of a newly created file under the current umask. If
    ``writer`` (or anything after it) fails, the temporary file is removed and the error is raised again; ``path``
    is left as it was.

    Args:
        path: the final file.
        writer: writes the complete content to the path it is given.
        suffix: the temporary file's ending (writers such as nibabel choose the format from it); ``.tmp`` if empty.
        prefix: the temporary file's name prefix; ``.<name>.`` if not given.
        fsync: flush the written file to disk before the rename, and the folder after it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _file_mode())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _w, fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, _w, fsync=fsync)


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


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = False) -> Path:
    """Write ``obj`` as strict JSON (NaN -> null), indented, atomically (``fsync``: also flush it to disk)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n", fsync=fsync)


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
    """Save ``array`` as float32 NIfTI (``.nii`` or ``.nii.gz`` from ``path``) atomically."""
    import nibabel as nib

    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else np.asarray(affine))
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` such that ``path`` is either the old file or the complete new one, never partial.

    Writes ``<dir>/.tmp-<name>-…``, ``fsync``s it, ``os.replace``s it onto ``path`` and ``fsync``s the folder.
    The temporary file is removed if saving fails.

    Returns:
        The final path.
    """
    import torch

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()

    path = Path(path)
    return atomic_write(path, _w, prefix=f"{TMP_PREFIX}{path.name}-", fsync=True)


def atomic_copyfile(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the file ``source`` onto ``path`` atomically and durably (``fsync`` as :func:`atomic_torch_save`)."""
    path = Path(path)
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp), prefix=f"{TMP_PREFIX}{path.name}-", fsync=True)
