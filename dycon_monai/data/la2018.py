"""The left atrium set (LA 2018 atrial segmentation challenge): folder scanner, published split, datalists.

Two forms are read, chosen with ``form`` (``"auto"`` picks whichever the folder holds):

* ``"h5"`` - the widely used preprocessed set, ``<root>/<case_id>/mri_norm2.h5`` with datasets ``image``
  (float32, z-scored) and ``label`` (uint8, {0, 1}), 0.625 mm isotropic, cropped around the atrium by its
  publishers (the ``yulequan/UA-MT`` repository, ``data/2018LA_Seg_Training Set/``).
* ``"nrrd"`` - the challenge release, ``<root>/<case_id>/lgemri.nrrd`` + ``laendo.nrrd`` (labels 0 / 255),
  read with ITK; uncropped.

The published split (80 training / 20 test case folders, ``data/train.list`` / ``data/test.list`` of UA-MT)
ships as package data. Training cases split into a labeled subset (``labeled_count`` cases, 4 / 8 / 16 = 5 / 10
/ 20 %) and the unlabeled rest; unlabeled entries carry no label key at all. The transform chains are in
:mod:`dycon_monai.data.la_transforms`.
"""

from __future__ import annotations

import os
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
    "LA_FILES",
    "LA_LABEL_MAPPINGS",
    "LA_SPACING_MM",
    "la2018_datalist",
    "la2018_published_split",
    "resolve_la_form",
    "scan_la2018",
]

PathLike = Union[str, os.PathLike]

#: voxel size of the preprocessed (h5) set, in mm
LA_SPACING_MM = 0.625
#: file names per form: (image, label); for h5 both live in one file
LA_FILES = {"h5": ("mri_norm2.h5", "mri_norm2.h5"), "nrrd": ("lgemri.nrrd", "laendo.nrrd")}
#: label values per form, mapped to {0, 1}
LA_LABEL_MAPPINGS: dict[str, dict[int, int]] = {"h5": {0: 0, 1: 1}, "nrrd": {0: 0, 255: 1}}


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_la_form(root: PathLike, form: str = "auto") -> str:
    """``"h5"`` or ``"nrrd"``: ``form`` checked, or (``"auto"``) the form of the first case folder that has one."""
    if form in LA_FILES:
        return form
    if form != "auto":
        raise ValueError(f"data_form must be 'auto', 'h5' or 'nrrd'; got {form!r}")
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"LA dataset folder {root} does not exist", path=root)
    for case in _case_dirs(root):
        for name, (image, _) in LA_FILES.items():
            if (case / image).is_file():
                return name
    raise MissingFileError(
        f"no LA case found in {root}: expected <case_id>/mri_norm2.h5 (preprocessed set) or "
        "<case_id>/lgemri.nrrd + laendo.nrrd (challenge release) in its sub-folders",
        path=root,
    )


def scan_la2018(root: PathLike, form: str = "auto") -> dict[str, dict[str, str]]:
    """Map ``case_id -> {"image": path, "label": path}`` for every case folder of ``root``.

    Raises:
        MissingFileError: the folder does not exist, holds no case, or a case folder lacks a file of the form.
    """
    root = Path(root).expanduser()
    form = resolve_la_form(root, form)
    image_name, label_name = LA_FILES[form]
    cases: dict[str, dict[str, str]] = {}
    for case in _case_dirs(root):
        image, label = case / image_name, case / label_name
        missing = [p.name for p in (image, label) if not p.is_file()]
        if missing:
            raise MissingFileError(
                f"LA case {case.name}: {', '.join(sorted(set(missing)))} missing in {case} "
                f"(form '{form}' expects {image_name}" + ("" if form == "h5" else f" and {label_name}") + ")",
                case_id=case.name,
                path=case,
            )
        cases[case.name] = {"image": str(image), "label": str(label)}
    if not cases:
        raise MissingFileError(f"no LA case folders in {root}", path=root)
    return cases


