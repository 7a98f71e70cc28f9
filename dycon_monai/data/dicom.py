"""DICOM series checks: one series per folder, one orientation, evenly spaced slices, read with ITK (GDCM).

MONAI's ``ITKReader`` reads a folder as one volume (``LoadImage(reader="ITKReader")(folder)``), sorting the slices
by position, but it does not say when a slice is missing or when the files mix orientations: the volume it
returns is then silently wrong. :func:`inspect_dicom_series` reads every file's header (no pixel data) and raises
:class:`~dycon_monai.data.isles22_layout.DataError` naming the folder, the files and what was expected;
:class:`CheckDicomSeriesd` runs it at load time, before the series is read.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .isles22_layout import DataError, MissingFileError

__all__ = ["CheckDicomSeriesd", "DicomSeriesInfo", "dicom_files", "inspect_dicom_series"]

PathLike = Union[str, os.PathLike]


@dataclass
class DicomSeriesInfo:
    """What :func:`inspect_dicom_series` found: files in slice order, slice step (mm), in-plane size, series UID."""

    folder: str
    files: list[str]
    slice_step_mm: float
    rows: int
    columns: int
    series_uid: str


def dicom_files(folder: PathLike) -> list[Path]:
    """The ``*.dcm`` files directly in ``folder`` (any case of the extension), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")


def _header(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    import itk

    io = itk.GDCMImageIO.New()
    io.SetFileName(str(path))
    try:
        io.ReadImageInformation()
    except Exception as e:  # noqa: BLE001 - ITK raises RuntimeError subclasses without a common type
        raise DataError(f"could not read the DICOM header of {path}: {e}", path=path) from e
    origin = np.array([io.GetOrigin(i) for i in range(3)], dtype=np.float64)
    rows = np.array([io.GetDirection(0)[i] for i in range(3)], dtype=np.float64)
    cols = np.array([io.GetDirection(1)[i] for i in range(3)], dtype=np.float64)
    return origin, np.stack([rows, cols]), (int(io.GetDimensions(1)), int(io.GetDimensions(0)))


def _series_uids(folder: Path) -> list[str]:
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)
    names.SetDirectory(str(folder))
    return [str(u) for u in names.GetSeriesUIDs()]


def inspect_dicom_series(
    folder: PathLike, orientation_tolerance: float = 1e-4, gap_tolerance: float = 0.05, min_slices: int = 2
) -> DicomSeriesInfo:
    """Check that ``folder`` holds one gap-free DICOM series of one orientation.

    Args:
        folder: a folder of ``*.dcm`` files (one slice each, as CT series are distributed).
        orientation_tolerance: largest difference allowed between two files' direction cosines.
        gap_tolerance: largest relative deviation of a slice step from the series' median step.
        min_slices: fewest slices accepted.

    Raises:
        MissingFileError: ``folder`` does not exist or holds no ``*.dcm`` file.
        DataError: an unreadable header, several series in the folder, mixed orientations, two slices at one
            position, a gap (a step larger than the median: a missing slice) or too few slices; the message names
            the folder and the files concerned.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"DICOM series folder {folder} does not exist", path=folder)
    files = dicom_files(folder)
    if len(files) < min_slices:
        raise MissingFileError(
            f"DICOM series folder {folder} holds {len(files)} *.dcm file(s); expected a series of at least "
            f"{min_slices} slices",
            path=folder,
        )
    uids = _series_uids(folder)
    if len(uids) > 1:
        raise DataError(
            f"DICOM folder {folder} holds {len(uids)} series ({', '.join(uids[:4])}); expected one series per "
            "folder (move the other series out)",
            path=folder,
        )
    headers = [_header(f) for f in files]
    ref_dirs = headers[0][1]
    for f, (_, dirs, size) in zip(files, headers):
        if float(np.max(np.abs(dirs - ref_dirs))) > orientation_tolerance:
            raise DataError(
                f"DICOM series {folder} mixes orientations: {f.name} has direction cosines "
                f"{np.round(dirs, 4).tolist()} but {files[0].name} has {np.round(ref_dirs, 4).tolist()}; expected "
                "one orientation for every slice",
                path=f,
            )
        if size != headers[0][2]:
            raise DataError(
                f"DICOM series {folder}: {f.name} is {size[0]} x {size[1]} but {files[0].name} is "
                f"{headers[0][2][0]} x {headers[0][2][1]}; expected one slice size",
                path=f,
            )
    normal = np.cross(ref_dirs[0], ref_dirs[1])
    pos = np.array([float(np.dot(h[0], normal)) for h in headers])
    order = np.argsort(pos, kind="stable")
    pos, ordered = pos[order], [files[i] for i in order]
    steps = np.diff(pos)
    if np.any(steps <= 1e-6):
        i = int(np.argmax(steps <= 1e-6))
        raise DataError(
            f"DICOM series {folder}: {ordered[i].name} and {ordered[i + 1].name} lie at the same position "
            f"({pos[i]:.3f} mm along the slice normal); expected one slice per position",
            path=ordered[i + 1],
        )
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > gap_tolerance * median)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"DICOM series {folder} has a gap: {steps[i]:.3f} mm between {ordered[i].name} ({pos[i]:.3f} mm) and "
            f"{ordered[i + 1].name} ({pos[i + 1]:.3f} mm), but the series' slice step is {median:.3f} mm "
            f"(missing slice(s)? {bad.size} uneven step(s) in all); expected evenly spaced slices",
            path=ordered[i],
        )
    rows, cols = headers[0][2]
    return DicomSeriesInfo(str(folder), [str(p) for p in ordered], median, rows, cols, uids[0] if uids else "")


class CheckDicomSeriesd(MapTransform):
    """Run :func:`inspect_dicom_series` on every key whose value is a folder (a file path passes unchanged).

    Put it before ``LoadImaged(reader="ITKReader")`` so that a series with a gap or mixed orientations stops the
    run with the case id and the files named, instead of loading a distorted volume.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.kwargs = kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (str, os.PathLike)) and Path(value).is_dir():
                try:
                    inspect_dicom_series(value, **self.kwargs)
                except DataError as e:
                    cid = d.get("case_id")
                    if cid is None:
                        raise
                    raise type(e)(f"case {cid} {key}: {e}", case_id=str(cid), path=e.path) from e
        return d
