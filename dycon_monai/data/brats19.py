"""The BraTS 2019 training set (MICCAI BraTS 2019 challenge): folder scanner, published split, datalists.

The set is read as its organisers release it::

    <root>/MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz

``<root>`` may also be the ``MICCAI_BraTS_2019_Data_Training`` folder itself or any folder holding ``HGG`` /
``LGG``. Every volume is 240 x 240 x 155 voxels of 1 mm, co-registered and skull-stripped; the label map holds 0
(background), 1 (necrotic / non-enhancing tumour core, NCR/NET), 2 (peritumoral edema, ED) and 4 (enhancing
tumour, ET). The DyCON paper uses FLAIR only and segments the whole tumour ({1, 2, 4} -> 1); ``modalities`` (any
subset and order of ``flair``, ``t1``, ``t1ce``, ``t2``, stacked as channels) and ``target`` (see
:data:`BRATS_TARGETS`) select other settings.

The published split (250 training / 25 validation / 60 test case ids, the 335 cases of the release) ships as
package data. Training cases split into a labeled subset (``labeled_count`` cases, or ``labeled_fraction``: 10 %
= 25, 20 % = 50) and the unlabeled rest; unlabeled entries carry no label key at all. The transform chains are in
:mod:`dycon_monai.data.brats19_transforms`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .isles22_files import check_label_values
from .isles22_layout import DataError, MissingFileError
from .subsets import (
    LABELED_SELECTIONS,
    check_disjoint,
    choose_labeled,
    keep_present,
    labeled_count_of,
    load_split_file,
    read_split_list,
)

__all__ = [
    "BRATS_LABELS",
    "BRATS_MODALITIES",
    "BRATS_RELEASE_FOLDER",
    "BRATS_TARGETS",
    "brats19_datalist",
    "brats19_inference_datalist",
    "brats19_published_split",
    "check_brats_label_values",
    "resolve_brats19_root",
    "resolve_modalities",
    "resolve_target",
    "scan_brats19",
]

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

#: the folder the organisers' archive unpacks to
BRATS_RELEASE_FOLDER = "MICCAI_BraTS_2019_Data_Training"
#: the four MR sequences, by their file-name suffix
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
#: label values of the release: 0 background, 1 NCR/NET, 2 ED, 4 ET
BRATS_LABELS = (0, 1, 2, 4)
#: ``target`` -> mapping of the release's label values to the training labels
BRATS_TARGETS: dict[str, dict[int, int]] = {
    "whole_tumor": {0: 0, 1: 1, 2: 1, 4: 1},
    "tumor_core": {0: 0, 1: 1, 2: 0, 4: 1},
    "enhancing_tumor": {0: 0, 1: 0, 2: 0, 4: 1},
    "subregions": {0: 0, 1: 1, 2: 2, 4: 3},
}
_GRADES = ("HGG", "LGG")
_EXTS = (".nii.gz", ".nii")


def resolve_target(target: str) -> dict[int, int]:
    """The label mapping of ``target`` (a key of :data:`BRATS_TARGETS`)."""
    if target not in BRATS_TARGETS:
        raise ValueError(f"target must be one of {sorted(BRATS_TARGETS)}; got {target!r}")
    return BRATS_TARGETS[target]


def resolve_modalities(modalities: str | Sequence[str]) -> tuple[str, ...]:
    """``modalities`` checked: a non-empty subset of :data:`BRATS_MODALITIES`, in the order given, no repeats."""
    mods = (modalities,) if isinstance(modalities, str) else tuple(str(m) for m in modalities)
    bad = [m for m in mods if m not in BRATS_MODALITIES]
    if not mods or bad or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct values of {BRATS_MODALITIES}; got {list(mods)!r}")
    return mods


def check_brats_label_values(values: np.ndarray, where: str) -> None:
    """Raise :class:`DataError` naming ``where`` and the values found if any is outside {0, 1, 2, 4}."""
    try:
        check_label_values(values, {v: 0 for v in BRATS_LABELS}, where)
    except ValueError as e:
        msg = str(e).replace(f"; label_mapping covers only {list(BRATS_LABELS)}", "; expected values in {0, 1, 2, 4}")
        raise DataError(
            f"{msg}. BraTS labels are 0 background, 1 NCR/NET, 2 edema, 4 enhancing tumour "
            "(a label map with 3 or 255 is not a BraTS 2019 release file; relabelled data must be mapped back)"
        ) from e


def resolve_brats19_root(root: PathLike) -> Path:
    """The folder that holds ``HGG`` / ``LGG``: ``root`` itself, or ``root/MICCAI_BraTS_2019_Data_Training``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"BraTS 2019 dataset folder {root} does not exist", path=root)
    for candidate in (root, root / BRATS_RELEASE_FOLDER):
        if any((candidate / g).is_dir() for g in _GRADES):
            return candidate
    raise MissingFileError(
        f"no BraTS 2019 data in {root}: expected {root}/{BRATS_RELEASE_FOLDER}/{{HGG,LGG}}/<case>/"
        "<case>_{flair,t1,t1ce,t2,seg}.nii.gz (or the MICCAI_... folder itself, or a folder holding HGG / LGG)",
        path=root,
    )