def la2018_published_split() -> dict[str, list[str]]:
    """The published LA split (UA-MT ``train.list`` / ``test.list``): 80 training and 20 test case ids."""
    return {"train": read_split_list("la2018_train.list"), "test": read_split_list("la2018_test.list")}


def _check_case(case_id: str, entry: dict[str, str], form: str, with_label: bool) -> None:
    from .checks import check_finite, warn_if_all_zero
    from .la_transforms import read_la_array

    image = read_la_array(entry["image"], "image", form)
    where = f"case {case_id} image ({entry['image']})"
    check_finite(image, where)
    warn_if_all_zero(image, where)
    if with_label:
        label = read_la_array(entry["label"], "label", form)
        lwhere = f"case {case_id} label ({entry['label']})"
        if label.shape != image.shape:
            raise DataError(f"{lwhere} has shape {label.shape} but the image has {image.shape}", case_id=case_id)
        check_label_values(np.unique(label), LA_LABEL_MAPPINGS[form], lwhere)


def la2018_datalist(
    dataset_dir: PathLike,
    labeled_count: int | str | None = 8,
    labeled_fraction: float | None = None,
    seed: int = 0,
    split_file: PathLike | None = None,
    labeled_selection: str = "random",
    check_data: bool = False,
    form: str = "auto",
) -> dict[str, Any]:
    """Datalist of the LA set: ``training_labeled``, ``training_unlabeled`` (no label key), ``validation``, ``test``.

    Args:
        dataset_dir: the folder of case folders (see the module docstring for both forms).
        labeled_count: labeled training cases (an integer, or ``"all"`` / ``None`` for every training case).
        labeled_fraction: instead of a count, this share of the training cases (rounded, at least 1).
        seed: chooses the labeled cases (``labeled_selection="random"``).
        split_file: JSON ``{"train": [...], "test": [...]}`` of case ids instead of the published split.
        labeled_selection: ``"random"`` (seeded draw) or ``"first"`` (the first cases of the training list, as
            the UA-MT-derived scripts take them).
        check_data: read every case now: non-finite voxels and label values outside the form's set are errors
            naming the case and file, an all-zero image is a warning.
        form: ``"auto"``, ``"h5"`` or ``"nrrd"``.

    Raises:
        MissingFileError: a case of the split is not in ``dataset_dir`` (all missing ids are named).
        DataError: an impossible labeled count / fraction, a case in both train and test, a bad split file.
    """
    root = Path(dataset_dir).expanduser()
    form = resolve_la_form(root, form)
    found = scan_la2018(root, form)
    split = load_split_file(split_file) if split_file else la2018_published_split()
    check_disjoint(split)
    source = "split file" if split_file else "published LA split"
    keep_present(split, found, root, source, f"<case_id>/{LA_FILES[form][0]}", allow_missing=None)
    if labeled_selection not in LABELED_SELECTIONS:
        raise ValueError(f"labeled_selection must be one of {LABELED_SELECTIONS}; got {labeled_selection!r}")
    train = list(split["train"])
    n = labeled_count_of(len(train), labeled_count, labeled_fraction)
    labeled = choose_labeled(train, n, seed, labeled_selection)
    chosen = set(labeled)
    if check_data:
        for cid in train + split["test"]:
            _check_case(cid, found[cid], form, with_label=cid in chosen or cid in split["test"])

    def entry(cid: str, with_label: bool) -> dict[str, str]:
        e = {"case_id": cid, "image": found[cid]["image"]}
        if with_label:
            e["label"] = found[cid]["label"]
        return e

    return {
        "training_labeled": [entry(c, True) for c in labeled],
        "training_unlabeled": [entry(c, False) for c in train if c not in chosen],
        "validation": [],
        "test": [entry(c, True) for c in split["test"]],
        "meta": {
            "dataset": "la2018",
            "form": form,
            "dataset_dir": str(root),
            "split": str(split_file) if split_file else "published (UA-MT train.list / test.list)",
            "labeled_count": n,
            "labeled_selection": labeled_selection,
            "seed": int(seed),
            "n_train": len(train),
            "n_test": len(split["test"]),
        },
    }
