"""Anatomy of the synthetic cohort: MNI152 2009 tissue maps on the output grid and the per-case deformation.

The ``nilearn`` wheel carries the MNI152 2009c brain mask and grey-/white-matter probability maps as package data
(nothing is downloaded). :func:`_template` resamples them, with anti-aliasing, onto a RAS grid of the requested
spacing that covers the brain plus a margin, in MNI world coordinates; :func:`_deform` turns the template into one
"subject" with a small random affine plus a smooth B-spline displacement field. :func:`_smooth_field` is also the
source of the bias fields.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_MARGIN_MM = 10.0  # margin around the brain's bounding box in the output field of view


def _spacing3(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(spacing, (int, float)):
        sp = (float(spacing),) * 3
    else:
        sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and 0.5 <= s <= 12.0 for s in sp):
        raise ValueError(f"spacing must be one positive number or three, each in [0.5, 12] mm; got {spacing!r}")
    return sp  # type: ignore[return-value]


@dataclass
class _Template:
    """Tissue maps on the output grid for one spacing (before the per-case deformation)."""

    affine: np.ndarray
    maps: np.ndarray  # (4, X, Y, Z) float32: brain mask, GM, WM, scalp shell


@functools.lru_cache(maxsize=1)
def _mni_maps_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The nilearn MNI152 2009 brain mask, GM and WM maps at 1 mm, cropped to the brain + margin (cached).

    Returns:
        ``(affine, maps)`` with ``maps`` of shape (3, X, Y, Z) float32: brain mask, GM, WM.
    """
    from nilearn import datasets  # local import: nilearn is slow to import and only needed here

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    aff1 = np.asarray(mask_img.affine, dtype=np.float64)
    mask = np.asarray(mask_img.dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    idx = np.argwhere(mask > 0.5)
    pad = int(_MARGIN_MM) + 6
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    mask = mask[box]
    maps = np.stack([mask, np.clip(gm[box], 0.0, 1.0) * mask, np.clip(wm[box], 0.0, 1.0) * mask])
    aff = aff1.copy()
    aff[:3, 3] = aff1[:3, :3] @ lo + aff1[:3, 3]
    return aff, maps


@functools.lru_cache(maxsize=4)
def _template(spacing: tuple[float, float, float]) -> _Template:
    """Resample the MNI152 maps onto a RAS grid of ``spacing`` mm covering the brain + margin (cached)."""
    aff1, maps1 = _mni_maps_1mm()
    idx = np.argwhere(maps1[0] > 0.5)
    lo_w = aff1[:3, :3] @ idx.min(0) + aff1[:3, 3] - _MARGIN_MM
    hi_w = aff1[:3, :3] @ idx.max(0) + aff1[:3, 3] + _MARGIN_MM
    sp = np.asarray(spacing)
    shape = np.ceil((hi_w - lo_w) / sp).astype(int) + 1
    affine = np.eye(4)
    affine[:3, :3] = np.diag(sp)
    affine[:3, 3] = lo_w
    to_t = np.linalg.inv(aff1) @ affine  # output voxel -> template voxel (both axis-aligned)
    coords = [to_t[a, a] * np.arange(shape[a], dtype=np.float32) + to_t[a, 3] for a in range(3)]
    cx, cy, cz = np.meshgrid(*coords, indexing="ij")
    sigma = [max(0.0, (s - 1.0) * 0.42) for s in sp]  # anti-aliasing, FWHM ~ spacing
    out = []
    for vol in maps1:
        if any(s > 0 for s in sigma):
            vol = ndimage.gaussian_filter(vol, sigma, truncate=3.0)
        out.append(ndimage.map_coordinates(vol, [cx, cy, cz], order=1, mode="constant", cval=0.0))
    # a faint scalp/skull shell 3-9 mm outside the brain, so the images do not look skull-stripped
    dist = ndimage.distance_transform_edt(out[0] < 0.5, sampling=sp)
    out.append(((dist > 3.0) & (dist < 9.0)).astype(np.float32))
    return _Template(affine=affine, maps=np.stack(out).astype(np.float32))


def _bspline_basis(n: int, nodes: int) -> np.ndarray:
    """(n, nodes) cubic B-spline weights: node ``a`` sits at ``a * (n - 1) / (nodes - 1)``, rows sum to ~1."""
    t = np.linspace(0.0, nodes - 1.0, n)[:, None] - np.arange(nodes)[None, :]
    a = np.abs(t)
    w = np.where(a < 1.0, 2.0 / 3.0 - a**2 + 0.5 * a**3, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], nodes: int, amplitude: float) -> np.ndarray:
    """Random smooth field: Gaussian coefficients on a ``nodes^3`` control grid, cubic B-spline interpolated.

    Evaluated separably (three small matrix products), which is far cheaper than ``ndimage.zoom``.
    """
    coarse = rng.normal(0.0, amplitude, size=(nodes, nodes, nodes)).astype(np.float32)
    wx, wy, wz = (_bspline_basis(int(n), nodes) for n in shape)
    out = np.tensordot(wx, coarse, axes=(1, 0))  # (X, ny, nz)
    out = np.tensordot(out, wy, axes=(1, 1))  # (X, nz, Y)
    out = np.tensordot(out, wz, axes=(1, 1))  # (X, Y, Z)
    return np.ascontiguousarray(out, dtype=np.float32)


def _deform(tmpl: _Template, rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """Apply a random small affine + smooth displacement (both in mm) to the template maps."""
    shape = tmpl.maps.shape[1:]
    sp = np.asarray(spacing)
    center = (np.asarray(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-6.0, 6.0, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    lin = rot @ np.diag(rng.uniform(0.92, 1.08, size=3))
    shift_mm = rng.uniform(-4.0, 4.0, size=3)
    # in voxel units: x_src = S^-1 L S (x - c) + c + t/sp + disp/sp
    lin_v = np.diag(1.0 / sp) @ lin @ np.diag(sp)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - center[:, None].astype(np.float32)
    src = (lin_v.astype(np.float32) @ grid).reshape(3, *shape)
    for a in range(3):
        disp = _smooth_field(rng, shape, nodes=6, amplitude=6.0)  # coefficients in mm; field std ~2 mm
        src[a] += center[a] + shift_mm[a] / sp[a] + disp / sp[a]
    return np.stack([ndimage.map_coordinates(m, src, order=1, mode="constant", cval=0.0) for m in tmpl.maps])
