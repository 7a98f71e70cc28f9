"""A synthetic Pancreas-CT-like cohort in the TCIA release layout: tiny DICOM series and NIfTI labels.

Writes ``<root>/Pancreas-CT/PANCREAS_NNNN/<study>/<series>/1-NNN.dcm`` (one int16 CT slice per file, HU, with
position, orientation and spacing tags), ``<root>/TCIA_pancreas_labels-02-05-2017/labelNNNN.nii.gz`` and
``<root>/split.json`` (the ids written, as ``{"train", "test"}``). Each case is an abdomen-like ellipse of soft
tissue in a ring of fat, in air, with a liver, a spine, bowel loops as bright as the pancreas (mimics) and an
elongated pancreas in fat; noise is added. The label is stored in another voxel order than the series (flipped
in-plane, as a NIfTI written by another tool may be), with its own correct affine, so readers must align the
two by their geometry. Case ids come from the published split (the withdrawn duplicates left out), so
:func:`~dycon_monai.data.pancreas.pancreas_datalist` works on the cohort. It lets tests and the demo run
offline; it says nothing about accuracy on real data.

    python -m dycon_monai.data.synthetic_pancreas /tmp/synthetic_pancreas --n_train 8 --n_test 3
"""

from __future__ import annotations

import argparse
import contextlib
import locale
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from dycon_monai.utils.io import atomic_write_json

from .pancreas import PANCREAS_DUPLICATES, PANCREAS_RELEASE_FOLDER, pancreas_published_split

__all__ = ["LABEL_FOLDER", "make_synthetic_pancreas", "synthesize_pancreas_case", "write_dicom_series"]

#: the label folder of the TCIA release
LABEL_FOLDER = "TCIA_pancreas_labels-02-05-2017"


