"""The ``hard`` preset of the synthetic cohort: scanner variation, faint and fuzzy lesions, lesion mimics.

The default cohort is easy: every lesion is 1.9-3x brighter than grey matter, the scanner is the same for every
case, and nothing else in the brain is bright on DWI, so a few labeled cases are enough to learn it. The hard
preset keeps the anatomy and the lesion masks of the default (same seed, same masks) and changes the images so
that many labeled examples are needed:

* **scanner variation per case** -- global intensity scale (x0.6-1.6, log-uniform) and offset (0-10 % of the
  grey-matter signal), tissue contrast (CSF 0.15-0.45, WM 0.60-0.92 of GM; the default: 0.28 / 0.78 +-10 %), a
  bias field made of a log-linear ramp along a random direction (half range 0.1-0.45 in log) times a smooth
  B-spline field twice as strong as the default's (brain p95/p5 ratio ~1.9, 1.5-2.7; the default ~1.3), Rician
  noise from good to poor (SNR = GM signal / sigma 8-40, log-uniform; the default ~29), a Gaussian blur of
  0-1.5 voxels, and ADC scale x0.92-1.08 with noise sigma 40-120 (the default 60);
* **lesions from barely visible to bright** -- a lesion's DWI is 1.1-3.0x that of the pure parenchyma it sits
  in (the excess over 1 is log-uniform in 0.1-2.0, so ~23 % of lesions are only 10-20 % brighter, and a faint
  white-matter lesion is darker than grey matter), its ADC 0.45-0.75x; borders are fuzzy (a logistic edge
  0.2-0.6 voxel wide, before the blur);
* **mimics, labelled 0** -- 3-8 blobs per case bright on DWI (x1.3-2.5) but NOT dark on ADC (x1.0-1.4): T2
  shine-through; and 1-5 blobs dark on ADC (x0.45-0.75) but not bright on DWI (x0.7-1.05). Each is 15-1500
  reference voxels (log-uniform), two voxels or more from any lesion. Real lesions are bright on DWI *and* dark
  on ADC, so neither channel alone separates them from mimics: a model needs both.

Everything here draws from its own random stream ``(seed, index, 2)``, so the default stream (and with it the
default cohort) is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from dycon_monai.data.synthetic_anatomy import _smooth_field
from dycon_monai.data.synthetic_lesions import _CONNECTIVITY, REFERENCE_VOXEL_VOLUME_MM3, _grow_lesion

__all__ = ["MIMIC_LOW_ADC", "MIMIC_SHINE_THROUGH", "PRESETS", "draw_scanner", "hard_images"]

#: Names accepted by ``preset=``.
PRESETS = ("default", "hard")

_LESION_EXCESS = (0.1, 2.0)  # DWI factor - 1, log-uniform: 1.1x ... 3.0x the tissue under the lesion
_LESION_ADC = (0.45, 0.75)  # ADC factor of a lesion (restricted diffusion)

#: Mimic kinds in :attr:`SyntheticCase.mimic`: DWI-bright with normal/raised ADC (T2 shine-through), and ADC-dark
#: with normal/dark DWI (e.g. blood products, susceptibility). Both are labelled 0.
MIMIC_SHINE_THROUGH = 1
MIMIC_LOW_ADC = 2

_SHINE_EXCESS = (0.3, 1.5)  # DWI factor - 1 of a shine-through mimic, log-uniform: 1.3x ... 2.5x
_SHINE_ADC = (1.0, 1.4)  # its ADC factor: normal to raised
_LOW_ADC_DWI = (0.7, 1.05)  # DWI factor of a low-ADC mimic: darker to unchanged
_LOW_ADC_ADC = (0.45, 0.75)  # its ADC factor: as low as a lesion's
_MIMIC_COUNT = {MIMIC_SHINE_THROUGH: (3, 8), MIMIC_LOW_ADC: (1, 5)}  # per case, inclusive
_MIMIC_VOLUME_REF = (15.0, 1500.0)  # volume of one mimic in reference voxels (8 mm^3), log-uniform


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int | None = None) -> np.ndarray | float:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size=size))


def draw_scanner(rng: np.random.Generator) -> dict:
    """Draw one case's scanner and contrast parameters (plain floats, recorded in ``synthetic_cohort.json``).

    Keys: ``intensity_scale`` (x the base level), ``intensity_offset`` (in grey-matter units, before the scale),
    ``csf_level`` / ``wm_level`` / ``scalp_level`` (DWI levels relative to GM = 1), ``bias_ramp`` (half range
    of the log-linear bias ramp), ``bias_direction`` (unit vector, voxel axes), ``bias_smooth`` (amplitude of
    the B-spline log-bias coefficients; the default preset uses 0.3), ``snr`` (GM signal / noise sigma),
    ``blur_sigma_vox``, ``border_width_vox`` (logistic edge width of lesions and mimics), ``adc_scale``,
    ``adc_noise`` (sigma, 1e-6 mm^2/s).
    """
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-12
    return {
        "intensity_scale": float(_log_uniform(rng, 0.6, 1.6)),
        "intensity_offset": float(rng.uniform(0.0, 0.1)),
        "csf_level": float(rng.uniform(0.15, 0.45)),
        "wm_level": float(rng.uniform(0.60, 0.92)),
        "scalp_level": float(rng.uniform(0.10, 0.30)),
        "bias_ramp": float(rng.uniform(0.1, 0.45)),
        "bias_direction": [float(v) for v in direction],
        "bias_smooth": 0.6,
        "snr": float(_log_uniform(rng, 8.0, 40.0)),
        "blur_sigma_vox": float(rng.uniform(0.0, 1.5)),
        "border_width_vox": float(rng.uniform(0.2, 0.6)),
        "adc_scale": float(rng.uniform(0.92, 1.08)),
        "adc_noise": float(rng.uniform(40.0, 120.0)),
    }


def _place_mimics(
    rng: np.random.Generator, tissue: np.ndarray, label: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Scatter mimics of both kinds inside ``tissue``, two voxels or more from any lesion and from each other.

    Returns:
        uint8 map: 0 elsewhere, :data:`MIMIC_SHINE_THROUGH` or :data:`MIMIC_LOW_ADC` on a mimic.
    """
    mimic = np.zeros(tissue.shape, dtype=np.uint8)
    forbidden = ndimage.binary_dilation(label, structure=_CONNECTIVITY, iterations=2)
    candidates = np.argwhere(tissue & ~forbidden)
    ratio = REFERENCE_VOXEL_VOLUME_MM3 / float(np.prod(spacing))
    kinds = [k for k, (lo, hi) in _MIMIC_COUNT.items() for _ in range(int(rng.integers(lo, hi + 1)))]
    for kind in kinds:
        if len(candidates) == 0:
            break
        size = max(1, int(round(float(_log_uniform(rng, *_MIMIC_VOLUME_REF)) * ratio)))
        center = candidates[rng.integers(len(candidates))]
        if forbidden[tuple(center)]:
            continue
        grown = _grow_lesion(rng, center, size, tissue & ~forbidden)
        if grown is None:
            continue
        box, blob = grown
        mimic[box][blob] = kind
        lo = [max(s.start - 2, 0) for s in box]
        hi = [min(s.stop + 2, n) for s, n in zip(box, tissue.shape)]
        big = tuple(slice(a, b) for a, b in zip(lo, hi))
        forbidden[big] |= ndimage.binary_dilation(mimic[big] > 0, structure=_CONNECTIVITY, iterations=2)
    return mimic


