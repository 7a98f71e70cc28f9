"""Synthetic ISLES'22-like stroke cohort built from the MNI152 2009 template shipped with nilearn.

Every case is made from the MNI152 2009c T1 template and its grey-/white-matter probability maps, which the
``nilearn`` wheel carries as package data (nothing is downloaded):

1. the tissue maps are resampled onto the requested voxel spacing (with anti-aliasing) on a grid that covers
   the brain plus a margin, in MNI world coordinates (so the affine is correct and RAS);
2. a random smooth deformation (small affine + B-spline-like displacement field, a few mm) makes each case a
   different "subject";
3. DWI-like contrast (trace b=1000 look) from the tissue maps: CSF dark, white matter mid-grey, grey matter a
   little brighter, plus a faint scalp shell; an ADC map with the opposite contrast (CSF bright);
4. scattered ischaemic lesions inside the brain tissue, bright in DWI and dark in ADC, whose total volume and
   number of connected components are drawn jointly from the published ISLES'22 per-case facts
   (``splits/isles22_fold0.json``, ``metrics``) and rescaled by the voxel-volume ratio;
5. a smooth multiplicative bias field and Rician noise on DWI, Gaussian noise on ADC.

The cohort is written in the released ISLES'22 layout so that :func:`dycon_monai.data.isles22_datalist` reads it
exactly like the real data::

    rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz   float32
    rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_adc.nii.gz   float32
    derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz   uint8 {0, 1}

Everything is a deterministic function of ``(seed, case index, spacing)``.

Command line::

    python -m dycon_monai.data.synthetic --out DIR --cases 40 --seed 0 [--spacing 2.0] [--preview preview.png]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from dycon_monai.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "REFERENCE_VOXEL_VOLUME_MM3",
    "SyntheticCase",
    "cohort_lesion_statistics",
    "default_lesion_free_count",
    "lesion_statistics",
    "make_synthetic_cohort",
    "reference_lesion_facts",
    "save_preview",
    "synthesize_case",
]

#: Voxel volume (mm^3) at which the published ISLES'22 per-case lesion volumes are counted. The ISLES'22 DWI
#: scans are close to 2 mm isotropic; we take 2 x 2 x 2 mm = 8 mm^3 (an assumption, documented in docs/data.md).
REFERENCE_VOXEL_VOLUME_MM3 = 8.0

_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
_MARGIN_MM = 10.0  # margin around the brain's bounding box in the output field of view
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as in the evaluation module


def case_id(index: int) -> str:
    """ISLES'22 case id for a 1-based index, e.g. ``sub-strokecase0007``."""
    return f"sub-strokecase{index:04d}"


@functools.lru_cache(maxsize=1)
def reference_lesion_facts() -> tuple[np.ndarray, np.ndarray]:
    """Published ISLES'22 per-case lesion facts.

    Returns:
        ``(volume, num_components)``: two int arrays of length 250, lesion volume in voxels (at
        :data:`REFERENCE_VOXEL_VOLUME_MM3`) and number of connected lesions per case.
    """
    path = _SPLITS_DIR / "isles22_fold0.json"
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    vol = np.array([int(r["volume"]) for r in metrics], dtype=np.int64)
    comp = np.array([int(r["num_components"]) for r in metrics], dtype=np.int64)
    return vol, comp


def default_lesion_free_count(cases: int) -> int:
    """Number of lesion-free cases in a cohort of ``cases`` when not given explicitly.

    ISLES'22 has 3 lesion-free cases out of 250 (1.2 %). Cohorts of at least 10 cases get
    ``max(1, round(0.012 * cases))`` lesion-free cases, so that this edge case is always exercised; smaller
    cohorts get none.
    """
    if cases < 10:
        return 0
    return max(1, int(round(0.012 * cases)))


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


def _component_sizes(rng: np.random.Generator, volume: float, count: int) -> list[int]:
    """Split a total lesion volume (voxels) into ``count`` components with a heavy-tailed size distribution."""
    if count <= 0:
        return []
    frac = rng.dirichlet(np.full(count, 0.5))
    return [max(1, int(round(f * volume))) for f in frac]


