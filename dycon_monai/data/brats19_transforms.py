"""MONAI transform chains for BraTS 2019 (NIfTI, one or several modalities stacked as channels), at load time.

Training chain (labeled; the unlabeled chain is the same without the ``label`` key)::

    LoadImaged -> CheckFinited -> EnsureChannelFirstd -> BraTSLabeld(target) -> Orientationd(RAS)
    -> Spacingd(pixdim) -> CropForegroundd(brain: any channel > 0) -> ClipBrainPercentilesd(0.5, 99.5)
    -> NormalizeIntensityd(nonzero, channel_wise) -> SpatialPadd(patch) -> RandSpatialCropd(patch)
    -> RandFlipd x3 -> RandRotate90d (axial plane) -> EnsureTyped(float32)

The release is skull-stripped with background exactly 0, so the brain is the set of voxels above 0 in any channel;
the crop removes the empty field of view (240 x 240 x 155 -> about 140 x 170 x 140). Intensities are clipped to the
0.5 / 99.5 percentiles of the brain voxels of each channel (scanner outliers), then z-scored over the brain voxels
(background stays 0). The random uniform crop, flips and rot90 are the augmentation of the UA-MT line of work the
DyCON paper follows ("random cropping, flipping, and rotation"). Evaluation loads the label separately, on the
file's own grid (:func:`brats_label_loader`), after the prediction is inverted (crop, orientation) back to it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    Spacingd,
    SpatialPadd,
)
from monai.transforms.utils import is_positive

from .brats19 import check_brats_label_values, resolve_target
from .checks import CheckFinited
from .transforms import BinarizeLabeld, LoadImageCheckedd, _as3, _describe

__all__ = [
    "BraTSLabeld",
    "ClipBrainPercentilesd",
    "brats_inference_transforms",
    "brats_label_loader",
    "brats_train_transforms",
]


class BraTSLabeld(BinarizeLabeld):
    """Check a BraTS label map (values {0, 1, 2, 4}, same grid as the image) and map it for ``target`` (float32).

    ``target``: ``"whole_tumor"`` ({1, 2, 4} -> 1), ``"tumor_core"`` ({1, 4} -> 1), ``"enhancing_tumor"``
    ({4} -> 1) or ``"subregions"`` (0 background, 1 NCR/NET, 2 edema, 3 enhancing tumour). Other label values raise
    :class:`~dycon_monai.data.isles22_layout.DataError` naming the case, key, file and the values found.
    """

    def __init__(
        self,
        keys: KeysCollection,
        target: str = "whole_tumor",
        image_key: str | None = "image",
        affine_tolerance: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, None, image_key, affine_tolerance, allow_missing_keys)
        self.target = target
        self.target_mapping = resolve_target(target)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_geometry(d, key)
            lab = d[key]
            t = torch.as_tensor(lab)
            check_brats_label_values(torch.unique(t).cpu().numpy(), _describe(d, key))
            out = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
            for value, mapped in self.target_mapping.items():
                if mapped:
                    out[t == value] = float(mapped)
            if isinstance(lab, MetaTensor):  # keep affine, file name and applied operations
                new = lab.clone().to(torch.float32)
                new.copy_(out)
                out = new
            d[key] = out
        return d


class ClipBrainPercentilesd(MapTransform):
    """Clip each channel's non-zero (brain) voxels to their ``lower`` / ``upper`` percentiles; zeros stay zero.

    Percentiles are computed over the brain only, so the empty background does not pull the lower bound to 0.
    """

    def __init__(
        self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= float(lower) < float(upper) <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100 percentiles; got {lower!r}, {upper!r}")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            for c in range(img.shape[0]):
                ch = img[c]
                brain = ch != 0
                if not bool(brain.any()):
                    continue
                vals = torch.as_tensor(ch[brain]).float()
                step = max(1, vals.numel() // 2_000_000)  # torch.quantile's input limit
                q = torch.quantile(vals[::step], torch.tensor([self.lower, self.upper]) / 100.0)
                lo, hi = float(q[0]), float(q[1])
                ch[brain] = torch.clamp(torch.as_tensor(ch[brain]), lo, hi).to(ch.dtype)
            d[key] = img
        return d


def _load(keys: list[str], target: str, pixdim: Sequence[float], clip: Sequence[float] | None) -> list:
    chain: list = [LoadImageCheckedd(keys=k, image_only=True) for k in keys]
    chain += [CheckFinited(keys=keys, warn_all_zero_keys="image"), EnsureChannelFirstd(keys=keys)]
    if "label" in keys:
        chain.append(BraTSLabeld(keys="label", target=target, image_key="image"))
    mode = ["bilinear" if k == "image" else "nearest" for k in keys]
    chain += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=_as3(pixdim, "pixdim"), mode=mode),
        CropForegroundd(keys=keys, source_key="image", select_fn=is_positive, margin=0, allow_smaller=True),
    ]
    if clip is not None:
        if len(tuple(clip)) != 2:
            raise ValueError(f"clip_percentiles must be [lower, upper] or null; got {clip!r}")
        chain.append(ClipBrainPercentilesd(keys="image", lower=clip[0], upper=clip[1]))
    chain.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    return chain


def brats_train_transforms(
    patch_size: Sequence[int] = (96, 96, 96),
    pixdim: Sequence[float] = (1.0, 1.0, 1.0),
    labeled: bool = True,
    target: str = "whole_tumor",
    clip_percentiles: Sequence[float] | None = (0.5, 99.5),
    augment: bool = True,
) -> Compose:
    """Training chain: keys ``image`` (+ ``label`` when ``labeled``); a ``label`` of an unlabeled entry is never read.

    Args:
        patch_size: training patch (voxels; the paper's 96 x 96 x 96); smaller brains are padded.
        pixdim: target voxel spacing in mm (the release is 1 mm isotropic).
        labeled: include the label.
        target: see :class:`BraTSLabeld`.
        clip_percentiles: ``[lower, upper]`` brain percentiles to clip to, or ``None``.
        augment: random flips on every axis and rot90 in the axial plane (square patches).
    """
    patch = tuple(int(p) for p in _as3(patch_size, "patch_size"))
    keys = ["image", "label"] if labeled else ["image"]
    chain = _load(keys, target, pixdim, clip_percentiles)
    chain += [SpatialPadd(keys=keys, spatial_size=patch), RandSpatialCropd(keys=keys, roi_size=patch)]
    if augment:
        chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
        if patch[0] == patch[1]:
            chain.append(RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return Compose(chain)


def brats_inference_transforms(
    pixdim: Sequence[float] = (1.0, 1.0, 1.0), clip_percentiles: Sequence[float] | None = (0.5, 99.5)
) -> Compose:
    """Chain for whole volumes (key ``image``), brain-cropped, invertible with ``Invertd`` back to the file's grid."""
    chain = _load(["image"], "whole_tumor", pixdim, clip_percentiles)
    chain.append(EnsureTyped(keys="image", dtype=torch.float32))
    return Compose(chain)


def brats_label_loader(key: str = "label", target: str = "whole_tumor") -> Compose:
    """Load the label named by ``data[key]`` (a path) on its own grid, channel-first, mapped for ``target``.

    Used in evaluation after the prediction is inverted to the original grid.
    """
    return Compose(
        [
            LoadImageCheckedd(keys=key, image_only=True),
            EnsureChannelFirstd(keys=key),
            BraTSLabeld(keys=key, target=target, image_key=None),
        ]
    )
