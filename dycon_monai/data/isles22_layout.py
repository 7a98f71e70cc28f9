"""The ISLES'22 folder layout: where each file of a case lives, how a root is scanned, and the quick check.

Layout (BIDS-like, as released by the challenge)::

    ROOT/rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz   (required)
    ROOT/rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_adc.nii.gz   (optional)
    ROOT/rawdata/sub-strokecaseXXXX/ses-0001/anat/sub-strokecaseXXXX_ses-0001_FLAIR.nii.gz (optional)
    ROOT/derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz    (lesion mask)

Non-image files (JSON sidecars, ``participants.tsv``, ``dataset_description.json`` ...) and hidden files are
ignored; ``.nii`` is accepted as well as ``.nii.gz``. Anything else that looks like data but does not fit (a
NIfTI with an unknown suffix or another case's name, a folder that is not a case, two files for one modality,
a mask without a case) is an error naming the path. :func:`case_paths` is where every writer of this layout
(the synthetic cohort) gets its file names; :func:`scan_isles22` reads a root and checks it, :func:`case_folders`
only lists its cases; :func:`check_dataset` is the bundles' quick check of a ``dataset_dir`` before anything is
built.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Union

__all__ = [
    "CASE_RE",
    "DERIVATIVES",
    "DataError",
    "DatasetNotFoundError",
    "LAYOUT",
    "MODALITIES",
    "MissingFileError",
    "RAWDATA",
    "ScannedCase",
    "case_folders",
    "case_id",
    "case_paths",
    "check_dataset",
    "holds_dataset",
    "scan_isles22",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

CASE_RE = re.compile(r"^sub-strokecase\d{4}$")
SESSION_RE = re.compile(r"^ses-[A-Za-z0-9]+$")

#: folder of the images (one sub-folder per case) and folder of the lesion masks, under the root
RAWDATA = "rawdata"
DERIVATIVES = "derivatives"
DEFAULT_SESSION = "ses-0001"
#: modality name -> (sub-folder of the session, file suffix)
MODALITIES: dict[str, tuple[str, str]] = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
_MASK_SUFFIX = "msk"


class DataError(ValueError):
    """A dataset problem: the message names the case, the file and what was expected."""

    def __init__(self, message: str, case_id: str | None = None, path: PathLike | None = None):
        super().__init__(message)
        self.case_id = case_id
        self.path = None if path is None else str(path)


class MissingFileError(DataError, FileNotFoundError):
    """A file the datalist needs (an image, or the mask of a case that must be labeled) is absent."""


@dataclass
class ScannedCase:
    """Files of one case found under an ISLES'22 root.

    Attributes:
        case_id: ``sub-strokecaseXXXX``.
        session: session folder name (``ses-0001``).
        images: modality -> path, for every modality found.
        label: path of the lesion mask, or ``None`` when the case has none.
    """

    case_id: str
    session: str
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None


def _is_nifti(name: str) -> bool:
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def _ignored(name: str) -> bool:
    return name.startswith(".")


def _expected_name(cid: str, ses: str, suffix: str) -> str:
    return f"{cid}_{ses}_{suffix}.nii.gz"


def case_id(index: int) -> str:
    """ISLES'22 case id for a 1-based index, e.g. ``sub-strokecase0007``."""
    return f"sub-strokecase{index:04d}"


def _relative_paths(cid: str, session: str) -> dict[str, PurePosixPath]:
    paths = {
        mod: PurePosixPath(RAWDATA, cid, session, folder, _expected_name(cid, session, suffix))
        for mod, (folder, suffix) in MODALITIES.items()
    }
    paths["label"] = PurePosixPath(DERIVATIVES, cid, session, _expected_name(cid, session, _MASK_SUFFIX))
    return paths


def case_paths(root: PathLike, cid: str, session: str = DEFAULT_SESSION) -> dict[str, Path]:
    """Where the files of case ``cid`` live under ``root``: modality name -> path, plus ``"label"`` (the mask)."""
    return {key: Path(root) / rel for key, rel in _relative_paths(cid, session).items()}


def case_folders(root: PathLike) -> list[Path]:
    """The case folders (``sub-strokecaseXXXX``) in ``root/rawdata/``, sorted, without checking the layout.

    :func:`scan_isles22` is the strict reader; this only lists (an empty list when there is no ``rawdata/``).
    """
    raw = Path(root) / RAWDATA
    if not raw.is_dir():
        return []
    return sorted(p for p in raw.iterdir() if p.is_dir() and CASE_RE.match(p.name))


def holds_dataset(root: PathLike) -> bool:
    """Whether ``root`` already holds an ISLES'22 ``rawdata/`` or ``derivatives/`` folder (or file)."""
    return (Path(root) / RAWDATA).exists() or (Path(root) / DERIVATIVES).exists()


