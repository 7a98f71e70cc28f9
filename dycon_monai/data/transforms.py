"""MONAI transform chains for DyCON on ISLES'22-like data (usable as ``_target_`` in bundle configs).

Every chain reads NIfTI with MONAI's ``LoadImaged`` (nibabel; ITK for other formats), makes data channel-first,
reorients to RAS and resamples to ``pixdim``. A list of image paths (several modalities) is stacked as channels.
Images come out float32 channel-first; labels float32 with values {0, 1} (see :class:`BinarizeLabeld` for
label sets other than {0, 1}).

Order of the training chains (labeled; the unlabeled chain is the same without any ``label`` key)::

    LoadImaged -> EnsureChannelFirstd -> BinarizeLabeld -> Orientationd(RAS) -> Spacingd(pixdim)
    -> CropForegroundd(head of the first channel) -> NormalizeIntensityd(nonzero, channel_wise)
    -> SpatialPadd(patch) -> RandCropByPosNegLabeld (labeled) | RandSpatialCrop(Samples)d (unlabeled)
    -> RandFlipd x3 -> RandRotate90d (axial plane, when the patch is square in it) -> RandAffined (small)
    -> EnsureTyped(float32)

The foreground crop runs before the intensity normalisation: it selects the head on the raw first channel
(voxels above 5 % of its 99th percentile, so scanner noise in the background does not defeat it), while the
normalised image has negative values everywhere below the mean.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
    Spacingd,
    SpatialPadd,
)

from .isles22_files import LabelMapping, check_label_values, resolve_label_mapping

__all__ = [
    "BinarizeLabeld",
    "FillBackgroundd",
    "LoadImageCheckedd",
    "head_foreground",
    "inference_transforms",
    "labeled_train_transforms",
    "unlabeled_train_transforms",
    "validation_transforms",
]


def _as3(v: Sequence[float] | float, name: str) -> tuple:
    if isinstance(v, (int, float)):
        return (v, v, v)
    v = tuple(v)
    if len(v) != 3:
        raise ValueError(f"{name} must have 3 values (one per spatial axis); got {v!r}")
    return v


def _describe(data: Mapping[Hashable, Any], key: Hashable) -> str:
    value = data.get(key)
    fname = getattr(value, "meta", {}).get("filename_or_obj", value) if value is not None else None
    cid = data.get("case_id")
    return (f"case {cid} " if cid else "") + f"'{key}' ({fname})"


def head_foreground(img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Foreground for ``CropForegroundd``: voxels above 5 % of the image's 99th percentile.

    Robust to Rician / scanner noise in the background, which makes a plain ``> 0`` select the whole field of
    view. Picklable (module-level), so it works with multi-process data loaders and bundle configs.
    """
    x = torch.as_tensor(img)
    flat = x.reshape(-1).float()
    step = max(1, flat.numel() // 1_000_000)
    q = torch.quantile(flat[::step], 0.99)
    out = x > 0.05 * q
    return out.numpy() if isinstance(img, np.ndarray) else out


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` whose errors name the case, key and file(s) (e.g. for an unreadable or truncated NIfTI)."""

    def __call__(self, data, reader=None):  # type: ignore[override]
        try:
            return super().__call__(data, reader)
        except Exception as e:
            keys = [k for k in self.keys if k in data]
            what = ", ".join(f"{k}={data[k]}" for k in keys)
            cid = data.get("case_id") if isinstance(data, Mapping) else None
            raise RuntimeError(
                f"could not read {'case ' + str(cid) + ' ' if cid else ''}{what}: {type(e).__name__}: {e} "
                "(unreadable or truncated NIfTI? copy the file again)"
            ) from e


class BinarizeLabeld(MapTransform):
    """Check a label against its image and map its values to {0, 1} (float32).

    Args:
        keys: label key(s).
        label_mapping: ``None`` (values must already be {0, 1}), a name from
            :data:`dycon_monai.data.LABEL_MAPPINGS` (``"brats_whole_tumor"``: {1, 2, 4} -> 1,
            ``"nonzero"``: any non-zero -> 1, ...) or a dict ``{value: 0 or 1}``. Values outside the allowed set
            raise a ``ValueError`` naming the case, key and file.
        image_key: when present in the data, the label's spatial shape must equal the image's and their affines
            must agree within ``affine_tolerance`` (else ``ValueError`` with both shapes / affines).
        affine_tolerance: largest absolute difference allowed between the two affines.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_mapping: LabelMapping = None,
        image_key: str | None = "image",
        affine_tolerance: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapping = resolve_label_mapping(label_mapping)
        self.image_key = image_key
        self.affine_tolerance = float(affine_tolerance)

    def _check_geometry(self, d: Mapping[Hashable, Any], key: Hashable) -> None:
        if self.image_key is None or self.image_key not in d:
            return
        img, lab = d[self.image_key], d[key]
        if tuple(img.shape[1:]) != tuple(lab.shape[1:]):
            raise ValueError(
                f"{_describe(d, key)} has spatial shape {tuple(lab.shape[1:])} but {_describe(d, self.image_key)} "
                f"has {tuple(img.shape[1:])}; expected the same grid"
            )
        a_img, a_lab = getattr(img, "affine", None), getattr(lab, "affine", None)
        if a_img is not None and a_lab is not None:
            diff = float(
                torch.max(
                    torch.abs(torch.as_tensor(a_img, dtype=torch.float64) - torch.as_tensor(a_lab, dtype=torch.float64))
                )
            )
            if diff > self.affine_tolerance:
                raise ValueError(
                    f"{_describe(d, key)} affine differs from {_describe(d, self.image_key)} by {diff:.4g} "
                    f"(> tolerance {self.affine_tolerance}):\nlabel\n{np.round(np.asarray(a_lab), 4)}\nimage\n"
                    f"{np.round(np.asarray(a_img), 4)}"
                )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_geometry(d, key)
            lab = d[key]
            values = torch.unique(torch.as_tensor(lab)).cpu().numpy()
            check_label_values(values, self.mapping, _describe(d, key))
            t = torch.as_tensor(lab)
            if self.mapping is None:
                out = t > 0
            elif len(self.mapping) == 0:
                out = t != 0
            else:
                fg = torch.as_tensor([k for k, v in self.mapping.items() if v == 1], dtype=t.dtype)
                out = torch.isin(t, fg)
            out = out.to(torch.float32)
            if isinstance(lab, MetaTensor):  # keep affine, file name and applied operations
                new = lab.clone().to(torch.float32)
                new.copy_(out)
                out = new
            d[key] = out
        return d


class FillBackgroundd(MapTransform):
    """Give the background channel the probability mass missing outside the foreground crop after ``Invertd``.

    Inverting ``CropForegroundd`` pads the soft-maxed prediction with zeros in every channel; this adds
    ``1 - sum over channels`` (clamped to [0, 1]) to ``background_channel`` so that the map is a distribution
    again (background, zero entropy) before the entropy map and the argmax.
    """

    def __init__(self, keys: KeysCollection, background_channel: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.background_channel = int(background_channel)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            p = d[key]
            missing = torch.clamp(1.0 - p.sum(dim=0), 0.0, 1.0)
            p[self.background_channel] = p[self.background_channel] + missing
            d[key] = p
        return d


def _load(keys: list[str], label_mapping: LabelMapping, pixdim: Sequence[float], reader: Any = None) -> list:
    from .checks import CheckFinited

    has_label = "label" in keys
    mode = ["bilinear" if k == "image" else "nearest" for k in keys]
    chain: list = [
        LoadImageCheckedd(keys=keys, reader=reader, image_only=True),
        CheckFinited(keys=keys, warn_all_zero_keys="image"),  # NaN / Inf: error naming key and file
        EnsureChannelFirstd(keys=keys),
    ]
    if has_label:
        chain.append(BinarizeLabeld(keys="label", label_mapping=label_mapping, image_key="image"))
    chain += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=_as3(pixdim, "pixdim"), mode=mode),
    ]
    return chain


def _augment(keys: list[str], patch_size: Sequence[int]) -> list:
    mode = ["bilinear" if k == "image" else "nearest" for k in keys]
    chain: list = [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
    if patch_size[0] == patch_size[1]:  # rot90 in the axial plane keeps a square patch's shape
        chain.append(RandRotate90d(keys=keys, prob=0.25, max_k=3, spatial_axes=(0, 1)))
    chain.append(
        RandAffined(
            keys=keys,
            prob=0.2,
            rotate_range=(0.15, 0.15, 0.15),
            scale_range=(0.1, 0.1, 0.1),
            mode=mode,
            padding_mode="zeros",
            spatial_size=tuple(patch_size),
        )
    )
    return chain


def _ensure(keys: list[str]) -> EnsureTyped:
    return EnsureTyped(keys=keys, dtype=torch.float32)


def _crop_normalize_pad(keys: list[str], patch: tuple[int, ...]) -> list:
    """Training preprocessing after loading: crop to the head, normalise inside it, pad to at least the patch."""
    return [
        CropForegroundd(
            keys=keys, source_key="image", select_fn=head_foreground, channel_indices=0, margin=2, allow_smaller=True
        ),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        SpatialPadd(keys=keys, spatial_size=patch),
    ]


def _train_chain(
    keys: list[str],
    label_mapping: LabelMapping,
    pixdim: Sequence[float],
    reader: Any,
    patch: tuple[int, ...],
    sampler: list,
    augment: bool,
) -> Compose:
    """The training chain of both streams: load, crop / normalise / pad, ``sampler``, augmentation, tensors."""
    chain = _load(keys, label_mapping, pixdim, reader) + _crop_normalize_pad(keys, patch) + sampler
    if augment:
        chain += _augment(keys, patch)
    chain.append(_ensure(keys))
    return Compose(chain)


def labeled_train_transforms(
    patch_size: Sequence[int] = (96, 96, 64),
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    num_samples: int = 1,
    label_mapping: LabelMapping = None,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool = True,
    reader: Any = None,
) -> Compose:
    """Chain for labeled training cases (keys ``image``, ``label``): preprocessing, pos/neg patch sampling, augmentation.

    Args:
        patch_size: training patch (voxels); images smaller than it are padded, not rejected.
        pixdim: target voxel spacing (mm).
        num_samples: patches per case (``RandCropByPosNegLabeld``; >1 returns a list, collate with MONAI's
            ``list_data_collate``).
        label_mapping: see :class:`BinarizeLabeld`.
        pos: weight of lesion-centred patches; ``neg``: of background-centred ones (lesion-free cases give
            background patches only).
        augment: random flips, rot90 and a small affine (off for deterministic tests).
        reader: MONAI image reader (default: chosen by file extension, nibabel for NIfTI).
    """
    patch = tuple(int(p) for p in _as3(patch_size, "patch_size"))
    keys = ["image", "label"]
    sampler = RandCropByPosNegLabeld(
        keys=keys,
        label_key="label",
        spatial_size=patch,
        pos=pos,
        neg=neg,
        num_samples=int(num_samples),
        image_key="image",
        image_threshold=-np.inf,
    )
    return _train_chain(keys, label_mapping, pixdim, reader, patch, [sampler], augment)


def unlabeled_train_transforms(
    patch_size: Sequence[int] = (96, 96, 64),
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    num_samples: int = 1,
    augment: bool = True,
    reader: Any = None,
) -> Compose:
    """Chain for unlabeled training cases: key ``image`` only (a ``label`` key, if present, is never read).

    Same preprocessing and augmentation as :func:`labeled_train_transforms`, with a uniformly random patch
    (``RandSpatialCropd``, or ``RandSpatialCropSamplesd`` when ``num_samples > 1``).
    """
    patch = tuple(int(p) for p in _as3(patch_size, "patch_size"))
    keys = ["image"]
    if int(num_samples) > 1:
        sampler = RandSpatialCropSamplesd(keys=keys, roi_size=patch, num_samples=int(num_samples), random_size=False)
    else:
        sampler = RandSpatialCropd(keys=keys, roi_size=patch, random_size=False)
    return _train_chain(keys, None, pixdim, reader, patch, [sampler], augment)


def validation_transforms(
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    label_mapping: LabelMapping = None,
    crop_foreground: bool = False,
    reader: Any = None,
) -> Compose:
    """Chain for validation / test cases (``image`` + ``label``), whole volumes for sliding-window inference.

    Args:
        pixdim: target voxel spacing (mm).
        label_mapping: see :class:`BinarizeLabeld`.
        crop_foreground: also crop to the head (faster inference; metrics then cover the crop only).
        reader: MONAI image reader.
    """
    keys = ["image", "label"]
    chain = _load(keys, label_mapping, pixdim, reader)
    if crop_foreground:
        chain.append(
            CropForegroundd(
                keys=keys,
                source_key="image",
                select_fn=head_foreground,
                channel_indices=0,
                margin=2,
                allow_smaller=True,
            )
        )
    chain += [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True), _ensure(keys)]
    return Compose(chain)


def inference_transforms(pixdim: Sequence[float] = (2.0, 2.0, 2.0), reader: Any = None) -> Compose:
    """Chain for new images (``image`` only): invertible (``Invertd``) back to the input's original geometry."""
    keys = ["image"]
    chain = _load(keys, None, pixdim, reader)
    chain += [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True), _ensure(keys)]
    return Compose(chain)
