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

``preset="hard"`` keeps steps 1, 2 and 4 (same anatomy and lesion masks for the same seed) and replaces 3 and 5
with per-case scanner variation, faint and fuzzy lesions and lesion mimics labelled 0 (DWI-bright but ADC-normal,
or ADC-dark but DWI-normal); see
:mod:`dycon_monai.data.synthetic_hard`.

The cohort is written in the released ISLES'22 layout so that :func:`dycon_monai.data.isles22_datalist` reads it
exactly like the real data::

    rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz   float32
    rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_adc.nii.gz   float32
    derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz   uint8 {0, 1}

Everything is a deterministic function of ``(seed, case index, spacing, preset)``.

The code is split by idea: :mod:`~dycon_monai.data.synthetic_anatomy` (template and deformation),
:mod:`~dycon_monai.data.synthetic_lesions` (published facts, cohort plan, lesion growth, statistics),
:mod:`~dycon_monai.data.synthetic_hard` (the hard preset's images), :mod:`~dycon_monai.data.synthetic_io` (writers,
preview); the file paths come from :mod:`~dycon_monai.data.isles22_layout`, the owner of the ISLES'22 layout. This
module makes cases and cohorts and is the command line. Every public name stays importable from here.

Command line::

    python -m dycon_monai.data.synthetic --out DIR --cases 40 --seed 0 [--spacing 2.0] [--preset hard]
        [--preview preview.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from dycon_monai.data.isles22_layout import case_id, holds_dataset
from dycon_monai.data.synthetic_anatomy import _MARGIN_MM as _MARGIN_MM
from dycon_monai.data.synthetic_anatomy import _bspline_basis as _bspline_basis
from dycon_monai.data.synthetic_anatomy import _deform, _smooth_field, _spacing3, _template
from dycon_monai.data.synthetic_anatomy import _mni_maps_1mm as _mni_maps_1mm
from dycon_monai.data.synthetic_anatomy import _Template as _Template
from dycon_monai.data.synthetic_hard import PRESETS, hard_images
from dycon_monai.data.synthetic_io import _case_paths, _write_nifti, save_preview
from dycon_monai.data.synthetic_lesions import (
    _CONNECTIVITY,
    REFERENCE_VOXEL_VOLUME_MM3,
    _cohort_plan,
    _component_sizes,
    _place_lesions,
    cohort_lesion_statistics,
    default_lesion_free_count,
    lesion_statistics,
    reference_lesion_facts,
)
from dycon_monai.data.synthetic_lesions import _SPLITS_DIR as _SPLITS_DIR
from dycon_monai.data.synthetic_lesions import _grow_lesion as _grow_lesion
from dycon_monai.data.synthetic_lesions import _plan_summary as _plan_summary
from dycon_monai.utils.io import atomic_write_json

# The private helpers imported ``as`` themselves lived here before the split and stay importable from this module.

__all__ = [
    "PRESETS",
    "REFERENCE_VOXEL_VOLUME_MM3",
    "SyntheticCase",
    "case_id",
    "cohort_lesion_statistics",
    "default_lesion_free_count",
    "lesion_statistics",
    "make_synthetic_cohort",
    "reference_lesion_facts",
    "save_preview",
    "synthesize_case",
]


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
        info: facts recorded in ``synthetic_cohort.json`` (reference pair; for the hard preset also the scanner
            and per-lesion / per-mimic contrast parameters).
        mimic: hard preset only: uint8 map of the mimics (label 0 there), ``MIMIC_SHINE_THROUGH`` (DWI-bright,
            ADC-normal) or ``MIMIC_LOW_ADC`` (ADC-dark, DWI-normal) from :mod:`~dycon_monai.data.synthetic_hard`, 0
            elsewhere; ``None`` for the default preset.
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
    mimic: np.ndarray | None = None


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}; got {preset!r}")
    return preset


def synthesize_case(
    index: int,
    seed: int = 0,
    spacing: float | Sequence[float] = 2.0,
    reference_volume: int | None = None,
    components: int | None = None,
    preset: str = "default",
) -> SyntheticCase:
    """Make one synthetic case in memory.

    Args:
        index: 1-based case index (gives the case id and, with ``seed``, the random stream).
        seed: cohort seed.
        spacing: voxel spacing in mm (one number or three).
        reference_volume: total lesion volume in ISLES'22 reference voxels (8 mm^3); 0 makes a lesion-free case.
            ``None`` draws one jointly with ``components`` from the published per-case facts.
        components: number of separate lesions; ``None`` draws it (see above).
        preset: ``"default"`` or ``"hard"`` (scanner variation, faint/fuzzy lesions, mimics; same
            anatomy and lesion mask as the default for the same arguments).

    Returns:
        The case's arrays and affine.
    """
    sp = _spacing3(spacing)
    _check_preset(preset)
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
    info = {"reference_volume": int(reference_volume), "reference_components": int(components)}
    mimic = None
    if preset == "hard":
        dwi, adc, mimic, hard_info = hard_images(
            np.random.default_rng([seed, index, 2]), brain, gm, wm, scalp, label, sp
        )
        info.update(hard_info)
    else:
        dwi, adc = _default_images(rng, brain, gm, wm, scalp, csf, label)
    return SyntheticCase(
        case_id=case_id(index),
        dwi=dwi,
        adc=adc,
        label=label.astype(np.uint8),
        affine=tmpl.affine.copy(),
        target_volume=float(target_volume),
        target_components=n_comp,
        brain=brain > 0.5,
        info=info,
        mimic=mimic,
    )


