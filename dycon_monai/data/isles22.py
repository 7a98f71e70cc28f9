"""ISLES'22 in its released layout -> MONAI datalists with folds and a labeled / unlabeled split.

The folder layout and its scanner are in :mod:`dycon_monai.data.isles22_layout`, the file checks in
:mod:`dycon_monai.data.isles22_files`.

Splits:

* **folds** - the three published DyCON folds (200 / 25 / 25 case ids, package data in ``splits/``) when the
  root holds all 250 published case ids; otherwise folds made the same way: for fold ``f`` an independent
  seeded permutation of the sorted case ids (``numpy.random.default_rng([seed, f, 22])``), the first 10 % go
  to validation, the next 10 % to test (each at least one case), the rest to training.
* **labeled subset** - ``n = round(labeled_fraction * n_train)`` (half up) or ``labeled_count``; the training
  cases are sorted by lesion volume (published per-case volumes when the split is the published one, else the
  volume read from each training mask - used only for this choice and never written into an unlabeled
  entry), cut into ``n`` consecutive strata of (nearly) equal size, and one case is drawn from each stratum
  with ``numpy.random.default_rng([seed, fold])``.

Command line::

    python -m dycon_monai.data.isles22 --root DIR --fold 0 --labeled-fraction 0.1 --out datalist.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import nibabel as nib
import numpy as np

from dycon_monai.data.isles22_files import (
    LabelMapping,
    _check_geometry,
    _check_image_data,
    _load_checked,
    _read_mask,
    _spatial_shape,
    resolve_label_mapping,
)
from dycon_monai.data.isles22_layout import MODALITIES, DataError, MissingFileError, case_paths, scan_isles22
from dycon_monai.utils.io import atomic_write_json

__all__ = ["isles22_datalist", "load_datalist", "main", "published_splits", "save_datalist"]

logger = logging.getLogger(__name__)

_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
NUM_FOLDS = 3
PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------------------
# splits


def published_splits(fold: int) -> dict[str, Any]:
    """The published DyCON ISLES'22 fold ``fold`` (keys ``train``, ``val``, ``test``, ``metrics``)."""
    if fold not in range(NUM_FOLDS):
        raise ValueError(f"fold must be 0, 1 or 2 for the published ISLES'22 splits; got {fold!r}")
    with open(_SPLITS_DIR / f"isles22_fold{fold}.json", encoding="utf-8") as f:
        return json.load(f)


def _generated_fold(ids: Sequence[str], fold: int, seed: int) -> dict[str, list[str]]:
    n = len(ids)
    if n < 3:
        raise DataError(f"need at least 3 cases to make train/validation/test folds; the root has {n}")
    n_val = max(1, int(math.floor(0.1 * n + 0.5)))
    n_test = max(1, int(math.floor(0.1 * n + 0.5)))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} cases leave no training case after 10 % validation and 10 % test")
    perm = np.random.default_rng([int(seed), int(fold), 22]).permutation(n)
    order = [sorted(ids)[i] for i in perm]
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def _labeled_count(n_train: int, labeled_fraction: float | None, labeled_count: int | str | None) -> int:
    if isinstance(labeled_count, str) and labeled_count.lower() == "all":
        return n_train
    if labeled_count is not None:
        if int(labeled_count) != labeled_count or not 1 <= int(labeled_count) <= n_train:
            raise DataError(
                f"labeled_count={labeled_count!r} is impossible with {n_train} training cases; "
                f"expected an integer in [1, {n_train}]"
            )
        return int(labeled_count)
    if labeled_fraction is None or not (0.0 < float(labeled_fraction) <= 1.0):
        raise DataError(f"labeled_fraction must be in (0, 1]; got {labeled_fraction!r}")
    n = int(math.floor(float(labeled_fraction) * n_train + 0.5))
    if n < 1:
        raise DataError(
            f"labeled_fraction={labeled_fraction} of {n_train} training cases rounds to 0 labeled cases "
            f"(empty labeled set); use labeled_fraction >= {0.5 / n_train:.3g} or labeled_count=1"
        )
    return n


