"""Pancreas-CT (NIH, TCIA): folder scanner, published split, datalists.

The set is read as TCIA distributes it: one DICOM series per patient and the NIfTI labels released beside it::

    <root>/Pancreas-CT/PANCREAS_0001/<study folder>/<series folder>/1-001.dcm ...
    <root>/TCIA_pancreas_labels-02-05-2017/label0001.nii.gz ...

``<root>`` may also be the ``Pancreas-CT`` folder itself (then give ``label_dir``); the series is the one folder
below ``PANCREAS_NNNN`` that holds ``*.dcm`` files, at any depth; ``labelNNNN.nii.gz`` belongs to
``PANCREAS_NNNN`` and is looked for anywhere under ``label_dir`` (by default the dataset folder). Labels are 0
(background) and 1 (pancreas).

The published split (62 training / 20 test case ids, the DyCON authors' lists, written as ``PANCREAS_00NN``)
ships as package data. TCIA's collection holds 80 of the 82 numbered scans: ``PANCREAS_0025`` and
``PANCREAS_0070`` were withdrawn as duplicates of other patients' scans. Both ids are in the published lists (one
training, one test case); :func:`pancreas_datalist` drops them (``drop_cases``), from the split and from a
folder that still has them, and says so in ``meta["dropped"]``: 61 training and 19 test cases. Training cases
split into a labeled subset (6 = 10 % or 12 = 20 % of the published 62) and the unlabeled rest; unlabeled
entries carry no label key at all. The transform chains are in :mod:`dycon_monai.data.pancreas_transforms`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .dicom import dicom_files, inspect_dicom_series
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
    "PANCREAS_DUPLICATES",
    "PANCREAS_RELEASE_FOLDER",
    "pancreas_datalist",
    "pancreas_inference_datalist",
    "pancreas_published_split",
    "resolve_pancreas_root",
    "scan_pancreas",
]

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

#: the collection folder of a TCIA download
PANCREAS_RELEASE_FOLDER = "Pancreas-CT"
#: scans TCIA withdrew as duplicates; dropped from the split and the folder by default
PANCREAS_DUPLICATES = ("PANCREAS_0025", "PANCREAS_0070")
_CASE = re.compile(r"^PANCREAS_(\d{4})$")
_LABEL = re.compile(r"^label(\d{4})\.nii(\.gz)?$")


def resolve_pancreas_root(root: PathLike) -> Path:
    """The folder that holds the ``PANCREAS_NNNN`` case folders: ``root`` or ``root/Pancreas-CT``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"Pancreas-CT dataset folder {root} does not exist", path=root)
    for candidate in (root, root / PANCREAS_RELEASE_FOLDER):
        if candidate.is_dir() and any(_CASE.match(p.name) and p.is_dir() for p in candidate.iterdir()):
            return candidate
    raise MissingFileError(
        f"no Pancreas-CT data in {root}: expected {root}/{PANCREAS_RELEASE_FOLDER}/PANCREAS_NNNN/<study>/<series>/"
        "*.dcm (or the Pancreas-CT folder itself)",
        path=root,
    )


def _series_folder(case_dir: Path) -> Path | None:
    folders = [p for p in [case_dir, *sorted(case_dir.rglob("*"))] if p.is_dir() and dicom_files(p)]
    if len(folders) > 1:
        listed = ", ".join(str(p.relative_to(case_dir)) for p in folders[:4])
        raise DataError(
            f"case {case_dir.name} has {len(folders)} DICOM series folders ({listed}); expected one CT series "
            f"per patient under {case_dir}",
            case_id=case_dir.name,
            path=case_dir,
        )
    return folders[0] if folders else None


