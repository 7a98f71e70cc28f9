"""A MONAI image reader for volumes stored as HDF5 datasets (the preprocessed LA 2018 set, ``mri_norm2.h5``).

``LoadImaged(keys="image", reader=H5Reader(dataset="image"))`` reads the dataset ``image`` of each file; another
``LoadImaged`` with ``H5Reader(dataset="label")`` reads the label from the same file. HDF5 files carry no
geometry, so the reader gives the array the affine ``diag(spacing)`` (RAS, origin 0): the preprocessed LA set is
0.625 mm isotropic. Reading needs ``h5py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["H5Reader", "read_h5_dataset"]


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is an install requirement
        raise ImportError("reading .h5 volumes needs h5py: pip install h5py") from e
    return h5py


def read_h5_dataset(path: str | Path, dataset: str) -> np.ndarray:
    """Read one dataset of an HDF5 file as a numpy array; errors name the file, the dataset and what it holds."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected an HDF5 volume with dataset '{dataset}')")
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise KeyError(
                    f"{path} has no dataset '{dataset}' (it holds {sorted(f.keys())}); expected 'image' and 'label'"
                )
            array = np.asarray(f[dataset][()])
    except OSError as e:
        raise OSError(f"could not read {path} as HDF5 ({e}); truncated or not an .h5 file? copy it again") from e
    if array.ndim != 3:
        raise ValueError(f"{path}: dataset '{dataset}' has shape {array.shape}; expected a 3D volume")
    return array


class H5Reader(ImageReader):
    """Read a 3D volume from a named dataset of an ``.h5`` file (MONAI ``ImageReader``).

    Args:
        dataset: name of the HDF5 dataset to read (``"image"`` or ``"label"`` in the LA set).
        spacing: voxel size in mm written into the affine (the file has none); 0.625 for the LA set.
        dtype: cast the array to this numpy dtype (``None`` keeps the stored one).
    """

    def __init__(self, dataset: str = "image", spacing: float | Sequence[float] = 0.625, dtype: Any = None) -> None:
        super().__init__()
        self.dataset = str(dataset)
        sp = ensure_tuple(spacing)
        self.spacing = tuple(float(s) for s in (sp * 3 if len(sp) == 1 else sp))
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be one or three positive values; got {spacing!r}")
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        return all(str(f).lower().endswith((".h5", ".hdf5")) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> list[np.ndarray] | np.ndarray:
        arrays = [read_h5_dataset(p, self.dataset) for p in ensure_tuple(data)]
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, dict]:
        arrays = [img] if isinstance(img, np.ndarray) else list(img)
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack HDF5 volumes of different shapes {sorted(shapes)} as channels")
        affine = np.diag([*self.spacing, 1.0])
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(arrays) == 1 else 0,
            "h5_dataset": self.dataset,
        }
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        if self.dtype is not None:
            data = data.astype(self.dtype, copy=False)
        return data, meta
