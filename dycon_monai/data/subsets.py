"""Published split lists, user split files and labeled subsets: the pieces every dataset module shares.

A dataset module (LA 2018, BraTS 2019, Pancreas-CT) reads its published split with :func:`read_split_list`, a
user's ``split_file`` with :func:`load_split_file`, checks it against the folder with :func:`check_disjoint` and
:func:`keep_present`, and splits its training cases into a labeled subset and the unlabeled rest with
:func:`labeled_count_of` and :func:`choose_labeled`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Union

import numpy as np

from .isles22_layout import DataError, MissingFileError

__all__ = [
    "LABELED_SELECTIONS",
    "check_disjoint",
    "choose_labeled",
    "keep_present",
    "labeled_count_of",
    "load_split_file",
    "read_split_list",
]

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

#: how the labeled subset is drawn: at random with the seed, or the first cases of the training list
LABELED_SELECTIONS = ("random", "first")


def read_split_list(name: str) -> list[str]:
    """The non-empty lines of the package-data file ``dycon_monai/data/splits/<name>``."""
    text = resources.files("dycon_monai.data").joinpath("splits", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_split_file(
    path: PathLike, keys: Sequence[str] = ("train", "test"), optional: Sequence[str] = (), aliases: dict | None = None
) -> dict[str, list[str]]:
    """A user's JSON split file, ``{"train": [case ids], "test": [case ids], ...}``.

    Args:
        path: the file.
        keys: the lists it must hold.
        optional: lists it may hold (empty when absent).
        aliases: another accepted name per key, e.g. ``{"val": "validation"}``.

    Raises:
        MissingFileError: the file does not exist.
        DataError: it is not JSON, or not an object with the required lists.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"split_file {path} does not exist", path=path)
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"split_file {path} is not valid JSON: {e}", path=path) from e
    if isinstance(split, dict):
        for key, alias in (aliases or {}).items():
            if alias in split and key not in split:
                split[key] = split[alias]
    names = [*keys, *optional]
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in keys):
        shape = ", ".join(f'"{k}": [case ids]' for k in names)
        raise DataError(f"split_file {path} must be {{{shape}}}", path=path)
    return {k: [str(c) for c in split.get(k, [])] for k in names}


def labeled_count_of(n_train: int, labeled_count: Any, labeled_fraction: float | None) -> int:
    """How many of ``n_train`` training cases are labeled: ``labeled_count`` (an integer, or ``"all"`` / ``None``
    for all) or ``labeled_fraction`` (in (0, 1], rounded half up, at least 1), not both.

    Raises:
        DataError: both given, a fraction outside (0, 1], a non-integer count, or a count outside 1..n_train.
    """
    if labeled_fraction is not None:
        if labeled_count not in (None, "all"):
            raise DataError(f"give labeled_count ({labeled_count!r}) or labeled_fraction ({labeled_fraction!r})")
        f = float(labeled_fraction)
        if not 0.0 < f <= 1.0:
            raise DataError(f"labeled_fraction must be in (0, 1]; got {labeled_fraction!r}")
        return max(1, int(np.floor(f * n_train + 0.5)))
    if labeled_count is None or str(labeled_count).lower() == "all":
        return n_train
    if isinstance(labeled_count, float) and not labeled_count.is_integer():
        raise DataError(f"labeled_count must be an integer or 'all'; got {labeled_count!r}")
    n = int(labeled_count)
    if not 1 <= n <= n_train:
        raise DataError(f"labeled_count={labeled_count!r} is impossible with {n_train} training cases")
    return n


def choose_labeled(train: Sequence[str], n: int, seed: int = 0, selection: str = "random") -> list[str]:
    """``n`` labeled cases of ``train``: drawn with ``numpy.random.default_rng(seed)`` (``"random"``, in list
    order) or the first ``n`` (``"first"``, the released scripts' choice).

    Raises:
        ValueError: an unknown ``selection``.
    """
    if selection not in LABELED_SELECTIONS:
        raise ValueError(f"labeled_selection must be one of {LABELED_SELECTIONS}; got {selection!r}")
    train = list(train)
    if selection == "first":
        return train[:n]
    rng = np.random.default_rng(int(seed))
    return [train[i] for i in sorted(rng.choice(len(train), size=n, replace=False).tolist())]


def check_disjoint(split: dict[str, list[str]]) -> None:
    """Raise :class:`DataError` naming the cases that are in two parts of ``split`` (``{"train": [...], ...}``)."""
    parts = list(split)
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            both = sorted(set(split[a]) & set(split[b]))
            if both:
                raise DataError(f"cases in both the {a} and the {b} split: {both[:10]}")


def keep_present(
    split: dict[str, list[str]],
    found: Any,
    root: PathLike,
    source: str,
    expected: str,
    allow_missing: bool | None = False,
) -> tuple[dict[str, list[str]], list[str]]:
    """``(split, missing)``: the split's cases that are in ``found`` (ids of the cases in the folder), and the others.

    Args:
        split: parts of the split, each a list of case ids.
        found: the case ids present (any container).
        root: the folder scanned (named in the error).
        source: what the split is (``"split file"``, ``"published LA split"``, ...; named in the error).
        expected: the layout a case should have, for the error message.
        allow_missing: keep the present cases and log the others instead of raising; ``None`` for a dataset that
            has no such option (the error then does not suggest it).

    Raises:
        MissingFileError: a case is missing and ``allow_missing`` is false (every missing id is counted, the
            first ten named).
    """
    missing = [c for part in split.values() for c in part if c not in found]
    if not missing:
        return split, []
    if not allow_missing:
        hint = "" if allow_missing is None else "; pass allow_missing=True to use only the cases present"
        raise MissingFileError(
            f"{len(missing)} case(s) of the {source} are not in {root}: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (expected {expected}{hint})",
            path=root,
        )
    logger.warning("allow_missing: %d case(s) of the %s are not in %s and are left out", len(missing), source, root)
    return {k: [c for c in v if c in found] for k, v in split.items()}, missing