def _find(case_dir: Path, suffix: str) -> Path | None:
    for ext in _EXTS:
        p = case_dir / f"{case_dir.name}_{suffix}{ext}"
        if p.is_file():
            return p
    return None


def scan_brats19(root: PathLike, modalities: str | Sequence[str] = ("flair",)) -> dict[str, dict[str, Any]]:
    """Map ``case_id -> {"grade", "images": {modality: path}, "label": path or None}`` for every case folder.

    Args:
        root: see :func:`resolve_brats19_root`.
        modalities: the sequences every case must have (``<case>_<modality>.nii.gz``).

    Raises:
        MissingFileError: no HGG / LGG folder, no case folder, or a case lacks a requested modality (the error
            names the case, the file and what was expected).
        DataError: the same case id in HGG and LGG.
    """
    mods = resolve_modalities(modalities)
    base = resolve_brats19_root(root)
    cases: dict[str, dict[str, Any]] = {}
    for grade in _GRADES:
        folder = base / grade
        if not folder.is_dir():
            continue
        for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if case.name in cases:
                raise DataError(f"case {case.name} is both in HGG and LGG of {base}", case_id=case.name, path=case)
            images: dict[str, str] = {}
            for m in mods:
                path = _find(case, m)
                if path is None:
                    raise MissingFileError(
                        f"BraTS case {case.name}: {case.name}_{m}.nii.gz missing in {case} (modalities {list(mods)} "
                        f"expect {', '.join(f'{case.name}_{x}.nii.gz' for x in mods)})",
                        case_id=case.name,
                        path=case / f"{case.name}_{m}.nii.gz",
                    )
                images[m] = str(path)
            seg = _find(case, "seg")
            cases[case.name] = {"grade": grade, "images": images, "label": None if seg is None else str(seg)}
    if not cases:
        raise MissingFileError(f"no BraTS case folders in {base}/HGG or {base}/LGG", path=base)
    return cases


def brats19_published_split() -> dict[str, list[str]]:
    """The published BraTS 2019 split: 250 ``train``, 25 ``val`` and 60 ``test`` case ids."""
    return {k: read_split_list(f"brats19_{k}.txt") for k in ("train", "val", "test")}


def _check_case(case_id: str, files: dict[str, Any], mods: tuple[str, ...], with_label: bool) -> None:
    import nibabel as nib

    from .checks import check_finite, warn_if_all_zero

    shape = None
    for m in mods:
        path = files["images"][m]
        data = np.asarray(nib.load(path).dataobj)
        where = f"case {case_id} {m} ({path})"
        check_finite(data, where)
        warn_if_all_zero(data, where)
        if shape is not None and data.shape != shape:
            raise DataError(f"{where} has shape {data.shape} but {mods[0]} has {shape}", case_id, path)
        shape = data.shape
    if with_label:
        path = files["label"]
        label = np.asarray(nib.load(path).dataobj)
        where = f"case {case_id} label ({path})"
        if label.shape != shape:
            raise DataError(f"{where} has shape {label.shape} but the image has {shape}", case_id, path)
        check_brats_label_values(np.unique(label), where)