def _layout_lines(root: str, cid: str) -> tuple[str, str]:
    """The DWI and mask paths of one case under ``root``, written with ``/``, for messages."""
    rel = _relative_paths(cid, DEFAULT_SESSION)
    return f"{root}/{rel['dwi']}", f"{root}/{rel['label']}"


_DWI_EXAMPLE, _MASK_EXAMPLE = _layout_lines("<dataset_dir>", case_id(1))
#: the layout, as shown in error messages
LAYOUT = f"  {_DWI_EXAMPLE}   (+ _adc, anat/_FLAIR)\n  {_MASK_EXAMPLE}"


def scan_isles22(root: PathLike) -> dict[str, ScannedCase]:
    """Find every case and file under an ISLES'22 root, checking the layout (not the file contents).

    Args:
        root: the folder holding ``rawdata/`` (and ``derivatives/`` for the masks).

    Returns:
        case id -> :class:`ScannedCase`, sorted by case id.

    Raises:
        MissingFileError: no ``rawdata/`` folder, no case, or a case without a session folder.
        DataError: a stray or duplicate file or folder (the message names it and what was expected).
    """
    root = Path(root)
    raw = root / RAWDATA
    if not raw.is_dir():
        dwi, mask = _layout_lines("ROOT", "sub-strokecaseXXXX")
        raise MissingFileError(
            f"{root} is not an ISLES'22 root: no '{RAWDATA}' folder. Expected {dwi} and {mask} "
            "(make a synthetic one with: python -m dycon_monai.data.synthetic --out DIR)",
            path=raw,
        )
    cases: dict[str, ScannedCase] = {}
    for entry in sorted(raw.iterdir()):
        if _ignored(entry.name):
            continue
        if entry.is_dir():
            if not CASE_RE.match(entry.name):
                raise DataError(
                    f"stray folder {entry}: every folder in rawdata/ must be a case named sub-strokecaseXXXX "
                    "(4 digits); move or rename it",
                    path=entry,
                )
            cases[entry.name] = _scan_raw_case(entry)
        elif _is_nifti(entry.name):
            raise DataError(
                f"stray image {entry}: images belong in rawdata/<case>/<session>/dwi/ or anat/, not in rawdata/",
                path=entry,
            )
    if not cases:
        raise MissingFileError(f"no case folders (sub-strokecaseXXXX) in {raw}", path=raw)

    der = root / DERIVATIVES
    if der.is_dir():
        for entry in sorted(der.iterdir()):
            if _ignored(entry.name):
                continue
            if entry.is_dir() and CASE_RE.match(entry.name):
                if entry.name not in cases:
                    raise DataError(
                        f"stray mask folder {entry}: case {entry.name} has no images in {raw}",
                        case_id=entry.name,
                        path=entry,
                    )
                _scan_mask_case(entry, cases[entry.name])
            elif entry.is_dir() or _is_nifti(entry.name):
                raise DataError(
                    f"stray entry {entry}: derivatives/ must only hold case folders "
                    "sub-strokecaseXXXX/<session>/sub-strokecaseXXXX_<session>_msk.nii.gz",
                    path=entry,
                )
    return cases


def _single_session(case_dir: Path, cid: str) -> Path:
    sessions = [p for p in sorted(case_dir.iterdir()) if not _ignored(p.name) and p.is_dir()]
    bad = [p for p in sessions if not SESSION_RE.match(p.name)]
    if bad:
        raise DataError(f"stray folder {bad[0]} in case {cid}: expected a session folder ses-XXXX", cid, bad[0])
    if not sessions:
        raise MissingFileError(
            f"case {cid} has no session folder (expected {case_dir}/{DEFAULT_SESSION}/)", cid, case_dir
        )
    if len(sessions) > 1:
        raise DataError(
            f"case {cid} has {len(sessions)} sessions ({', '.join(p.name for p in sessions)}) in {case_dir}; "
            f"expected one (ISLES'22 has {DEFAULT_SESSION} only)",
            cid,
            case_dir,
        )
    stray = [p for p in sorted(case_dir.iterdir()) if p.is_file() and _is_nifti(p.name)]
    if stray:
        raise DataError(f"stray image {stray[0]} in case {cid}: images belong in the session folder", cid, stray[0])
    return sessions[0]