def _labels(label_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for p in sorted(label_dir.rglob("label*.nii*")):
        m = _LABEL.match(p.name)
        if not m or not p.is_file():
            continue
        cid = f"PANCREAS_{m.group(1)}"
        if cid in found:
            raise DataError(f"two label files for {cid}: {found[cid]} and {p}", case_id=cid, path=p)
        found[cid] = str(p)
    return found


def scan_pancreas(root: PathLike, label_dir: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Map ``case_id -> {"image": series folder, "label": labelNNNN.nii.gz or None}`` for every case folder.

    Args:
        root: see :func:`resolve_pancreas_root`.
        label_dir: where the ``labelNNNN.nii.gz`` files are (searched recursively); by default ``root``.

    Raises:
        MissingFileError: no case folder, a case folder without DICOM files, or ``label_dir`` does not exist.
        DataError: a case with several series folders, or two label files for one case.
    """
    base = resolve_pancreas_root(root)
    labels_root = Path(label_dir).expanduser() if label_dir else Path(root).expanduser()
    if not labels_root.is_dir():
        raise MissingFileError(f"label_dir {labels_root} does not exist", path=labels_root)
    labels = _labels(labels_root)
    cases: dict[str, dict[str, Any]] = {}
    for case in sorted(p for p in base.iterdir() if p.is_dir() and _CASE.match(p.name)):
        series = _series_folder(case)
        if series is None:
            raise MissingFileError(
                f"case {case.name}: no *.dcm file under {case} (expected <study>/<series>/*.dcm)",
                case_id=case.name,
                path=case,
            )
        cases[case.name] = {"image": str(series), "label": labels.get(case.name)}
    return cases


def pancreas_published_split() -> dict[str, list[str]]:
    """The published Pancreas-NIH split as published: 62 ``train`` and 20 ``test`` case ids (duplicates included)."""
    return {k: read_split_list(f"pancreas_{k}.txt") for k in ("train", "test")}


def _check_case(case_id: str, files: dict[str, Any], with_label: bool) -> None:
    import nibabel as nib

    from .checks import check_finite

    info = inspect_dicom_series(files["image"])
    if not with_label:
        return
    path = files["label"]
    label = np.asarray(nib.load(path).dataobj)
    where = f"case {case_id} label ({path})"
    check_finite(label, where)
    values = sorted(np.unique(label).tolist())
    if not set(values) <= {0, 1}:
        raise DataError(f"{where} holds values {values[:10]}; expected 0 (background) and 1 (pancreas)", case_id, path)
    n_image = info.rows * info.columns * len(info.files)
    if label.ndim != 3 or label.size != n_image:
        raise DataError(
            f"{where} has shape {label.shape} but the series {files['image']} is {info.rows} x {info.columns} x "
            f"{len(info.files)} slices; expected a label of the same grid",
            case_id,
            path,
        )


def pancreas_datalist(
    dataset_dir: PathLike,
    label_dir: PathLike | None = None,
    labeled_count: int | str | None = 12,
    labeled_fraction: float | None = None,
    seed: int = 0,
    split_file: PathLike | None = None,
    labeled_selection: str = "random",
    drop_cases: Sequence[str] = PANCREAS_DUPLICATES,
    check_data: bool = False,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Datalist of Pancreas-CT: ``training_labeled``, ``training_unlabeled`` (no label key), ``validation`` (empty:
    the published split has none), ``test``; each entry ``{"case_id", "image": series folder, "label"}``.

    Args:
        dataset_dir: the download folder (see :func:`resolve_pancreas_root`).
        label_dir: folder of the ``labelNNNN.nii.gz`` files (default: searched under ``dataset_dir``).
        labeled_count: labeled training cases (an integer, or ``"all"`` / ``None``).
        labeled_fraction: instead of a count, this share of the training cases.
        seed: chooses the labeled cases (``labeled_selection="random"``).
        split_file: JSON ``{"train": [...], "test": [...]}`` of case ids instead of the published split.
        labeled_selection: ``"random"`` or ``"first"``.
        drop_cases: case ids left out of every part of the split (default: the two withdrawn duplicates).
        check_data: read every case's DICOM headers now (one series, one orientation, no gap) and every needed
            label (values {0, 1}, the series' voxel count); errors name the case and file.
        allow_missing: keep only the cases of the split present in the folder (dropped ids in ``meta["missing"]``).

    Raises:
        MissingFileError: a case of the split is not in the folder, or a case that needs its label has none.
        DataError: an impossible labeled count, a case in both parts of the split, bad data (``check_data``).
    """
    if labeled_selection not in LABELED_SELECTIONS:
        raise ValueError(f"labeled_selection must be one of {LABELED_SELECTIONS}; got {labeled_selection!r}")
    base = resolve_pancreas_root(dataset_dir)
    found = scan_pancreas(base, label_dir or dataset_dir)
    split = load_split_file(split_file, ("train", "test")) if split_file else pancreas_published_split()
    check_disjoint(split)
    drop = {str(c) for c in drop_cases or ()}
    dropped = [c for c in split["train"] + split["test"] if c in drop]
    split = {k: [c for c in v if c not in drop] for k, v in split.items()}
    if dropped:
        logger.info("left out %s (drop_cases: withdrawn duplicate scans)", dropped)
    source = "split file" if split_file else "published Pancreas-NIH split"
    split, missing = keep_present(split, found, base, source, f"{base}/<case>/<study>/<series>/*.dcm", allow_missing)
    train = list(split["train"])
    if not train:
        raise DataError(f"no training case of the {source} is in {base}", path=base)
    n = labeled_count_of(len(train), labeled_count, labeled_fraction)
    labeled = choose_labeled(train, n, seed, labeled_selection)
    chosen = set(labeled)
    no_label = [c for c in labeled + split["test"] if found[c]["label"] is None]
    if no_label:
        raise MissingFileError(
            f"{len(no_label)} case(s) that need a label have no labelNNNN.nii.gz under {label_dir or dataset_dir}: "
            f"{no_label[:10]} (labeled training and test cases must have one; give label_dir)",
            case_id=no_label[0],
        )
    if check_data:
        for cid in train + split["test"]:
            _check_case(cid, found[cid], with_label=cid in chosen or cid not in set(train))

    def entry(cid: str, with_label: bool) -> dict[str, Any]:
        e: dict[str, Any] = {"case_id": cid, "image": found[cid]["image"]}
        if with_label:
            e["label"] = found[cid]["label"]
        return e

    return {
        "training_labeled": [entry(c, True) for c in labeled],
        "training_unlabeled": [entry(c, False) for c in train if c not in chosen],
        "validation": [],
        "test": [entry(c, True) for c in split["test"]],
        "meta": {
            "dataset": "pancreas",
            "dataset_dir": str(base),
            "split": str(split_file) if split_file else "published (62 / 20)",
            "dropped": dropped,
            "labeled_count": n,
            "labeled_selection": labeled_selection,
            "seed": int(seed),
            "n_train": len(train),
            "n_test": len(split["test"]),
            "missing": missing,
        },
    }


def pancreas_inference_datalist(dataset_dir: PathLike | Sequence[PathLike]) -> list[dict[str, Any]]:
    """Inference datalist ``[{"case_id", "image": series folder}, ...]``: every folder of ``*.dcm`` files below
    ``dataset_dir`` (any depth; a series folder itself, or a list of them, is accepted too). The case id is the
    nearest ``PANCREAS_NNNN`` folder above the series, else the series folder's name.

    Raises:
        MissingFileError: no DICOM series found.
    """
    if isinstance(dataset_dir, (list, tuple)):
        folders = [Path(str(d)).expanduser() for d in dataset_dir]
    else:
        root = Path(str(dataset_dir)).expanduser()
        if not root.is_dir():
            raise MissingFileError(f"dataset_dir {root} does not exist: pass a folder of DICOM series", path=root)
        folders = [p for p in [root, *sorted(root.rglob("*"))] if p.is_dir() and dicom_files(p)]
    if not folders:
        raise MissingFileError(f"no DICOM series (*.dcm) under {dataset_dir}", path=dataset_dir)
    out = []
    for f in folders:
        case = next((p.name for p in [f, *f.parents] if _CASE.match(p.name)), f.name)
        out.append({"case_id": case, "image": str(f.absolute())})
    logger.info("Inference on %d DICOM series", len(out))
    return out