def _grow_lesion(
    rng: np.random.Generator,
    center: np.ndarray,
    size: int,
    allowed: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Grow one irregular, connected blob of about ``size`` voxels around ``center`` inside ``allowed``."""
    shape = np.asarray(allowed.shape)
    radius = int(math.ceil(1.7 * (3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0))) + 2
    lo = np.maximum(center - radius, 0)
    hi = np.minimum(center + radius + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    ok = allowed[box]
    if not ok.any():
        return None
    pts = np.indices(ok.shape, dtype=np.float32) - (center - lo)[:, None, None, None].astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = rng.uniform(0.6, 1.6, size=3)
    rel = np.tensordot(q.T.astype(np.float32), pts, axes=1) / axes[:, None, None, None].astype(np.float32)
    score = np.sqrt((rel**2).sum(0))
    score /= max(radius, 1)
    if size > 3:
        noise = ndimage.gaussian_filter(rng.normal(size=ok.shape).astype(np.float32), 1.5)
        score += 0.6 * noise / (noise.std() + 1e-6) * 0.25
    score[~ok] = np.inf
    flat = score.ravel()
    n = min(size, int(np.isfinite(flat).sum()))
    if n == 0:
        return None
    pick = np.argpartition(flat, n - 1)[:n] if n < flat.size else np.arange(flat.size)
    blob = np.zeros(ok.shape, dtype=bool)
    blob.ravel()[pick] = True
    lab, nlab = ndimage.label(blob, structure=_CONNECTIVITY)
    if nlab > 1:
        c_local = tuple(int(v) for v in (center - lo))
        keep = lab[c_local] if lab[c_local] > 0 else int(np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        blob = lab == keep
    return box, blob


def _place_lesions(
    rng: np.random.Generator, tissue: np.ndarray, sizes: Sequence[int], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Place separate connected lesions of the given sizes inside ``tissue``; returns a bool mask."""
    label = np.zeros(tissue.shape, dtype=bool)
    forbidden = np.zeros(tissue.shape, dtype=bool)  # lesions dilated by one voxel: keeps components apart
    candidates = np.argwhere(tissue)
    if len(candidates) == 0 or not sizes:
        return label
    cluster = candidates[rng.integers(len(candidates))]
    cluster_sigma = 20.0 / np.asarray(spacing)  # scattered lesions cluster in one territory (~2 cm)
    shape = np.asarray(tissue.shape)
    for size in sorted(sizes, reverse=True):
        center = None
        for attempt in range(30):
            if attempt < 20 and rng.random() < 0.8:
                c = np.round(cluster + rng.normal(size=3) * cluster_sigma).astype(int)
                c = np.clip(c, 0, shape - 1)
            else:
                c = candidates[rng.integers(len(candidates))]
            if tissue[tuple(c)] and not forbidden[tuple(c)]:
                center = c
                break
        if center is None:
            continue
        grown = _grow_lesion(rng, center, size, tissue & ~forbidden)
        if grown is None:
            continue
        box, blob = grown
        label[box] |= blob
        # dilate into a box one voxel larger
        lo = [max(s.start - 1, 0) for s in box]
        hi = [min(s.stop + 1, n) for s, n in zip(box, tissue.shape)]
        big = tuple(slice(a, b) for a, b in zip(lo, hi))
        forbidden[big] |= ndimage.binary_dilation(label[big], structure=_CONNECTIVITY)
    return label


@dataclass
class SyntheticCase:
    """One synthetic case in memory.

    Attributes:
        case_id: ``sub-strokecaseXXXX``.
        dwi: DWI-like image, float32 ``(X, Y, Z)``.
        adc: ADC-like map (1e-6 mm^2/s), float32 ``(X, Y, Z)``.
        label: lesion mask, uint8 ``(X, Y, Z)`` with values {0, 1}.
        affine: 4x4 voxel-to-world (RAS, mm) matrix shared by the three arrays.
        target_volume: lesion volume drawn for the case, in voxels of this spacing.
        target_components: number of lesions drawn for the case.
        brain: brain mask (bool) after the case's deformation; lesions lie inside it.
    """

    case_id: str
    dwi: np.ndarray
    adc: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    target_volume: float = 0.0
    target_components: int = 0
    brain: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _cohort_plan(cases: int, seed: int, lesion_free: int | None) -> list[tuple[int, int]]:
    """Per case (1-based index order): the (reference volume, components) pair to aim for."""
    vol, comp = reference_lesion_facts()
    nonempty = np.flatnonzero(vol > 0)
    rng = np.random.default_rng([seed, 7919])
    n_free = default_lesion_free_count(cases) if lesion_free is None else int(lesion_free)
    if not 0 <= n_free <= cases:
        raise ValueError(f"lesion_free must be between 0 and cases={cases}; got {lesion_free!r}")
    free = set(rng.choice(cases, size=n_free, replace=False).tolist()) if n_free else set()
    # stratified draw from the published non-empty cases: sort them by volume, cut the list into as many
    # equal strata as there are lesion cases and take one random case per stratum, so even a small cohort spans
    # the whole volume range while (volume, components) stay a real joint pair. Of 64 such draws, keep the one
    # whose volume and component quantiles and single-lesion fraction are closest to the published ones.
    n_les = cases - n_free
    order = nonempty[np.argsort(vol[nonempty], kind="stable")]
    edges = np.linspace(0, len(order), n_les + 1)
    ref = _plan_summary(vol[nonempty], comp[nonempty])
    best, best_score = [], np.inf
    for _ in range(64 if n_les else 0):
        draw = np.array(
            [order[rng.integers(int(edges[k]), max(int(edges[k]) + 1, int(edges[k + 1])))] for k in range(n_les)]
        )
        score = float(np.abs(np.log1p(_plan_summary(vol[draw], comp[draw])) - np.log1p(ref)).sum())
        if score < best_score:
            best, best_score = draw, score
    picks = [best[k] for k in rng.permutation(n_les)] if n_les else []
    plan = []
    k = 0
    for i in range(cases):
        if i in free:
            plan.append((0, 0))
        else:
            j = picks[k]
            k += 1
            plan.append((int(vol[j]), int(comp[j])))
    return plan


def _plan_summary(vol: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Volume 10/50/90th percentiles, components 50/90th percentiles and 10 x single-lesion fraction."""
    return np.concatenate(
        [np.percentile(vol, [10, 50, 90]), np.percentile(comp, [50, 90]), [10.0 * float(np.mean(comp == 1))]]
    )


def synthesize_case(
    index: int,
    seed: int = 0,
    spacing: float | Sequence[float] = 2.0,
    reference_volume: int | None = None,
    components: int | None = None,
) -> SyntheticCase:
    """Make one synthetic case in memory.

    Args:
        index: 1-based case index (gives the case id and, with ``seed``, the random stream).
        seed: cohort seed.
        spacing: voxel spacing in mm (one number or three).
        reference_volume: total lesion volume in ISLES'22 reference voxels (8 mm^3); 0 makes a lesion-free case.
            ``None`` draws one jointly with ``components`` from the published per-case facts.
        components: number of separate lesions; ``None`` draws it (see above).

    Returns:
        The case's arrays and affine.
    """
    sp = _spacing3(spacing)
    if reference_volume is None or components is None:
        vol, comp = reference_lesion_facts()
        pick = np.random.default_rng([seed, index, 1]).choice(np.flatnonzero(vol > 0))
        reference_volume = int(vol[pick]) if reference_volume is None else reference_volume
        components = int(comp[pick]) if components is None else components
    rng = np.random.default_rng([seed, index])
    tmpl = _template(sp)
    brain, gm, wm, scalp = _deform(tmpl, rng, sp)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    tissue = ((gm + wm) > 0.5) & (brain > 0.5)

    voxel_volume = float(np.prod(sp))
    target_volume = reference_volume * REFERENCE_VOXEL_VOLUME_MM3 / voxel_volume
    n_comp = int(components) if reference_volume > 0 else 0
    sizes = _component_sizes(rng, target_volume, n_comp)
    label = _place_lesions(rng, tissue, sizes, sp)

    # DWI-like contrast (relative units; GM ~ 1)
    jitter = rng.uniform(0.9, 1.1, size=3)
    dwi = 0.28 * jitter[0] * csf + 1.0 * gm + 0.78 * jitter[1] * wm + 0.18 * jitter[2] * scalp
    adc = 3000.0 * csf + 850.0 * gm + 720.0 * wm + 700.0 * scalp
    if label.any():
        lab_i, n_lab = ndimage.label(label, structure=_CONNECTIVITY)
        level = np.concatenate([[0.0], rng.uniform(1.9, 3.0, size=n_lab)]).astype(np.float32)
        adc_level = np.concatenate([[0.0], rng.uniform(380.0, 560.0, size=n_lab)]).astype(np.float32)
        weight = ndimage.gaussian_filter(label.astype(np.float32), 0.5)
        weight = np.clip(np.maximum(weight, label), 0.0, 1.0) * (brain > 0.3)
        lesion_level = ndimage.grey_dilation(level[lab_i], size=(3, 3, 3))
        lesion_adc = ndimage.grey_dilation(adc_level[lab_i], size=(3, 3, 3))
        texture = 1.0 + 0.08 * rng.normal(size=label.shape).astype(np.float32)
        dwi = dwi * (1.0 - weight) + weight * lesion_level * texture
        adc = adc * (1.0 - weight) + weight * lesion_adc
    bias = np.exp(_smooth_field(rng, dwi.shape, nodes=4, amplitude=0.3))  # ~ +-15 %
    scale = 400.0 * rng.uniform(0.8, 1.25)
    dwi = dwi * bias * scale
    sigma = 0.035 * scale
    dwi = np.sqrt((dwi + rng.normal(0.0, sigma, size=dwi.shape)) ** 2 + rng.normal(0.0, sigma, size=dwi.shape) ** 2)
    head = (brain + scalp) > 0.05
    adc = np.where(head, np.clip(adc + rng.normal(0.0, 60.0, size=adc.shape), 0.0, None), 0.0)

    return SyntheticCase(
        case_id=case_id(index),
        dwi=dwi.astype(np.float32),
        adc=adc.astype(np.float32),
        label=label.astype(np.uint8),
        affine=tmpl.affine.copy(),
        target_volume=float(target_volume),
        target_components=n_comp,
        brain=brain > 0.5,
        info={"reference_volume": int(reference_volume), "reference_components": int(components)},
    )


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, compresslevel: int = 1) -> None:
    """Write a NIfTI-1 file atomically (temporary file + rename); ``.nii.gz`` with a fast gzip level."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    atomic_write_bytes(path, data)


def _case_paths(root: Path, cid: str) -> dict[str, Path]:
    ses = "ses-0001"
    return {
        "dwi": root / "rawdata" / cid / ses / "dwi" / f"{cid}_{ses}_dwi.nii.gz",
        "adc": root / "rawdata" / cid / ses / "dwi" / f"{cid}_{ses}_adc.nii.gz",
        "label": root / "derivatives" / cid / ses / f"{cid}_{ses}_msk.nii.gz",
    }


def _make_and_write(args: tuple[Path, int, int, tuple[float, float, float], int, int]) -> dict:
    root, index, seed, sp, ref_volume, components = args
    case = synthesize_case(index, seed=seed, spacing=sp, reference_volume=ref_volume, components=components)
    paths = _case_paths(root, case.case_id)
    _write_nifti(case.dwi, case.affine, paths["dwi"])
    _write_nifti(case.adc, case.affine, paths["adc"])
    _write_nifti(case.label, case.affine, paths["label"])
    stats = lesion_statistics(case.label)
    return {
        "case_id": case.case_id,
        "shape": list(case.label.shape),
        "volume": stats["volume"],
        "num_components": stats["num_components"],
        "lesion_free": stats["volume"] == 0,
        **case.info,
    }


def make_synthetic_cohort(
    out_dir: str | os.PathLike,
    cases: int = 40,
    seed: int = 0,
    spacing: float | Sequence[float] = 2.0,
    lesion_free: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic ISLES'22-layout cohort.

    Args:
        out_dir: dataset root to create (``rawdata/`` and ``derivatives/`` go inside).
        cases: number of cases, ``sub-strokecase0001`` ... .
        seed: cohort seed; the output is a deterministic function of ``(seed, cases, spacing, lesion_free)``.
        spacing: voxel spacing in mm (one number or three). 2.0 is close to ISLES'22 DWI; 6.0 gives tiny
            (~30^3) test volumes.
        lesion_free: number of lesion-free cases; ``None`` uses :func:`default_lesion_free_count`.
        workers: processes used to build cases in parallel (1: in this process).
        overwrite: allow writing into a root that already holds ``rawdata/`` or ``derivatives/``.

    Returns:
        The dataset root as a :class:`~pathlib.Path`. A summary with the per-case lesion volume and number of
        components is written to ``<root>/synthetic_cohort.json``.

    Raises:
        ValueError: for ``cases < 1``, an invalid spacing or lesion-free count.
        FileExistsError: if the root already holds a dataset and ``overwrite`` is false.
    """
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1; got {cases!r}")
    if int(cases) > 9999:
        raise ValueError(f"cases must be <= 9999 (case ids have four digits); got {cases!r}")
    sp = _spacing3(spacing)
    root = Path(out_dir)
    if not overwrite and ((root / "rawdata").exists() or (root / "derivatives").exists()):
        raise FileExistsError(
            f"{root} already holds rawdata/ or derivatives/; choose a new folder or pass overwrite=True"
        )
    root.mkdir(parents=True, exist_ok=True)
    plan = _cohort_plan(int(cases), int(seed), lesion_free)
    jobs = [(root, i + 1, int(seed), sp, v, c) for i, (v, c) in enumerate(plan)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            summary = list(pool.map(_make_and_write, jobs))
    else:
        summary = [_make_and_write(j) for j in jobs]
    _write_json(
        root / "dataset_description.json",
        {"Name": "dycon_monai synthetic ISLES'22-like cohort", "BIDSVersion": "1.7.0", "DatasetType": "derived"},
    )
    _write_json(
        root / "synthetic_cohort.json",
        {"cases": int(cases), "seed": int(seed), "spacing": list(sp), "case_facts": summary},
    )
    return root


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def lesion_statistics(label: np.ndarray) -> dict:
    """Volume (voxels) and number of 26-connected components of a binary mask."""
    mask = np.asarray(label) > 0
    _, n = ndimage.label(mask, structure=_CONNECTIVITY)
    return {"volume": int(mask.sum()), "num_components": int(n)}


def cohort_lesion_statistics(volumes_ref: Sequence[float], components: Sequence[int]) -> dict:
    """Summary statistics comparable with the SPEC's reference facts.

    Args:
        volumes_ref: per-case lesion volumes expressed in reference voxels (8 mm^3).
        components: per-case numbers of connected lesions.

    Returns:
        dict with volume median / 10th / 90th percentile (non-empty cases), components median / 10th / 90th
        percentile (non-empty cases), fraction of single-lesion cases and of lesion-free cases (all cases).
    """
    v = np.asarray(volumes_ref, dtype=float)
    c = np.asarray(components, dtype=float)
    ne = v > 0
    return {
        "cases": int(v.size),
        "volume_median": float(np.median(v[ne])) if ne.any() else 0.0,
        "volume_p10": float(np.percentile(v[ne], 10)) if ne.any() else 0.0,
        "volume_p90": float(np.percentile(v[ne], 90)) if ne.any() else 0.0,
        "components_median": float(np.median(c[ne])) if ne.any() else 0.0,
        "components_p10": float(np.percentile(c[ne], 10)) if ne.any() else 0.0,
        "components_p90": float(np.percentile(c[ne], 90)) if ne.any() else 0.0,
        "single_lesion_fraction": float((c == 1).mean()),
        "lesion_free_fraction": float((~ne).mean()),
    }


def save_preview(root: str | os.PathLike, out_png: str | os.PathLike, max_cases: int = 6) -> Path:
    """Write a PNG grid of slices (DWI, ADC, DWI coronal) with lesion contours for the first cases of a root.

    Args:
        root: an ISLES'22-layout root (e.g. one written by :func:`make_synthetic_cohort`).
        out_png: the picture to write.
        max_cases: number of cases (rows) shown; lesion cases are preferred.

    Returns:
        The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    case_dirs = sorted(p for p in (root / "rawdata").glob("sub-strokecase*") if p.is_dir())
    rows = []
    for cdir in case_dirs:
        cid = cdir.name
        paths = _case_paths(root, cid)
        if not paths["dwi"].exists():
            continue
        lab = np.asarray(nib.load(str(paths["label"])).dataobj) if paths["label"].exists() else None
        rows.append((cid, paths, lab))
    with_lesion = [r for r in rows if r[2] is not None and r[2].any()]
    without = [r for r in rows if r[2] is None or not r[2].any()]
    chosen = with_lesion[: max(max_cases - 1, 1)] + without[:1]
    chosen = chosen[:max_cases] if chosen else rows[:max_cases]
    if not chosen:
        raise FileNotFoundError(f"no cases with a DWI file under {root / 'rawdata'}")

    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for r, (cid, paths, lab) in enumerate(chosen):
        dwi_img = nib.load(str(paths["dwi"]))
        dwi = np.asarray(dwi_img.dataobj, dtype=np.float32)
        adc = np.asarray(nib.load(str(paths["adc"])).dataobj, dtype=np.float32) if paths["adc"].exists() else None
        lab = lab if lab is not None else np.zeros(dwi.shape, np.uint8)
        if lab.any():
            z = int(np.argmax(lab.sum((0, 1))))
            y = int(np.argmax(lab.sum((0, 2))))
        else:
            z, y = dwi.shape[2] // 2, dwi.shape[1] // 2
        vmax = 2.2 * float(np.percentile(dwi[lab == 0], 99.0))
        n_les = lesion_statistics(lab)
        views = [
            ("DWI axial", dwi[:, :, z], lab[:, :, z], vmax),
            ("ADC axial", adc[:, :, z] if adc is not None else dwi[:, :, z], lab[:, :, z], None),
            ("DWI coronal", dwi[:, y, :], lab[:, y, :], vmax),
        ]
        for c, (title, img, msk, vm) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vm)
            if msk.any():
                ax.contour(msk.T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(
                f"{cid} {title}"
                + (f"\n{n_les['num_components']} lesion(s), {n_les['volume']} voxels" if c == 0 else ""),
                fontsize=7,
            )
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m dycon_monai.data.synthetic",
        description="Write a synthetic ISLES'22-layout stroke cohort made from the MNI152 2009 template.",
    )
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--cases", type=int, default=40, help="number of cases (default 40)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--spacing", type=float, nargs="+", default=[2.0], help="voxel spacing in mm (1 or 3 values)")
    p.add_argument("--lesion-free", type=int, default=None, help="number of lesion-free cases (default: ~1.2%%)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="write into a root that already holds a dataset")
    p.add_argument("--preview", default=None, help="also write a PNG grid of slices with lesion contours")
    a = p.parse_args(argv)
    spacing = a.spacing[0] if len(a.spacing) == 1 else a.spacing
    t0 = time.perf_counter()
    try:
        root = make_synthetic_cohort(
            a.out,
            cases=a.cases,
            seed=a.seed,
            spacing=spacing,
            lesion_free=a.lesion_free,
            workers=a.workers,
            overwrite=a.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    facts = json.loads((root / "synthetic_cohort.json").read_text(encoding="utf-8"))
    sp = _spacing3(spacing)
    ratio = float(np.prod(sp)) / REFERENCE_VOXEL_VOLUME_MM3
    stats = cohort_lesion_statistics(
        [f["volume"] * ratio for f in facts["case_facts"]], [f["num_components"] for f in facts["case_facts"]]
    )
    print(f"wrote {a.cases} cases at spacing {sp} mm to {root} in {elapsed:.1f} s")
    print(
        "lesion statistics (volumes in 8 mm^3 reference voxels): "
        + json.dumps({k: round(v, 3) for k, v in stats.items()})
    )
    if a.preview:
        print(f"preview: {save_preview(root, a.preview)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