def _fuzzy_weight(blobs: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Logistic edge around the blobs and, for every voxel, the id of the nearest blob.

    Args:
        blobs: int array, 0 = background, k > 0 = blob k.
        width: logistic edge width in voxels; the weight is 0.5 half a voxel outside the blob's boundary voxels.

    Returns:
        ``(weight, nearest)``: float32 weight in (0, 1) and the int id of the nearest blob voxel.
    """
    inside = blobs > 0
    d_out, idx = ndimage.distance_transform_edt(~inside, return_indices=True)
    d_in = ndimage.distance_transform_edt(inside)
    signed = np.where(inside, 0.5 - d_in, d_out - 0.5)  # < 0 inside, 0 on the boundary between voxels
    weight = 1.0 / (1.0 + np.exp(np.clip(signed / width, -30.0, 30.0)))
    nearest = blobs[tuple(idx)]
    return weight.astype(np.float32), nearest


def _bias_field(rng: np.random.Generator, brain: np.ndarray, scanner: dict) -> np.ndarray:
    """exp(log-linear ramp along a random direction + smooth B-spline field), ramp normalised over the brain."""
    shape = brain.shape
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    proj = (np.asarray(scanner["bias_direction"], dtype=np.float32) @ grid).reshape(shape)
    inside = proj[brain] if brain.any() else proj.ravel()
    lo, hi = float(inside.min()), float(inside.max())
    ramp = (2.0 * (proj - lo) / max(hi - lo, 1e-6) - 1.0) * scanner["bias_ramp"]
    smooth = _smooth_field(rng, shape, nodes=4, amplitude=scanner["bias_smooth"])
    return np.exp(ramp + smooth).astype(np.float32)


def hard_images(
    rng: np.random.Generator,
    brain: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    scalp: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """DWI and ADC of one hard-preset case from its deformed tissue maps and lesion mask.

    Args:
        rng: the case's hard-preset stream (``default_rng([seed, index, 2])``).
        brain, gm, wm, scalp: deformed tissue maps, float ``(X, Y, Z)``.
        label: lesion mask, bool ``(X, Y, Z)``; it is not changed.
        spacing: voxel spacing in mm.

    Returns:
        ``(dwi, adc, mimic, info)``: float32 images, the uint8 mimic map (:data:`MIMIC_SHINE_THROUGH`,
        :data:`MIMIC_LOW_ADC`, 0 elsewhere; the label is 0 on every mimic) and the parameters drawn (``scanner``
        from :func:`draw_scanner`, per-lesion ``lesion_dwi_contrast`` / ``lesion_adc_factor`` in 26-connected
        component order, ``mimics`` count, ``mimic_volume`` in voxels, per-mimic ``mimic_kind`` /
        ``mimic_dwi_contrast`` / ``mimic_adc_factor``).
    """
    sp = tuple(float(s) for s in spacing)
    scanner = draw_scanner(rng)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    tissue = ((gm + wm) > 0.5) & (brain > 0.5)
    dwi = scanner["csf_level"] * csf + gm + scanner["wm_level"] * wm + scanner["scalp_level"] * scalp
    adc = scanner["adc_scale"] * (3000.0 * csf + 850.0 * gm + 720.0 * wm + 700.0 * scalp)
    # levels of pure parenchyma (GM/WM mix, no CSF): a lesion or mimic is a factor times the tissue it sits in
    gm_frac = gm / np.maximum(gm + wm, 1e-3)
    dwi_parenchyma = gm_frac + scanner["wm_level"] * (1.0 - gm_frac)
    adc_parenchyma = scanner["adc_scale"] * (850.0 * gm_frac + 720.0 * (1.0 - gm_frac))

    mimic = _place_mimics(rng, tissue, label, sp)
    lab_i, n_les = ndimage.label(label, structure=_CONNECTIVITY)
    mim_i, n_mim = ndimage.label(mimic > 0, structure=_CONNECTIVITY)
    les_dwi = 1.0 + _log_uniform(rng, *_LESION_EXCESS, size=n_les)
    les_adc = rng.uniform(*_LESION_ADC, size=n_les)
    mim_kind = ndimage.maximum(mimic, mim_i, index=np.arange(1, n_mim + 1)).astype(int) if n_mim else np.zeros(0, int)
    shine = mim_kind == MIMIC_SHINE_THROUGH
    mim_dwi = np.where(shine, 1.0 + _log_uniform(rng, *_SHINE_EXCESS, size=n_mim), rng.uniform(*_LOW_ADC_DWI, n_mim))
    mim_adc = np.where(shine, rng.uniform(*_SHINE_ADC, size=n_mim), rng.uniform(*_LOW_ADC_ADC, size=n_mim))
    if n_les + n_mim:
        blobs = np.where(mim_i > 0, mim_i + n_les, lab_i)
        weight, nearest = _fuzzy_weight(blobs, scanner["border_width_vox"])
        weight *= brain > 0.3
        dwi_factor = np.concatenate([[1.0], les_dwi, mim_dwi]).astype(np.float32)[nearest]
        adc_factor = np.concatenate([[1.0], les_adc, mim_adc]).astype(np.float32)[nearest]
        texture = 1.0 + 0.08 * rng.normal(size=label.shape).astype(np.float32)
        dwi = dwi * (1.0 - weight) + weight * dwi_parenchyma * dwi_factor * texture
        adc = adc * (1.0 - weight) + weight * adc_parenchyma * adc_factor

    if scanner["blur_sigma_vox"] > 0.05:
        dwi = ndimage.gaussian_filter(dwi, scanner["blur_sigma_vox"], truncate=3.0)
        adc = ndimage.gaussian_filter(adc, scanner["blur_sigma_vox"], truncate=3.0)
    scale = 400.0 * scanner["intensity_scale"]
    dwi = dwi * _bias_field(rng, brain > 0.5, scanner) * scale
    sigma = scale / scanner["snr"]
    dwi = np.sqrt((dwi + rng.normal(0.0, sigma, size=dwi.shape)) ** 2 + rng.normal(0.0, sigma, size=dwi.shape) ** 2)
    dwi = dwi + scanner["intensity_offset"] * scale
    head = (brain + scalp) > 0.05
    adc = np.where(head, np.clip(adc + rng.normal(0.0, scanner["adc_noise"], size=adc.shape), 0.0, None), 0.0)

    info = {
        "scanner": {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v]) for k, v in scanner.items()},
        "lesion_dwi_contrast": [round(float(v), 3) for v in les_dwi],
        "lesion_adc_factor": [round(float(v), 3) for v in les_adc],
        "mimics": int(n_mim),
        "mimic_volume": int((mimic > 0).sum()),
        "mimic_kind": ["shine_through" if k == MIMIC_SHINE_THROUGH else "low_adc" for k in mim_kind],
        "mimic_dwi_contrast": [round(float(v), 3) for v in mim_dwi],
        "mimic_adc_factor": [round(float(v), 3) for v in mim_adc],
    }
    return dwi.astype(np.float32), adc.astype(np.float32), mimic, info
