"""A synthetic LA-like cohort in the preprocessed LA layout (``<root>/<case_id>/mri_norm2.h5`` + ``split.json``).

Each case is a smooth, irregular bright blob (the "atrium", label 1) with a darker wall, attached bright
"vessels" that are not labeled, a few bright distractor blobs elsewhere, a slowly varying bias field and noise;
the image is z-scored (float32), the label uint8 {0, 1}, as in the real preprocessed set. It lets every test and
the demo run offline; it says nothing about accuracy on real data.

    python -m dycon_monai.data.synthetic_la --out /tmp/synthetic_la --cases 12
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from dycon_monai.utils.io import atomic_write_json

__all__ = ["make_synthetic_la", "synthesize_la_case"]


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def synthesize_la_case(rng: np.random.Generator, shape: Sequence[int] = (96, 80, 48)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: ``(image float32 z-scored, label uint8)`` of ``shape``."""
    shape = tuple(int(s) for s in shape)
    zz = _grid(shape)
    centre = np.array(shape, dtype=np.float32) * rng.uniform(0.4, 0.6, 3)
    radii = np.array(shape, dtype=np.float32) * rng.uniform(0.16, 0.26, 3)
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(zz, centre, radii))
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=6) * 12.0
    label = (dist + wobble) < 1.0
    label = ndimage.binary_opening(label, iterations=1)
    # "pulmonary veins": bright tubes leaving the blob, not labeled
    vessels = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(2, 5))):
        direction = rng.normal(0, 1, 3)
        direction /= np.linalg.norm(direction)
        for t in np.linspace(0.9, 1.8, 24):
            p = centre + direction * radii * t
            r = max(1.5, float(radii.min()) * 0.18)
            vessels |= sum((g - c) ** 2 for g, c in zip(zz, p)) < r**2
    vessels &= ~label
    distractors = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        c = np.array(shape) * rng.uniform(0.1, 0.9, 3)
        r = float(rng.uniform(3, 7))
        distractors |= sum((g - ci) ** 2 for g, ci in zip(zz, c)) < r**2
    distractors &= ~ndimage.binary_dilation(label, iterations=3)
    wall = ndimage.binary_dilation(label, iterations=2) & ~label
    img = rng.normal(0.0, 0.25, shape).astype(np.float32)
    img += ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=3) * 0.8
    contrast = float(rng.uniform(0.9, 1.6))
    img[label] += contrast
    img[vessels] += contrast * rng.uniform(0.8, 1.1)
    img[distractors] += contrast * rng.uniform(0.6, 1.0)
    img[wall] -= 0.4
    bias = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=14)
    img *= 1.0 + 3.0 * bias
    img = ndimage.gaussian_filter(img, sigma=0.7)
    img = (img - img.mean()) / max(float(img.std()), 1e-6)
    return img.astype(np.float32), label.astype(np.uint8)


def _write_case(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, compression="gzip", compression_opts=1)
        f.create_dataset("label", data=label, compression="gzip", compression_opts=1)
    os.replace(tmp, path)


def make_synthetic_la(
    out: str | os.PathLike,
    cases: int = 12,
    seed: int = 0,
    shape: Sequence[int] = (96, 80, 48),
    n_test: int = 4,
) -> Path:
    """Write ``cases`` synthetic LA cases to ``out`` and ``out/split.json`` (last ``n_test`` cases are the test set).

    Returns the cohort folder. Case ids are ``SYN_LA_000``, ``SYN_LA_001``, ...
    """
    if not 1 <= int(n_test) < int(cases):
        raise ValueError(f"n_test must be in [1, cases); got n_test={n_test}, cases={cases}")
    root = Path(out)
    rng = np.random.default_rng(int(seed))
    ids = [f"SYN_LA_{i:03d}" for i in range(int(cases))]
    for cid in ids:
        image, label = synthesize_la_case(rng, shape)
        _write_case(root / cid / "mri_norm2.h5", image, label)
    split = {"train": ids[: cases - n_test], "test": ids[cases - n_test :]}
    atomic_write_json(root / "split.json", split)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_test", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 80, 48))
    a = p.parse_args(argv)
    root = make_synthetic_la(a.out, a.cases, a.seed, a.shape, a.n_test)
    print(f"wrote {a.cases} synthetic LA cases to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
