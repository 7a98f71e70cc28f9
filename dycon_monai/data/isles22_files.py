"""Reading and checking the NIfTI files of an ISLES'22 case: truncation, geometry, finite voxels, label values."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from dycon_monai.data.isles22_layout import DataError

__all__ = ["LABEL_MAPPINGS", "LabelMapping", "check_label_values", "resolve_label_mapping"]

#: Named label mappings (source value -> 0/1). ``None`` / ``"binary"``: the mask must already be {0, 1}.
LABEL_MAPPINGS: dict[str, dict[int, int]] = {
    "binary": {0: 0, 1: 1},
    "brats_whole_tumor": {0: 0, 1: 1, 2: 1, 4: 1},
    "brats_tumor_core": {0: 0, 1: 1, 2: 0, 4: 1},
    "brats_enhancing_tumor": {0: 0, 1: 0, 2: 0, 4: 1},
    "nonzero": {},  # special: every non-zero value -> 1
}

LabelMapping = Union[str, Mapping[int, int], None]


def _load_checked(path: Path, cid: str, what: str) -> nib.Nifti1Image:
    """Parse a NIfTI header and check that the file holds all its voxel data (truncation), cheaply."""
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for a bad file
        raise DataError(f"unreadable {what} of case {cid}: {path}: {type(e).__name__}: {e}", cid, path) from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{what} of case {cid} is not a NIfTI image: {path}", cid, path)
    hdr = img.header
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
    expected = offset + int(np.prod(img.shape)) * hdr.get_data_dtype().itemsize
    try:
        if path.name.endswith(".gz"):
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]  # uncompressed size mod 2^32 (gzip trailer)
            if isize != expected % (1 << 32):
                # multi-member gzip files keep only the last member's size: decompress to be sure
                np.asarray(img.dataobj)
        elif path.stat().st_size < expected:
            raise EOFError(f"file has {path.stat().st_size} bytes, the header needs {expected}")
    except Exception as e:
        raise DataError(
            f"unreadable {what} of case {cid}: {path} is truncated or corrupt ({type(e).__name__}: {e}); "
            "copy or download it again",
            cid,
            path,
        ) from e
    return img


def _check_image_data(img: nib.Nifti1Image, path: Path, cid: str, what: str, split_name: str) -> None:
    """Decompress an image (``check_data=True``): unreadable or non-finite voxels are errors, all-zero a warning."""
    try:
        data = np.asarray(img.dataobj)
    except Exception as e:
        raise DataError(f"unreadable {what} of case {cid}: {path}: {type(e).__name__}: {e}", cid, path) from e
    # imported here: the checks module brings MONAI (its transform), which the datalist CLI does not need otherwise
    from dycon_monai.data.checks import NonFiniteDataError, check_finite, warn_if_all_zero

    where = f"{what} image of case {cid} ({split_name} set): {path}"
    try:
        check_finite(data, where)
    except NonFiniteDataError as e:
        raise DataError(str(e), cid, path) from e
    warn_if_all_zero(data, where, stacklevel=3)  # points at the caller of isles22_datalist


def _spatial_shape(img: nib.Nifti1Image, path: Path, cid: str, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(f"{what} of case {cid} has shape {img.shape} in {path}; expected a 3D volume", cid, path)
    return shape


def _check_geometry(
    ref: tuple[Path, nib.Nifti1Image], other: tuple[Path, nib.Nifti1Image], cid: str, what: str, atol: float
) -> None:
    (rp, ri), (op, oi) = ref, other
    rs, os_ = _spatial_shape(ri, rp, cid, "DWI"), _spatial_shape(oi, op, cid, what)
    if rs != os_:
        raise DataError(
            f"{what} of case {cid} has shape {os_} ({op}) but the DWI has {rs} ({rp}); expected the same grid"
            + (" - ISLES'22 FLAIR is not in DWI space: register it to the DWI first" if what == "flair" else ""),
            cid,
            op,
        )
    diff = float(np.max(np.abs(np.asarray(ri.affine) - np.asarray(oi.affine))))
    if diff > atol:
        raise DataError(
            f"{what} of case {cid} ({op}) has an affine that differs from the DWI's ({rp}) by {diff:.4g} "
            f"(max absolute difference > tolerance {atol}); expected the same geometry.\n"
            f"{what} affine:\n{np.round(oi.affine, 4)}\nDWI affine:\n{np.round(ri.affine, 4)}",
            cid,
            op,
        )


def resolve_label_mapping(label_mapping: LabelMapping) -> dict[int, int] | None:
    """Turn a mapping name or dict into ``{source value: 0/1}``; ``None``/"binary" -> ``None`` (no mapping).

    ``"nonzero"`` returns an empty dict, meaning "every non-zero value is lesion".
    """
    if label_mapping is None or label_mapping == "binary":
        return None
    if isinstance(label_mapping, str):
        if label_mapping not in LABEL_MAPPINGS:
            raise ValueError(
                f"unknown label_mapping {label_mapping!r}; expected one of {sorted(LABEL_MAPPINGS)} or a dict"
            )
        return dict(LABEL_MAPPINGS[label_mapping])
    out = {}
    for k, v in dict(label_mapping).items():
        kv, vv = float(k), int(v)
        if not kv.is_integer() or vv not in (0, 1):
            raise ValueError(f"label_mapping must map integer label values to 0 or 1; got {k!r}: {v!r}")
        out[int(kv)] = vv
    return out


def check_label_values(values: np.ndarray, mapping: dict[int, int] | None, where: str) -> None:
    """Raise a ValueError naming ``where`` if label ``values`` are not allowed (see :func:`resolve_label_mapping`)."""
    values = np.unique(np.asarray(values))
    if mapping is not None and len(mapping) == 0:  # "nonzero"
        return
    allowed = {0, 1} if mapping is None else set(mapping)
    bad = [v for v in values.tolist() if not float(v).is_integer() or int(v) not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in values[:12].tolist()) + (" ..." if len(values) > 12 else "")
        if mapping is None:
            hint = (
                "; expected {0, 1}. For another label set pass label_mapping (e.g. 'brats_whole_tumor' for "
                "{1, 2, 4} -> 1, 'nonzero', or a dict {value: 0/1})"
            )
        else:
            hint = f"; label_mapping covers only {sorted(allowed)}"
        raise ValueError(f"{where} has label values [{shown}]{hint}")


def _read_mask(path: Path, cid: str, mapping: dict[int, int] | None) -> np.ndarray:
    img = _load_checked(path, cid, "mask")
    try:
        data = np.asarray(img.dataobj)
    except Exception as e:
        raise DataError(f"unreadable mask of case {cid}: {path}: {type(e).__name__}: {e}", cid, path) from e
    try:
        check_label_values(data, mapping, f"mask of case {cid} ({path})")
    except ValueError as e:
        raise DataError(str(e), cid, path) from e
    if mapping is None:
        return data > 0
    if len(mapping) == 0:
        return data != 0
    lut_keys = np.array(sorted(mapping))
    fg = [k for k in lut_keys if mapping[int(k)] == 1]
    return np.isin(data, fg)
