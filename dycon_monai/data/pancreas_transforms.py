"""MONAI transform chains for Pancreas-CT (a DICOM series per case, NIfTI labels), at load time.

Training chain (labeled; the unlabeled chain is the same without the ``label`` key)::

    CheckDicomSeriesd -> LoadImaged(ITKReader: the series folder; label: NIfTI) -> CheckFinited
    -> EnsureChannelFirstd -> Orientationd(RAS) -> PancreasLabeld (same grid, values {0, 1})
    -> Spacingd(pixdim) -> CropForegroundd(body: HU > -500) -> ScaleIntensityRanged(-120..240 HU -> 0..1, clip)
    -> [labeled: RandCropByPosNegLabeld | CropForegroundd(label, margin 25) + RandSpatialCropd]
    -> [unlabeled: RandSpatialCropd] -> RandFlipd x3 -> RandRotate90d (axial) -> EnsureTyped(float32)

The HU window (-120 to 240, soft tissue) is seed 003's. Neither paper states a voxel spacing; the bundle resamples
to 1 mm isotropic (``pixdim``). The body crop is label-free (air outside the body is below -500 HU), so it is used
everywhere, test time included. Two ways to place labeled training patches (``labeled_crop``):

* ``"pos_neg"`` (default): MONAI's ``RandCropByPosNegLabeld``, half the patches centred on a pancreas voxel;
* ``"label_margin"``: crop to the pancreas bounding box plus 25 voxels, then a random patch: the published
  pipelines' preprocessing (they store every case, test cases included, cropped this way). It uses the ground
  truth, so it is offered for labeled training patches only; test cases are never cropped to their label.

Unlabeled patches are drawn uniformly from the body crop (an unlabeled case has no label to crop to). Inference
and evaluation segment the whole body crop with a sliding window and invert it to the series' own grid; the
label is then reoriented onto that grid (:class:`ReorientToMatchd`) and checked against it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Orientation,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from .checks import CheckFinited
from .dicom import CheckDicomSeriesd
from .transforms import BinarizeLabeld, LoadImageCheckedd, _as3, _describe

__all__ = [
    "HU_WINDOW",
    "LABELED_CROPS",
    "PancreasLabeld",
    "ReorientToMatchd",
    "is_body",
    "pancreas_inference_transforms",
    "pancreas_label_loader",
    "pancreas_train_transforms",
]

#: soft-tissue window of seed 003 (HU), mapped to [0, 1]
HU_WINDOW = (-120.0, 240.0)
#: ways to place labeled training patches
LABELED_CROPS = ("pos_neg", "label_margin")
_BODY_HU = -500.0
_LABEL_MARGIN = 25


def is_body(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Foreground for ``CropForegroundd``: voxels above -500 HU (the body; air is about -1000 HU)."""
    return x > _BODY_HU


