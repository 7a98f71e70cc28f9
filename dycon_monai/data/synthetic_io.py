"""The synthetic cohort on disk: NIfTI writer, the files of a case and the preview picture.

Each case is written at the ISLES'22 paths given by :func:`dycon_monai.data.isles22_layout.case_paths` (DWI and
ADC as float32, the lesion mask as uint8 {0, 1}); the preview finds the cases with
:func:`~dycon_monai.data.isles22_layout.case_folders`.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dycon_monai.data.isles22_layout import RAWDATA, case_folders, case_paths
from dycon_monai.data.synthetic_lesions import lesion_statistics
from dycon_monai.utils.io import atomic_write_bytes


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
    """The files the synthetic cohort writes for one case: DWI, ADC and the mask."""
    paths = case_paths(root, cid)
    return {key: paths[key] for key in ("dwi", "adc", "label")}


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
    rows = []
    for cdir in case_folders(root):
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
        raise FileNotFoundError(f"no cases with a DWI file under {root / RAWDATA}")

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