def _ellipsoid(grid: list[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def synthesize_pancreas_case(
    rng: np.random.Generator, shape: Sequence[int] = (40, 40, 20)
) -> tuple[np.ndarray, np.ndarray]:
    """One case as (HU volume int16, label uint8), both indexed (x, y, z) with z the slice axis."""
    sx, sy, sz = (int(s) for s in shape)
    grid = [a.astype(np.float32) for a in np.meshgrid(np.arange(sx), np.arange(sy), np.arange(sz), indexing="ij")]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    c = np.array([sx / 2, sy / 2, sz / 2]) + rng.uniform(-1.5, 1.5, 3)
    body_r = np.array([sx * 0.45, sy * 0.38, sz * 2.0]) * rng.uniform(0.92, 1.05, 3)
    hu[_ellipsoid(grid, c, body_r)] = -100.0  # subcutaneous fat
    hu[_ellipsoid(grid, c, body_r * np.array([0.85, 0.82, 1.0]))] = 40.0  # soft tissue
    hu[_ellipsoid(grid, c + [-sx * 0.16, -sy * 0.05, 0], [sx * 0.17, sy * 0.2, sz * 0.8])] = 60.0  # liver
    hu[_ellipsoid(grid, c + [0, sy * 0.24, 0], [sx * 0.06, sy * 0.06, sz * 2.0])] = 400.0  # spine
    fat_c = c + [sx * 0.08, sy * 0.06, rng.uniform(-1, 1)]
    hu[_ellipsoid(grid, fat_c, [sx * 0.26, sy * 0.13, sz * 0.45])] = -90.0  # fat around the pancreas
    # the pancreas: an oblique elongated ellipsoid inside the fat pad
    angle = rng.uniform(-0.35, 0.35)
    u = (grid[0] - fat_c[0]) * np.cos(angle) + (grid[1] - fat_c[1]) * np.sin(angle)
    v = -(grid[0] - fat_c[0]) * np.sin(angle) + (grid[1] - fat_c[1]) * np.cos(angle)
    length, width = sx * rng.uniform(0.18, 0.22), sy * rng.uniform(0.07, 0.09)
    pancreas = (u / length) ** 2 + (v / width) ** 2 + ((grid[2] - fat_c[2]) / (sz * 0.35)) ** 2 <= 1.0
    hu[pancreas] = rng.uniform(95.0, 120.0)
    for _ in range(2):  # bowel loops as bright as the pancreas: not pancreas
        bc = c + [rng.uniform(-0.1, 0.25) * sx, rng.uniform(-0.32, -0.24) * sy, rng.uniform(-0.2, 0.2) * sz]
        hu[_ellipsoid(grid, bc, [sx * 0.04, sy * 0.04, sz * 0.2]) & ~pancreas] = rng.uniform(90.0, 125.0)
    hu = ndimage.gaussian_filter(hu, sigma=0.6) + rng.normal(0.0, 12.0, shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), pancreas.astype(np.uint8)


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(
    folder: str | os.PathLike,
    volume_xyz: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    patient_id: str = "SYNTHETIC",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    skip_slices: Sequence[int] = (),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    col_direction: Sequence[float] = (0.0, 1.0, 0.0),
    odd_slice_directions: dict[int, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> list[Path]:
    """Write ``volume_xyz`` (int16, indexed x, y, z) as one CT slice per file ``1-NNN.dcm`` with ITK (GDCM).

    ``origin`` and the directions are DICOM patient coordinates (LPS, mm); slice ``k`` lies at
    ``origin + k * spacing[2] * normal``. ``skip_slices`` leaves slices out (a gap) and ``odd_slice_directions``
    gives some slices other direction cosines (a mixed orientation): both only to make bad inputs for tests.
    """
    import itk

    with _locale_kept():  # GDCM's writer switches the process to the C locale and leaves it so
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vol = np.asarray(volume_xyz, dtype=np.int16)
        written = []
        for k in range(vol.shape[2]):
            if k in set(skip_slices):
                continue
            rows, cols = (odd_slice_directions or {}).get(k, (row_direction, col_direction))
            r, c = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
            normal = np.cross(np.asarray(row_direction, float), np.asarray(col_direction, float))
            pos = np.asarray(origin, dtype=np.float64) + k * float(spacing[2]) * normal
            sl = itk.image_from_array(np.ascontiguousarray(vol[:, :, k].T[None]))  # (1, y, x) -> ITK (x, y, 1)
            sl.SetSpacing([float(spacing[0]), float(spacing[1]), float(spacing[2])])
            sl.SetOrigin([float(p) for p in pos])
            direction = np.stack([r, c, np.cross(r, c)], axis=1)
            sl.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
            md = sl.GetMetaDataDictionary()
            tags = {
                "0008|0060": "CT",
                "0010|0020": patient_id,
                "0020|000d": series_uid.rsplit(".", 1)[0] + ".0",
                "0020|000e": series_uid,
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.4f}" for p in pos),
                "0020|0037": "\\".join(f"{v:.6f}" for v in [*r, *c]),
                "0028|0030": f"{float(spacing[1]):.4f}\\{float(spacing[0]):.4f}",
                "0018|0050": f"{float(spacing[2]):.4f}",
            }
            for key, value in tags.items():
                md[key] = value
            io = itk.GDCMImageIO.New()
            io.KeepOriginalUIDOn()
            path = folder / f"1-{k + 1:03d}.dcm"
            writer = itk.ImageFileWriter[type(sl)].New(Input=sl, FileName=str(path), ImageIO=io)
            writer.Update()
            written.append(path)
        return written


def _ras_affine(spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The RAS affine (what MONAI and nibabel use) of a series written with identity LPS directions."""
    lps = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def make_synthetic_pancreas(
    root: str | os.PathLike,
    n_train: int = 8,
    n_test: int = 3,
    shape: Sequence[int] = (40, 40, 20),
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    seed: int = 0,
) -> Path:
    """Write a synthetic cohort (ids: the first ``n_train`` / ``n_test`` of the published split without the
    withdrawn duplicates) and return ``root``."""
    import nibabel as nib

    root = Path(root)
    split = pancreas_published_split()
    ids = {k: [c for c in v if c not in PANCREAS_DUPLICATES] for k, v in split.items()}
    if not 1 <= n_train <= len(ids["train"]) or not 1 <= n_test <= len(ids["test"]):
        raise ValueError(f"need 1 <= n_train <= {len(ids['train'])} and 1 <= n_test <= {len(ids['test'])}")
    chosen = {"train": ids["train"][:n_train], "test": ids["test"][:n_test]}
    labels = root / LABEL_FOLDER
    labels.mkdir(parents=True, exist_ok=True)
    for cid in chosen["train"] + chosen["test"]:
        rng = np.random.default_rng([int(seed), zlib.crc32(cid.encode())])
        hu, lab = synthesize_pancreas_case(rng, shape)
        number = cid.split("_")[1]
        origin = (-0.5 * shape[0] * spacing[0], -0.5 * shape[1] * spacing[1], -100.0 - float(number))
        series = root / PANCREAS_RELEASE_FOLDER / cid / f"11-24-2015-PANCREAS{number}-Pancreas-{number}" / "Pancreas"
        uid = f"1.2.826.0.1.3680043.8.498.{int(number)}.{int(seed)}.1"
        write_dicom_series(series, hu, spacing, origin, patient_id=cid, series_uid=uid)
        label = nib.Nifti1Image(lab, _ras_affine(spacing, origin))
        flipped = label.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))  # another voxel order, same geometry
        nib.save(
            nib.Nifti1Image(np.asarray(flipped.dataobj, dtype=np.uint8), flipped.affine),
            labels / f"label{number}.nii.gz",
        )
    atomic_write_json(root / "split.json", chosen)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--n_train", type=int, default=8)
    parser.add_argument("--n_test", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_synthetic_pancreas(args.root, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(f"synthetic Pancreas-CT cohort in {out}")


if __name__ == "__main__":
    main()
