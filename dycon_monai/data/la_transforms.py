"""MONAI transform chains for the LA 2018 set, in either form (``"h5"`` preprocessed, ``"nrrd"`` challenge release).

Training chain (labeled; the unlabeled chain is the same without the ``label`` key)::

    LoadImaged (H5Reader | ITKReader) -> CheckFinited -> EnsureChannelFirstd -> BinarizeLabeld ({0,1} | {0,255})
    -> Orientationd(RAS) -> Spacingd(pixdim) -> NormalizeIntensityd -> SpatialPadd(patch)
    -> RandSpatialCropd(patch) -> RandRotate90d (axial plane) -> RandFlipd -> EnsureTyped(float32)

The random crop is uniform and the augmentation a rotation by a multiple of 90 degrees plus a flip, the
recipe of the LA experiments in the UA-MT line of work that the DyCON paper follows. The preprocessed images are
already z-scored, so ``NormalizeIntensityd`` changes them little; for the challenge release it is the z-score.
Evaluation loads the label separately, on the original grid (:func:`la_label_loader`), so metrics are computed
where the label was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import ITKReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    Spacingd,
    SpatialPadd,
)

from .checks import CheckFinited
from .h5 import H5Reader, read_h5_dataset
from .la2018 import LA_LABEL_MAPPINGS, LA_SPACING_MM
from .transforms import BinarizeLabeld, LoadImageCheckedd, _as3

__all__ = ["la_inference_transforms", "la_label_loader", "la_train_transforms", "read_la_array"]

_FORMS = ("h5", "nrrd")


def _form(form: str) -> str:
    if form not in _FORMS:
        raise ValueError(f"data_form must be 'h5' or 'nrrd' for the LA transforms; got {form!r}")
    return form


def _reader(key: str, form: str) -> Any:
    return H5Reader(dataset=key, spacing=LA_SPACING_MM) if form == "h5" else ITKReader()


def read_la_array(path: str, key: str, form: str) -> np.ndarray:
    """The raw array of one LA file (``key`` = ``"image"`` or ``"label"``), for dataset checks."""
    if _form(form) == "h5":
        return read_h5_dataset(path, key)
    import itk

    return np.asarray(itk.array_from_image(itk.imread(str(path))))


def _load(keys: Sequence[str], form: str, pixdim: Sequence[float]) -> list:
    form = _form(form)
    chain: list = [LoadImageCheckedd(keys=k, reader=_reader(k, form), image_only=True) for k in keys]
    chain += [CheckFinited(keys=list(keys), warn_all_zero_keys="image"), EnsureChannelFirstd(keys=list(keys))]
    if "label" in keys:
        chain.append(BinarizeLabeld(keys="label", label_mapping=LA_LABEL_MAPPINGS[form], image_key="image"))
    mode = ["bilinear" if k == "image" else "nearest" for k in keys]
    chain += [
        Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=list(keys), pixdim=_as3(pixdim, "pixdim"), mode=mode),
        NormalizeIntensityd(keys="image"),
    ]
    return chain


def la_train_transforms(
    patch_size: Sequence[int] = (112, 112, 80),
    pixdim: Sequence[float] = (0.625, 0.625, 0.625),
    labeled: bool = True,
    form: str = "h5",
    augment: bool = True,
) -> Compose:
    """Training chain: keys ``image`` (+ ``label`` when ``labeled``); a ``label`` of an unlabeled entry is never read.

    Args:
        patch_size: training patch (voxels); smaller volumes are padded.
        pixdim: target voxel spacing in mm (0.625 is the preprocessed set's own).
        labeled: include the label.
        form: ``"h5"`` or ``"nrrd"``.
        augment: random rot90 (axial plane, square patches) and flips.
    """
    patch = tuple(int(p) for p in _as3(patch_size, "patch_size"))
    keys = ["image", "label"] if labeled else ["image"]
    chain = _load(keys, form, pixdim)
    chain += [SpatialPadd(keys=keys, spatial_size=patch), RandSpatialCropd(keys=keys, roi_size=patch)]
    if augment:
        if patch[0] == patch[1]:
            chain.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
        chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(2)]
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return Compose(chain)


def la_inference_transforms(pixdim: Sequence[float] = (0.625, 0.625, 0.625), form: str = "h5") -> Compose:
    """Chain for whole volumes (key ``image``), invertible with ``Invertd`` back to the file's grid."""
    chain = _load(["image"], form, pixdim)
    chain.append(EnsureTyped(keys="image", dtype=torch.float32))
    return Compose(chain)


def la_label_loader(key: str = "label", form: str = "h5") -> Compose:
    """Load the label named by ``data[key]`` (a path) on its own grid, channel-first, values mapped to {0, 1}.

    Used in evaluation after the prediction is inverted to the original grid.
    """
    form = _form(form)
    return Compose(
        [
            LoadImageCheckedd(keys=key, reader=_reader("label", form), image_only=True),
            EnsureChannelFirstd(keys=key),
            BinarizeLabeld(keys=key, label_mapping=LA_LABEL_MAPPINGS[form], image_key=None),
        ]
    )