def brats19_datalist(
    dataset_dir: PathLike,
    labeled_count: int | str | None = 25,
    labeled_fraction: float | None = None,
    seed: int = 0,
    split_file: PathLike | None = None,
    labeled_selection: str = "random",
    modalities: str | Sequence[str] = ("flair",),
    target: str = "whole_tumor",
    check_data: bool = False,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Datalist of BraTS 2019: ``training_labeled``, ``training_unlabeled`` (no label key), ``validation``, ``test``.

    Each entry is ``{"case_id", "image", "label"}``; ``image`` is the path of the one modality, or the list of
    paths (one channel each, in ``modalities`` order) when several are asked for.

    Args:
        dataset_dir: the release folder (see :func:`resolve_brats19_root`).
        labeled_count: labeled training cases (an integer, or ``"all"`` / ``None`` for every training case).
        labeled_fraction: instead of a count, this share of the training cases (rounded: 0.1 -> 25 of 250).
        seed: chooses the labeled cases (``labeled_selection="random"``).
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of case ids instead of the published
            split (``"validation"`` is accepted for ``"val"``; ``"val"`` may be absent).
        labeled_selection: ``"random"`` (seeded draw) or ``"first"`` (the first cases of the training list).
        modalities: sequences stacked as channels, e.g. ``["flair"]`` (paper) or ``["flair", "t1", "t1ce", "t2"]``.
        target: recorded in ``meta`` and checked; the label mapping itself happens in the transforms.
        check_data: read every case now: non-finite voxels, shape mismatches and label values outside
            {0, 1, 2, 4} are errors naming the case and file, an all-zero image is a warning.
        allow_missing: keep only the cases of the split present in the folder (the dropped ids are logged and
            listed in ``meta["missing"]``); by default a missing case is an error.

    Raises:
        MissingFileError: a case of the split is not in the folder (all missing ids are named), or a case that
            needs its label (labeled, validation, test) has no ``<case>_seg.nii.gz``.
        DataError: an impossible labeled count / fraction, a case in two parts of the split, a bad split file,
            bad data (``check_data``).
    """
    mods = resolve_modalities(modalities)
    resolve_target(target)
    if labeled_selection not in LABELED_SELECTIONS:
        raise ValueError(f"labeled_selection must be one of {LABELED_SELECTIONS}; got {labeled_selection!r}")
    base = resolve_brats19_root(dataset_dir)
    found = scan_brats19(base, mods)
    split = (
        load_split_file(split_file, ("train", "test"), optional=("val",), aliases={"val": "validation"})
        if split_file
        else brats19_published_split()
    )
    split = {k: split[k] for k in ("train", "val", "test")}
    check_disjoint(split)
    source = "split file" if split_file else "published BraTS 2019 split"
    expected = f"HGG/<case>/ or LGG/<case>/ with <case>_{mods[0]}.nii.gz"
    split, missing = keep_present(split, found, base, source, expected, allow_missing)
    train = list(split["train"])
    if not train:
        raise DataError(f"no training case of the {source} is in {base}", path=base)
    n = labeled_count_of(len(train), labeled_count, labeled_fraction)
    labeled = choose_labeled(train, n, seed, labeled_selection)
    chosen = set(labeled)
    needs_label = labeled + split["val"] + split["test"]
    no_seg = [c for c in needs_label if found[c]["label"] is None]
    if no_seg:
        raise MissingFileError(
            f"{len(no_seg)} case(s) that need a label have no <case>_seg.nii.gz: {no_seg[:10]} (labeled training, "
            "validation and test cases must have one)",
            case_id=no_seg[0],
        )
    if check_data:
        for cid in train + split["val"] + split["test"]:
            _check_case(cid, found[cid], mods, with_label=cid in chosen or cid not in set(train))

    def entry(cid: str, with_label: bool) -> dict[str, Any]:
        paths = [found[cid]["images"][m] for m in mods]
        e: dict[str, Any] = {"case_id": cid, "image": paths[0] if len(paths) == 1 else paths}
        if with_label:
            e["label"] = found[cid]["label"]
        return e

    return {
        "training_labeled": [entry(c, True) for c in labeled],
        "training_unlabeled": [entry(c, False) for c in train if c not in chosen],
        "validation": [entry(c, True) for c in split["val"]],
        "test": [entry(c, True) for c in split["test"]],
        "meta": {
            "dataset": "brats19",
            "dataset_dir": str(base),
            "split": str(split_file) if split_file else "published (250 / 25 / 60)",
            "modalities": list(mods),
            "target": target,
            "labeled_count": n,
            "labeled_selection": labeled_selection,
            "seed": int(seed),
            "n_train": len(train),
            "n_val": len(split["val"]),
            "n_test": len(split["test"]),
            "missing": missing,
        },
    }


def brats19_inference_datalist(
    dataset_dir: PathLike | Sequence[PathLike], modalities: str | Sequence[str] = ("flair",)
) -> list[dict[str, Any]]:
    """Inference datalist ``[{"case_id", "image"}, ...]`` for BraTS-layout case folders below ``dataset_dir``.

    Every folder below ``dataset_dir`` (any depth) holding ``<folder>_<modality>.nii.gz`` for the first modality
    is a case; it must have all the others. A case folder itself, or a list of them, is accepted too.

    Raises:
        MissingFileError: no case found, or a case lacks a requested modality.
    """
    mods = resolve_modalities(modalities)
    if isinstance(dataset_dir, (list, tuple)):
        dirs = [Path(str(d)).expanduser() for d in dataset_dir]
    else:
        root = Path(str(dataset_dir)).expanduser()
        if not root.is_dir():
            raise MissingFileError(f"dataset_dir {root} does not exist: pass a folder of BraTS case folders", path=root)
        dirs = [root] if _find(root, mods[0]) else []
        dirs += sorted(p for p in root.rglob("*") if p.is_dir() and _find(p, mods[0]))
    out = []
    for d in dirs:
        paths = [_find(d, m) for m in mods]
        absent = [f"{d.name}_{m}.nii.gz" for m, p in zip(mods, paths) if p is None]
        if absent:
            raise MissingFileError(
                f"BraTS case {d.name}: {', '.join(absent)} missing in {d} (modalities {list(mods)})",
                case_id=d.name,
                path=d,
            )
        files = [str(p.absolute()) for p in paths if p is not None]
        out.append({"case_id": d.name, "image": files[0] if len(files) == 1 else files})
    if not out:
        raise MissingFileError(
            f"no BraTS case under {dataset_dir}: expected folders <case>/<case>_{mods[0]}.nii.gz", path=dataset_dir
        )
    logger.info("Inference on %d BraTS case(s)", len(out))
    return out