def _default_images(
    rng: np.random.Generator,
    brain: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    scalp: np.ndarray,
    csf: np.ndarray,
    label: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """DWI and ADC of a default-preset case (continues the case's main random stream after lesion placement)."""
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

    return dwi.astype(np.float32), adc.astype(np.float32)


def _make_and_write(args: tuple[Path, int, int, tuple[float, float, float], int, int, str]) -> dict:
    root, index, seed, sp, ref_volume, components, preset = args
    case = synthesize_case(
        index, seed=seed, spacing=sp, reference_volume=ref_volume, components=components, preset=preset
    )
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
    preset: str = "default",
) -> Path:
    """Write a synthetic ISLES'22-layout cohort.

    Args:
        out_dir: dataset root to create (``rawdata/`` and ``derivatives/`` go inside).
        cases: number of cases, ``sub-strokecase0001`` ... .
        seed: cohort seed; the output is a deterministic function of ``(seed, cases, spacing, lesion_free, preset)``.
        spacing: voxel spacing in mm (one number or three). 2.0 is close to ISLES'22 DWI; 6.0 gives tiny
            (~30^3) test volumes.
        lesion_free: number of lesion-free cases; ``None`` uses :func:`default_lesion_free_count`.
        workers: processes used to build cases in parallel (1: in this process).
        overwrite: allow writing into a root that already holds ``rawdata/`` or ``derivatives/``.
        preset: ``"default"`` (the easy cohort, unchanged) or ``"hard"``: per-case scanner variation (intensity
            scale/offset, tissue contrast, strong oriented bias field, SNR 8-40, blur), lesions from barely visible
            to bright with fuzzy borders, and mimics labelled 0 (DWI-bright / ADC-normal, ADC-dark / DWI-normal), so
            DWI and ADC are both needed (``isles22_datalist(root, modalities=["dwi", "adc"])``). Same lesion masks
            as the default.

    Returns:
        The dataset root as a :class:`~pathlib.Path`. A summary with the per-case lesion volume and number of
        components (and, for the hard preset, its scanner, lesion and mimic parameters) is written to
        ``<root>/synthetic_cohort.json`` with the preset.

    Raises:
        ValueError: for ``cases < 1``, an invalid spacing, lesion-free count or preset.
        FileExistsError: if the root already holds a dataset and ``overwrite`` is false.
    """
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1; got {cases!r}")
    if int(cases) > 9999:
        raise ValueError(f"cases must be <= 9999 (case ids have four digits); got {cases!r}")
    sp = _spacing3(spacing)
    _check_preset(preset)
    root = Path(out_dir)
    if not overwrite and holds_dataset(root):
        raise FileExistsError(
            f"{root} already holds rawdata/ or derivatives/; choose a new folder or pass overwrite=True"
        )
    root.mkdir(parents=True, exist_ok=True)
    plan = _cohort_plan(int(cases), int(seed), lesion_free)
    jobs = [(root, i + 1, int(seed), sp, v, c, preset) for i, (v, c) in enumerate(plan)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            summary = list(pool.map(_make_and_write, jobs))
    else:
        summary = [_make_and_write(j) for j in jobs]
    atomic_write_json(
        root / "dataset_description.json",
        {"Name": "dycon_monai synthetic ISLES'22-like cohort", "BIDSVersion": "1.7.0", "DatasetType": "derived"},
    )
    atomic_write_json(
        root / "synthetic_cohort.json",
        {"cases": int(cases), "seed": int(seed), "spacing": list(sp), "preset": preset, "case_facts": summary},
    )
    return root


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
    p.add_argument(
        "--preset", choices=PRESETS, default="default", help="default (easy) or hard (scanner variation, mimics)"
    )
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
            preset=a.preset,
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
    print(f"wrote {a.cases} cases (preset {a.preset}) at spacing {sp} mm to {root} in {elapsed:.1f} s")
    print(
        "lesion statistics (volumes in 8 mm^3 reference voxels): "
        + json.dumps({k: round(v, 3) for k, v in stats.items()})
    )
    if a.preview:
        print(f"preview: {save_preview(root, a.preview)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
