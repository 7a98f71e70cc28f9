"""A synthetic BraTS-2019-like cohort in the release layout, with the case ids of the published split.

Writes ``<root>/MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` and
``<root>/split.json`` (the ids written, as ``{"train", "val", "test"}``). Each case is a brain-like ellipsoid with
a smooth texture on an exactly-zero background (skull-stripped, as released), holding one tumour: peritumoral
edema (label 2) around an enhancing rim (4) around a necrotic core (1); lower-grade cases have no enhancing
part. The four sequences differ in contrast (edema bright in FLAIR / T2, the rim bright in T1ce); a bias field and
noise are added, the images stored as int16 and the label as uint8 on a 1 mm grid with the release's orientation.
Case ids come from the published split, so :func:`~dycon_monai.data.brats19.brats19_datalist` works on the cohort;
the HGG / LGG folder is a stand-in rule (TCIA09, TCIA10, TCIA12 and TCIA13 ids in LGG). It lets tests and the demo
run offline; it says nothing about accuracy on real data.

    python -m dycon_monai.data.synthetic_brats /tmp/synthetic_brats --n_train 10 --n_val 2 --n_test 3
"""

from __future__ import annotations

import argparse
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from dycon_monai.utils.io import atomic_write_json

from .brats19 import BRATS_RELEASE_FOLDER, brats19_published_split

__all__ = ["brats_grade", "make_synthetic_brats", "synthesize_brats_case"]

_LGG_PREFIXES = ("BraTS19_TCIA09_", "BraTS19_TCIA10_", "BraTS19_TCIA12_", "BraTS19_TCIA13_")
#: mean intensity per sequence of (healthy tissue, edema, enhancing rim, necrotic core)
_CONTRAST = {
    "flair": (300.0, 650.0, 560.0, 420.0),
    "t1": (500.0, 380.0, 430.0, 250.0),
    "t1ce": (520.0, 420.0, 950.0, 240.0),
    "t2": (420.0, 820.0, 620.0, 900.0),
}


def brats_grade(case_id: str) -> str:
    """``"LGG"`` or ``"HGG"``: the folder a synthetic case is written to (a stand-in rule on the id)."""
    return "LGG" if case_id.startswith(_LGG_PREFIXES) else "HGG"


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))