class PancreasLabeld(BinarizeLabeld):
    """Check a pancreas label: values {0, 1}, the image's grid (shape and affine within ``affine_tolerance`` mm).

    Values outside {0, 1} raise ``ValueError`` naming the case, key, file and the values found.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str | None = "image",
        affine_tolerance: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, None, image_key, affine_tolerance, allow_missing_keys)


class ReorientToMatchd(MapTransform):
    """Reorient ``keys`` (axis order and flips only, no resampling) to the orientation of ``ref_key``'s affine.

    A label file may store its voxels in another axis order than the series (a NIfTI written from another tool);
    this puts it on the reference's voxel order so that shapes and affines can be compared voxel by voxel.
    """

    def __init__(self, keys: KeysCollection, ref_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        affine = getattr(ref, "affine", None)
        if affine is None:
            raise ValueError(f"{_describe(d, self.ref_key)} carries no affine to reorient {list(self.keys)} to")
        codes = "".join(nib.orientations.aff2axcodes(np.asarray(affine)))
        for key in self.key_iterator(d):
            d[key] = Orientation(axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(d[key])
        return d


def _load(keys: list[str], pixdim: Sequence[float], window: Sequence[float]) -> list:
    if len(tuple(window)) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"hu_window must be [lower, upper] with lower < upper; got {window!r}")
    chain: list = [
        CheckDicomSeriesd(keys="image"),
        LoadImageCheckedd(keys="image", reader="ITKReader", image_only=True),
    ]
    if "label" in keys:
        chain.append(LoadImageCheckedd(keys="label", image_only=True))
    chain += [
        CheckFinited(keys=keys, warn_all_zero_keys="image"),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if "label" in keys:
        chain.append(PancreasLabeld(keys="label", image_key="image"))
    mode = ["bilinear" if k == "image" else "nearest" for k in keys]
    chain += [
        Spacingd(keys=keys, pixdim=_as3(pixdim, "pixdim"), mode=mode),
        CropForegroundd(keys=keys, source_key="image", select_fn=is_body, margin=0, allow_smaller=True),
        ScaleIntensityRanged(
            keys="image", a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0, clip=True
        ),
    ]
    return chain


def pancreas_train_transforms(
    patch_size: Sequence[int] = (96, 96, 96),
    pixdim: Sequence[float] = (1.0, 1.0, 1.0),
    labeled: bool = True,
    labeled_crop: str = "pos_neg",
    hu_window: Sequence[float] = HU_WINDOW,
    augment: bool = True,
) -> Compose:
    """Training chain: keys ``image`` (+ ``label`` when ``labeled``); a ``label`` of an unlabeled entry is never read.

    Args:
        patch_size: training patch (voxels; the papers' 96 x 96 x 96); smaller crops are padded.
        pixdim: target voxel spacing in mm.
        labeled: include the label.
        labeled_crop: see :data:`LABELED_CROPS` and the module docstring.
        hu_window: ``[lower, upper]`` HU clipped and mapped to [0, 1].
        augment: random flips on every axis and rot90 in the axial plane (square patches).
    """
    if labeled_crop not in LABELED_CROPS:
        raise ValueError(f"labeled_crop must be one of {LABELED_CROPS}; got {labeled_crop!r}")
    patch = tuple(int(p) for p in _as3(patch_size, "patch_size"))
    keys = ["image", "label"] if labeled else ["image"]
    chain = _load(keys, pixdim, hu_window)
    if labeled and labeled_crop == "label_margin":
        chain.append(CropForegroundd(keys=keys, source_key="label", margin=_LABEL_MARGIN, allow_smaller=True))
    chain.append(SpatialPadd(keys=keys, spatial_size=patch))
    if labeled and labeled_crop == "pos_neg":
        chain.append(
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch, pos=1.0, neg=1.0, num_samples=1, allow_smaller=True
            )
        )
    else:
        chain.append(RandSpatialCropd(keys=keys, roi_size=patch))
    if augment:
        chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
        if patch[0] == patch[1]:
            chain.append(RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return Compose(chain)


def pancreas_inference_transforms(
    pixdim: Sequence[float] = (1.0, 1.0, 1.0), hu_window: Sequence[float] = HU_WINDOW
) -> Compose:
    """Chain for whole series (key ``image``), body-cropped, invertible with ``Invertd`` back to the series' grid."""
    chain = _load(["image"], pixdim, hu_window)
    chain.append(EnsureTyped(keys="image", dtype=torch.float32))
    return Compose(chain)


def pancreas_label_loader(key: str = "label", ref_key: str = "pred") -> Compose:
    """Load the label named by ``data[key]`` (a path), reorient it onto ``data[ref_key]``'s grid and check it there.

    Used in evaluation after the prediction is inverted to the series' own grid.
    """
    return Compose(
        [
            LoadImageCheckedd(keys=key, image_only=True),
            EnsureChannelFirstd(keys=key),
            ReorientToMatchd(keys=key, ref_key=ref_key),
            PancreasLabeld(keys=key, image_key=ref_key),
        ]
    )