def _scan_raw_case(case_dir: Path) -> ScannedCase:
    cid = case_dir.name
    ses_dir = _single_session(case_dir, cid)
    ses = ses_dir.name
    case = ScannedCase(case_id=cid, session=ses)
    by_suffix = {suffix: (mod, folder) for mod, (folder, suffix) in MODALITIES.items()}
    for path in sorted(ses_dir.rglob("*")):
        if not path.is_file() or not _is_nifti(path.name) or any(_ignored(p) for p in path.relative_to(ses_dir).parts):
            continue
        stem = _stem(path.name)
        prefix = f"{cid}_{ses}_"
        suffix = stem[len(prefix) :] if stem.startswith(prefix) else None
        if suffix not in by_suffix:
            expected = ", ".join(_expected_name(cid, ses, s) for s in by_suffix)
            raise DataError(f"stray image {path} in case {cid}: expected one of {expected}", cid, path)
        mod, folder = by_suffix[suffix]
        if path.parent != ses_dir / folder:
            raise DataError(
                f"image {path} of case {cid} is in the wrong folder: expected {ses_dir / folder}/", cid, path
            )
        if mod in case.images:
            raise DataError(
                f"duplicate {mod} images for case {cid}: {case.images[mod]} and {path}; keep exactly one", cid, path
            )
        case.images[mod] = path
    return case


def _scan_mask_case(case_dir: Path, case: ScannedCase) -> None:
    cid = case.case_id
    ses_dir = _single_session(case_dir, cid)
    if ses_dir.name != case.session:
        raise DataError(
            f"mask session {ses_dir} of case {cid} does not match its image session {case.session}", cid, ses_dir
        )
    expected = _expected_name(cid, case.session, _MASK_SUFFIX)
    for path in sorted(ses_dir.rglob("*")):
        if not path.is_file() or not _is_nifti(path.name) or any(_ignored(p) for p in path.relative_to(ses_dir).parts):
            continue
        if _stem(path.name) != f"{cid}_{case.session}_{_MASK_SUFFIX}" or path.parent != ses_dir:
            raise DataError(
                f"stray image {path} in the masks of case {cid}: expected only {ses_dir / expected}", cid, path
            )
        if case.label is not None:
            raise DataError(f"duplicate masks for case {cid}: {case.label} and {path}; keep exactly one", cid, path)
        case.label = path


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder given to a bundle holds no readable ISLES'22-layout data."""


def check_dataset(dataset_dir: PathLike | None, demo_command: str = "make demo") -> str:
    """Check that ``dataset_dir`` holds ISLES'22-layout data and return its absolute path.

    Looks for ``rawdata/sub-*/ses-*/**/*_dwi.nii[.gz]`` and ``derivatives/sub-*/ses-*/*_msk.nii[.gz]``. Reading
    the images themselves (and reporting unreadable ones by name) is left to :func:`scan_isles22` and the data
    loader.

    Args:
        dataset_dir: the root folder given with ``--dataset_dir``.
        demo_command: how to run the demo instead, shown in the error message.

    Raises:
        DatasetNotFoundError: the folder is missing or holds no DWI images or no masks; the message shows the
            expected layout, how to pass the folder and how to run the demo on synthetic data.
    """
    if dataset_dir is None or str(dataset_dir).strip() == "":
        problem = "no dataset_dir was given"
    else:
        root = Path(str(dataset_dir)).expanduser()
        dwi_name, mask_name = f"*_{MODALITIES['dwi'][1]}.nii*", f"*_{_MASK_SUFFIX}.nii*"
        dwi = glob.glob(str(root / RAWDATA / "sub-*" / "ses-*" / "**" / dwi_name), recursive=True)
        masks = glob.glob(str(root / DERIVATIVES / "sub-*" / "ses-*" / "**" / mask_name), recursive=True)
        if not root.is_dir():
            problem = f"dataset_dir '{dataset_dir}' does not exist or is not a folder"
        elif not (root / RAWDATA).is_dir():
            problem = f"dataset_dir '{dataset_dir}' has no {RAWDATA}/ folder"
        elif not dwi:
            problem = f"dataset_dir '{dataset_dir}' has no DWI images ({dwi_name[:-1]}.gz) under {RAWDATA}/sub-*/ses-*/"
        elif not masks:
            problem = f"dataset_dir '{dataset_dir}' has no lesion masks ({mask_name[:-1]}.gz) under {DERIVATIVES}/sub-*/ses-*/"
        else:
            logger.info("Dataset %s: %d DWI images, %d masks", root, len(dwi), len(masks))
            return str(root.absolute())
    raise DatasetNotFoundError(
        f"No readable ISLES'22 dataset: {problem}.\n"
        f"Expected the layout of the ISLES'22 release:\n{LAYOUT}\n"
        "Pass its root with --dataset_dir DIR. To try the bundle without ISLES'22, run "
        f"`{demo_command}` (it builds a synthetic cohort in this layout, trains on it and evaluates)."
    )
