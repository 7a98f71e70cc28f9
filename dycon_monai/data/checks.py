"""Data integrity checks before training, in the spirit of nnU-Net's dataset check.

Two array-level checks, pure functions reused by every dataset (``isles22_datalist(..., check_data=True)``, the
transform chains, other dataset readers):

* :func:`check_finite` - NaN or Inf voxels are an error (:class:`NonFiniteDataError`) that names where they are
  and how many. Unchecked, a NaN region makes ``NormalizeIntensityd`` turn the whole image into NaN: training
  stops on a non-finite loss, and an evaluated case silently scores Dice 0.
* :func:`is_all_zero` / :func:`warn_if_all_zero` - an image without a single non-zero voxel is suspicious (a
  failed export, a blank channel) but not impossible, so it is a warning (:class:`AllZeroImageWarning`).

:class:`CheckFinited` applies them at load time, right after ``LoadImaged``, in every chain of
:mod:`dycon_monai.data.transforms`; its messages name the case, the key, the file (from the ``MetaTensor``'s
``filename_or_obj``) and the number of non-finite voxels.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

__all__ = [
    "AllZeroImageWarning",
    "CheckFinited",
    "NonFiniteDataError",
    "check_finite",
    "count_nonfinite",
    "is_all_zero",
    "warn_if_all_zero",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


class NonFiniteDataError(ValueError):
    """An image holds NaN or Inf voxels.

    Attributes:
        where: what was checked (case, key or modality, file), as given to :func:`check_finite`.
        n_nan: number of NaN voxels.
        n_inf: number of +Inf / -Inf voxels.
        n_voxels: number of values in the array.
    """

    def __init__(self, message: str, where: str, n_nan: int, n_inf: int, n_voxels: int):
        super().__init__(message)
        self.where = where
        self.n_nan = n_nan
        self.n_inf = n_inf
        self.n_voxels = n_voxels


class AllZeroImageWarning(UserWarning):
    """An image has no non-zero voxel (filter it with ``warnings.filterwarnings`` if that is expected)."""


def _is_float(x: ArrayLike) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() or x.is_complex()
    return np.issubdtype(x.dtype, np.inexact)


def count_nonfinite(array: ArrayLike) -> tuple[int, int]:
    """Numbers of NaN and of infinite values in a numpy array or torch tensor (``(0, 0)`` for integer data)."""
    if isinstance(array, torch.Tensor):
        t = array.detach()
        if not _is_float(t) or bool(torch.isfinite(t).all()):
            return 0, 0
        return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    a = np.asarray(array)
    if not _is_float(a) or bool(np.isfinite(a).all()):
        return 0, 0
    return int(np.count_nonzero(np.isnan(a))), int(np.count_nonzero(np.isinf(a)))


def check_finite(array: ArrayLike, where: str) -> None:
    """Raise :class:`NonFiniteDataError` if ``array`` holds any NaN or Inf value.

    Args:
        array: image data (numpy array or torch tensor, ``MetaTensor`` included); integer data always passes.
        where: what the array is, for the message (e.g. ``"dwi image of case sub-strokecase0001 (PATH)"``).

    Raises:
        NonFiniteDataError: naming ``where``, the number of non-finite voxels (NaN and Inf apart) and the total.
    """
    n_nan, n_inf = count_nonfinite(array)
    if n_nan or n_inf:
        size = int(array.numel()) if isinstance(array, torch.Tensor) else int(np.asarray(array).size)
        raise NonFiniteDataError(
            f"{where} has {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} Inf) out of {size}; "
            "non-finite intensities turn the normalised image into NaN (a non-finite loss in training, Dice 0 "
            "in evaluation). Repair the file (find out why it holds NaN / Inf; numpy.nan_to_num replaces them) "
            "or leave the case out of the datalist.",
            where,
            n_nan,
            n_inf,
            size,
        )


def is_all_zero(array: ArrayLike) -> bool:
    """``True`` when no value of ``array`` is non-zero (NaN counts as non-zero; an empty array is all zero)."""
    if isinstance(array, torch.Tensor):
        return not bool(torch.any(array.detach() != 0))
    return not bool(np.any(np.asarray(array)))


def warn_if_all_zero(array: ArrayLike, where: str, stacklevel: int = 2) -> bool:
    """Issue an :class:`AllZeroImageWarning` naming ``where`` when ``array`` is all zero; returns whether it was."""
    if is_all_zero(array):
        warnings.warn(
            f"{where} is all zero (no non-zero voxel): a failed export or an empty channel? It is kept; check the "
            "file, or leave the case out of the datalist.",
            AllZeroImageWarning,
            stacklevel=stacklevel + 1,
        )
        return True
    return False


def _meta(data: Mapping[Hashable, Any], key: Hashable) -> Mapping[str, Any]:
    meta = getattr(data.get(key), "meta", None)
    if isinstance(meta, Mapping):
        return meta
    meta = data.get(f"{key}_meta_dict")
    return meta if isinstance(meta, Mapping) else {}


def _stacked_files(data: Mapping[Hashable, Any], key: Hashable) -> int:
    """Number of files ``LoadImaged`` stacked as channels (a list of paths), else 0."""
    value, channel_dim = data.get(key), _meta(data, key).get("original_channel_dim")
    if isinstance(channel_dim, (int, np.integer)) and int(channel_dim) == 0 and getattr(value, "ndim", 0) == 4:
        return int(value.shape[0]) if int(value.shape[0]) > 1 else 0
    return 0


def _where(data: Mapping[Hashable, Any], key: Hashable, per_channel: list[int] | None = None) -> str:
    name = _meta(data, key).get("filename_or_obj")
    name = "file name unknown" if name is None else str(name)
    n_files = _stacked_files(data, key)
    if n_files:  # MONAI keeps only the first file name of a list
        name = f"{n_files} files stacked as channels, the first {name}"
        if per_channel is not None:
            name += f"; non-finite voxels per file in list order: {per_channel}"
    cid = data.get("case_id")
    return (f"case {cid} " if cid else "") + f"'{key}' ({name})"


class CheckFinited(MapTransform):
    """Refuse images with NaN / Inf voxels; warn about all-zero images (dictionary transform).

    Put it right after ``LoadImaged`` (the chains of :mod:`dycon_monai.data.transforms` do), while the data still
    carries the original file name and before anything (normalisation, resampling) spreads a NaN. The data are
    returned unchanged.

    Args:
        keys: keys to check for non-finite values (images and labels).
        warn_all_zero_keys: keys (a subset of ``keys``, usually the image) for which an all-zero array gives an
            :class:`AllZeroImageWarning`; ``None`` for none. Labels are left out on purpose: an empty label is a
            lesion-free case.
        allow_missing_keys: skip absent keys.

    Raises:
        NonFiniteDataError: ``case <id> '<key>' (<file>) has <n> non-finite voxels (<a> NaN, <b> Inf) out of <N>;
            ...`` (wrapped by ``Compose`` in a ``RuntimeError`` whose cause it is).
    """

    def __init__(
        self,
        keys: KeysCollection,
        warn_all_zero_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.warn_all_zero_keys = set(ensure_tuple(warn_all_zero_keys)) if warn_all_zero_keys is not None else set()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value if isinstance(value, (torch.Tensor, np.ndarray)) else np.asarray(value)
            per_channel = None
            if _stacked_files(d, key) and any(count_nonfinite(array)):  # which file of the list is it?
                per_channel = [sum(count_nonfinite(c)) for c in array]
            where = _where(d, key, per_channel)
            check_finite(array, where)
            if key in self.warn_all_zero_keys:
                if _stacked_files(d, key):  # one blank modality among several
                    for i, channel in enumerate(array):
                        warn_if_all_zero(channel, f"{where}, channel {i} (file {i} of its list),")
                else:
                    warn_if_all_zero(array, where)
        return d