def _unit_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    f = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=sigma)
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def synthesize_brats_case(
    rng: np.random.Generator, shape: Sequence[int] = (32, 32, 24), grade: str = "HGG"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic case: ``({modality: int16 image}, uint8 label with values {0, 1, 2, 4})`` of ``shape``."""
    shape = tuple(int(s) for s in shape)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    size = np.array(shape, dtype=np.float32)
    smooth = max(1.0, min(shape) / 12.0)
    brain_c = size / 2.0 + rng.uniform(-0.03, 0.03, 3) * size
    brain_r = size * rng.uniform(0.36, 0.44, 3)
    wobble = _unit_field(rng, shape, 2 * smooth) * 0.08
    brain = (_ellipsoid(grid, brain_c, brain_r) + wobble) < 1.0
    # the tumour sits inside the brain, away from its rim
    t_c = brain_c + rng.uniform(-0.35, 0.35, 3) * brain_r
    t_r = brain_r * rng.uniform(0.40, 0.60, 3)
    bumps = _unit_field(rng, shape, smooth) * 0.25
    d = _ellipsoid(grid, t_c, t_r)
    edema = ((d + bumps) < 1.0) & brain
    core = (d < 0.45) & brain
    necrosis = (d < 0.18) & brain
    label = np.zeros(shape, np.uint8)
    label[edema] = 2
    label[core] = 4 if grade == "HGG" else 1
    label[necrosis] = 1
    texture = _unit_field(rng, shape, smooth)
    bias = np.clip(1.0 + 0.1 * _unit_field(rng, shape, 4 * smooth), 0.7, 1.3)
    images: dict[str, np.ndarray] = {}
    for mod, (tissue, ed, et, ncr) in _CONTRAST.items():
        scale = float(rng.uniform(0.8, 1.25))
        img = np.full(shape, tissue, np.float32) * (1.0 + 0.08 * texture)
        img[label == 2] = ed
        img[label == 4] = et
        img[label == 1] = ncr
        img = ndimage.gaussian_filter(img, sigma=0.6) * bias * scale
        img += rng.normal(0.0, 0.04 * tissue, shape).astype(np.float32)
        img = np.where(brain, np.clip(img, 1.0, 32000.0), 0.0)
        images[mod] = np.rint(img).astype(np.int16)
    return images, label


def _affine(shape: Sequence[int]) -> np.ndarray:
    """The release's orientation: x and y flipped (LPS-like), 1 mm voxels."""
    a = np.diag([-1.0, -1.0, 1.0, 1.0])
    a[1, 3] = float(shape[1] - 1)
    return a


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def _take(ids: list[str], n: int | None) -> list[str]:
    if n is None:
        return list(ids)
    if not 0 <= int(n) <= len(ids):
        raise ValueError(f"asked for {n} cases of a list of {len(ids)}")
    return list(ids[: int(n)])


def make_synthetic_brats(
    root: str | os.PathLike,
    cases: Sequence[str] | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    shape: Sequence[int] = (32, 32, 24),
    seed: int = 0,
) -> Path:
    """Write synthetic BraTS cases under ``root`` in the release layout, and ``root/split.json``; returns ``root``.

    Args:
        root: output folder (``MICCAI_BraTS_2019_Data_Training`` is created inside it).
        cases: case ids to write (each must be in the published split); default: the first ``n_train`` /
            ``n_val`` / ``n_test`` ids of the published lists (``None`` = the whole list, 250 / 25 / 60).
        n_train, n_val, n_test: how many ids of each published list (ignored when ``cases`` is given).
        shape: volume shape (the release is 240 x 240 x 155; tests use 32 x 32 x 24).
        seed: with the case id, fixes each case's content (the same id gives the same volumes in any subset).
    """
    published = brats19_published_split()
    if cases is None:
        chosen = {"train": _take(published["train"], n_train)}
        chosen["val"] = _take(published["val"], n_val)
        chosen["test"] = _take(published["test"], n_test)
    else:
        wanted = [str(c) for c in cases]
        unknown = sorted(set(wanted) - set().union(*map(set, published.values())))
        if unknown:
            raise ValueError(f"case ids not in the published BraTS 2019 split: {unknown[:10]}")
        chosen = {k: [c for c in v if c in set(wanted)] for k, v in published.items()}
    root = Path(root)
    base = root / BRATS_RELEASE_FOLDER
    for cid in chosen["train"] + chosen["val"] + chosen["test"]:
        grade = brats_grade(cid)
        rng = np.random.default_rng([int(seed), zlib.crc32(cid.encode())])
        images, label = synthesize_brats_case(rng, shape, grade)
        folder = base / grade / cid
        folder.mkdir(parents=True, exist_ok=True)
        affine = _affine(shape)
        for mod, img in images.items():
            _save(folder / f"{cid}_{mod}.nii.gz", img, affine)
        _save(folder / f"{cid}_seg.nii.gz", label, affine)
    atomic_write_json(root / "split.json", chosen)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="output folder")
    p.add_argument("--n_train", type=int, default=None, help="first N training ids (default: all 250)")
    p.add_argument("--n_val", type=int, default=None, help="first N validation ids (default: all 25)")
    p.add_argument("--n_test", type=int, default=None, help="first N test ids (default: all 60)")
    p.add_argument("--shape", type=int, nargs=3, default=(32, 32, 24))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = make_synthetic_brats(a.root, None, a.n_train, a.n_val, a.n_test, a.shape, a.seed)
    n = sum(1 for _ in (root / BRATS_RELEASE_FOLDER).glob("*/*"))
    print(f"wrote {n} synthetic BraTS 2019 cases to {root / BRATS_RELEASE_FOLDER} (split: {root / 'split.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