def _stratified_choice(ids_by_volume: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """One random case from each of ``n`` consecutive, nearly equal strata of the volume-sorted list."""
    strata = np.array_split(np.arange(len(ids_by_volume)), n)
    return sorted(ids_by_volume[int(s[rng.integers(len(s))])] for s in strata)


# ---------------------------------------------------------------------------------------------------------------
# datalist


def _modalities(modalities: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = [m for m in re.split(r"[,\s]+", modalities) if m]
    mods = tuple(str(m).lower() for m in modalities)
    unknown = [m for m in mods if m not in MODALITIES]
    if not mods or unknown or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct names from {list(MODALITIES)}; got {list(modalities)}")
    return mods


def isles22_datalist(
    root: PathLike,
    fold: int = 0,
    labeled_fraction: float | None = 0.1,
    labeled_count: int | str | None = None,
    seed: int = 0,
    modalities: str | Sequence[str] = ("dwi",),
    splits: str = "auto",
    label_mapping: LabelMapping = None,
    stratify: bool = True,
    affine_tolerance: float = 1e-3,
    check_data: bool = False,
) -> dict[str, Any]:
    """Build a MONAI datalist for one fold of an ISLES'22-layout root.

    Args:
        root: dataset root (``rawdata/`` + ``derivatives/``).
        fold: fold index 0, 1 or 2.
        labeled_fraction: fraction of the training cases that keep their labels (0.05, 0.1, 0.2 in the paper);
            rounded half up; ignored when ``labeled_count`` is given.
        labeled_count: number of labeled training cases (overrides ``labeled_fraction``); ``"all"`` for every
            training case (the fully supervised upper bound).
        seed: seed for the labeled subset (and for generated folds).
        modalities: input channels in order, from ``dwi``, ``adc``, ``flair``; DWI only by default.
        splits: ``"auto"`` (published folds if the root holds all 250 published ids, else generated),
            ``"published"``, ``"generated"``, or the path of a JSON file with ``train``/``val``/``test`` id lists.
        label_mapping: ``None`` (masks must be {0, 1}), a name from :data:`dycon_monai.data.LABEL_MAPPINGS` or
            a dict ``{value: 0/1}``; values outside it are an error.
        stratify: draw the labeled subset stratified by lesion volume (default) or uniformly at random.
        affine_tolerance: largest allowed absolute difference between the DWI affine and another modality's or
            the mask's.
        check_data: also decompress every image of every split (training labeled and unlabeled, validation,
            test; slow on a full dataset): an unreadable image or one with NaN / Inf voxels is a
            :class:`DataError` naming the case, the split and the file; an all-zero image gives an
            ``AllZeroImageWarning`` (:mod:`dycon_monai.data.checks`). By default images are checked by header and
            size (truncation) only, and non-finite voxels are found when the transform chains load the image;
            masks of labeled / validation / test cases are always read.

    Returns:
        dict with ``training_labeled`` and ``validation`` / ``test`` entries ``{"image", "label", "case_id",
        "lesion_free"}``, ``training_unlabeled`` entries ``{"image", "case_id"}`` (no label key, nothing derived
        from the label), and ``meta`` (root, fold, split source, seed, counts). ``image`` is a path for one
        modality and a list of paths (channel order = ``modalities``) for several; paths are absolute.

    Raises:
        DataError: layout problems, unreadable / truncated files, shape or affine mismatches, label values
            outside the allowed set, an empty labeled set (subclass :class:`MissingFileError` for absent files).
    """
    root = Path(root).resolve()
    mods = _modalities(modalities)
    mapping = resolve_label_mapping(label_mapping)
    cases = scan_isles22(root)
    ids = sorted(cases)

    published_ids = [r["case_id"] for r in published_splits(0)["metrics"]]
    volumes: dict[str, float] | None = None
    if isinstance(splits, (str, os.PathLike)) and str(splits) not in ("auto", "published", "generated"):
        with open(splits, encoding="utf-8") as f:
            split = {k: list(v) for k, v in json.load(f).items() if k in ("train", "val", "test")}
        source = f"file:{Path(splits).resolve()}"
    else:
        use_published = splits == "published" or (splits == "auto" and set(published_ids) <= set(ids))
        if splits not in ("auto", "published", "generated"):
            raise ValueError(f"splits must be 'auto', 'published', 'generated' or a JSON path; got {splits!r}")
        if use_published:
            pub = published_splits(int(fold))
            split = {k: list(pub[k]) for k in ("train", "val", "test")}
            volumes = {r["case_id"]: float(r["volume"]) for r in pub["metrics"]}
            source = "published"
        else:
            if fold not in range(NUM_FOLDS):
                raise ValueError(f"fold must be 0, 1 or 2; got {fold!r}")
            split = _generated_fold(ids, int(fold), int(seed))
            source = "generated"
    for key in ("train", "val", "test"):
        missing = [c for c in split.get(key, []) if c not in cases]
        if missing:
            raise MissingFileError(
                f"{len(missing)} case(s) of the {source} split's '{key}' set are not in {root / 'rawdata'}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; use splits='generated' for a "
                "partial dataset",
                case_id=missing[0],
            )
    train = list(split["train"])
    if not train:
        raise DataError(f"the {source} split of fold {fold} has no training case")

    # every image the datalist will name: exists, readable, 3D, same grid as the DWI
    used = sorted(set(train) | set(split["val"]) | set(split["test"]))
    split_of: dict[str, str] = {}
    for key, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        split_of.update(dict.fromkeys(split[key], name))
    headers: dict[str, dict[str, nib.Nifti1Image]] = {}
    for cid in used:
        case = cases[cid]
        for mod in ("dwi", *mods):
            if mod not in case.images:
                expected = case_paths(root, cid, case.session)[mod]
                raise MissingFileError(f"case {cid} has no {mod} image: expected {expected}", cid, expected)
        imgs = {mod: _load_checked(case.images[mod], cid, mod) for mod in dict.fromkeys(("dwi", *mods))}
        ref = (case.images["dwi"], imgs["dwi"])
        _spatial_shape(imgs["dwi"], case.images["dwi"], cid, "dwi")
        for mod in mods:
            if mod != "dwi":
                _check_geometry(ref, (case.images[mod], imgs[mod]), cid, mod, affine_tolerance)
        if check_data:
            for mod, img in imgs.items():
                _check_image_data(img, case.images[mod], cid, mod, split_of[cid])
        headers[cid] = imgs

    def mask_facts(cid: str) -> bool:
        """Read and check a mask that the datalist will expose; returns lesion_free."""
        case = cases[cid]
        if case.label is None:
            expected = case_paths(root, cid, case.session)["label"]
            raise MissingFileError(f"case {cid} must be labeled but has no mask: expected {expected}", cid, expected)
        _check_geometry(
            (case.images["dwi"], headers[cid]["dwi"]),
            (case.label, _load_checked(case.label, cid, "mask")),
            cid,
            "mask",
            affine_tolerance,
        )
        return not bool(_read_mask(case.label, cid, mapping).any())

    # labeled subset
    n_lab = _labeled_count(len(train), labeled_fraction, labeled_count)
    rng = np.random.default_rng([int(seed), int(fold)])
    if volumes is None and stratify:
        with_mask = [c for c in train if cases[c].label is not None]
        if len(with_mask) < len(train):
            logger.warning(
                "%d of %d training cases have no mask; they can only be unlabeled",
                len(train) - len(with_mask),
                len(train),
            )
        # volumes read from the training masks: used only to choose the labeled subset (documented)
        volumes = {c: float(_read_mask(cases[c].label, c, mapping).sum()) for c in with_mask}  # type: ignore[arg-type]
        pool = with_mask
    else:
        pool = list(train)
    if n_lab > len(pool):
        raise DataError(
            f"{n_lab} labeled cases requested but only {len(pool)} training cases of fold {fold} have a mask"
        )
    if stratify:
        by_volume = sorted(pool, key=lambda c: (volumes.get(c, 0.0), c))  # type: ignore[union-attr]
        labeled = _stratified_choice(by_volume, n_lab, rng)
    else:
        labeled = sorted(str(c) for c in rng.choice(sorted(pool), size=n_lab, replace=False))
    unlabeled = sorted(set(train) - set(labeled))

    def image_value(cid: str) -> str | list[str]:
        paths = [str(cases[cid].images[m]) for m in mods]
        return paths[0] if len(paths) == 1 else paths

    def labeled_entry(cid: str) -> dict[str, Any]:
        lesion_free = mask_facts(cid)
        return {"image": image_value(cid), "label": str(cases[cid].label), "case_id": cid, "lesion_free": lesion_free}

    datalist: dict[str, Any] = {
        "training_labeled": [labeled_entry(c) for c in labeled],
        "training_unlabeled": [{"image": image_value(c), "case_id": c} for c in unlabeled],
        "validation": [labeled_entry(c) for c in sorted(split["val"])],
        "test": [labeled_entry(c) for c in sorted(split["test"])],
    }
    datalist["meta"] = {
        "root": str(root),
        "fold": int(fold),
        "split_source": source,
        "seed": int(seed),
        "labeled_fraction": None if labeled_count is not None else labeled_fraction,
        "labeled_count": len(labeled),
        "stratified_by_volume": bool(stratify),
        "modalities": list(mods),
        "label_mapping": None
        if mapping is None
        else ("nonzero" if not mapping else {str(k): v for k, v in mapping.items()}),
        "counts": {k: len(v) for k, v in datalist.items() if isinstance(v, list)},
    }
    return datalist


def save_datalist(datalist: Mapping[str, Any], path: PathLike) -> Path:
    """Write a datalist as JSON atomically (temporary file in the same folder, then rename).

    Returns:
        The path written.
    """
    return atomic_write_json(path, datalist, fsync=True)


def load_datalist(path: PathLike) -> dict[str, Any]:
    """Read a datalist written by :func:`save_datalist`, checking its keys and that unlabeled entries carry no label."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    for key in ("training_labeled", "training_unlabeled", "validation", "test"):
        if key not in d or not isinstance(d[key], list):
            raise DataError(f"datalist {path} has no list '{key}'", path=path)
    leaked = [e.get("case_id") for e in d["training_unlabeled"] if "label" in e]
    if leaked:
        raise DataError(f"datalist {path}: unlabeled entries must not have a 'label' key ({leaked[:3]})", path=path)
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m dycon_monai.data.isles22",
        description="Build a MONAI datalist (labeled / unlabeled / validation / test) from an ISLES'22 root.",
    )
    p.add_argument("--root", required=True, help="dataset root holding rawdata/ and derivatives/")
    p.add_argument("--fold", type=int, default=0, help="fold 0, 1 or 2 (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labeled-fraction", type=float, default=0.1, help="fraction of training cases labeled (0.1)")
    g.add_argument("--labeled-count", type=int, default=None, help="number of labeled training cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the labeled subset and generated folds (0)")
    p.add_argument(
        "--modalities", nargs="+", default=["dwi"], help="channels from dwi, adc, flair (dwi); 'dwi adc' or 'dwi,adc'"
    )
    p.add_argument("--splits", default="auto", help="auto | published | generated | path/to/split.json")
    p.add_argument("--label-mapping", default=None, help="name (e.g. brats_whole_tumor, nonzero) or JSON dict")
    p.add_argument("--no-stratify", action="store_true", help="draw the labeled subset uniformly at random")
    p.add_argument(
        "--check-data",
        action="store_true",
        help="decompress every image to check it: unreadable or NaN / Inf voxels are errors, all-zero a warning",
    )
    p.add_argument("--out", required=True, help="datalist JSON to write")
    a = p.parse_args(argv)
    mapping: LabelMapping = a.label_mapping
    if mapping is not None and mapping.strip().startswith("{"):
        mapping = {int(k): int(v) for k, v in json.loads(mapping).items()}
    try:
        d = isles22_datalist(
            a.root,
            fold=a.fold,
            labeled_fraction=a.labeled_fraction,
            labeled_count=a.labeled_count,
            seed=a.seed,
            modalities=",".join(a.modalities),
            splits=a.splits,
            label_mapping=mapping,
            stratify=not a.no_stratify,
            check_data=a.check_data,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = save_datalist(d, a.out)
    c = d["meta"]["counts"]
    print(
        f"{out}: fold {a.fold} ({d['meta']['split_source']} split): {c['training_labeled']} labeled, "
        f"{c['training_unlabeled']} unlabeled, {c['validation']} validation, {c['test']} test"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
