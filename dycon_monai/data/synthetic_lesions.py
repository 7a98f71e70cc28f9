"""Lesions of the synthetic cohort: the published ISLES'22 per-case facts, the cohort plan and lesion growth.

Each lesion case aims at a (total volume, number of components) pair drawn from the published ISLES'22 per-case
facts (``splits/isles22_fold0.json``, ``metrics``). The volume is rescaled by the voxel-volume ratio, split among
the components with Dirichlet(0.5) weights and the components are grown as irregular connected blobs kept one
voxel apart, so the 26-connected component count equals the count drawn.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Voxel volume (mm^3) at which the published ISLES'22 per-case lesion volumes are counted. The ISLES'22 DWI
#: scans are close to 2 mm isotropic; we take 2 x 2 x 2 mm = 8 mm^3 (an assumption).
REFERENCE_VOXEL_VOLUME_MM3 = 8.0

_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as in the evaluation module


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


def lesion_statistics(label: np.ndarray) -> dict:
    """Volume (voxels) and number of 26-connected components of a binary mask."""
    mask = np.asarray(label) > 0
    _, n = ndimage.label(mask, structure=_CONNECTIVITY)
    return {"volume": int(mask.sum()), "num_components": int(n)}


def cohort_lesion_statistics(volumes_ref: Sequence[float], components: Sequence[int]) -> dict:
    """Summary statistics comparable with the published reference facts (``splits/isles22_fold0.json``).

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
