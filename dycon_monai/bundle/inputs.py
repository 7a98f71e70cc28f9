"""The inference datalist: new images given as a folder, one file or a list of files."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["find_images"]

logger = logging.getLogger(__name__)


def find_images(
    dataset_dir: str | os.PathLike | Sequence[str | os.PathLike], pattern: str = "**/*_dwi.nii*"
) -> list[dict[str, str]]:
    """The inference datalist ``[{"image": path}, ...]`` for new images.

    Args:
        dataset_dir: a folder (searched with ``pattern``), one image file, or a list of image files.
        pattern: glob pattern below the folder; ``"**/*_dwi.nii*"`` finds the DWI of an ISLES'22-layout folder,
            ``"*.nii.gz"`` every NIfTI file of a flat folder.

    Raises:
        FileNotFoundError: a listed file does not exist, or the folder holds no file matching ``pattern``.
    """
    if isinstance(dataset_dir, (list, tuple)):
        files = [Path(str(f)).expanduser() for f in dataset_dir]
    else:
        root = Path(str(dataset_dir)).expanduser()
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(Path(f) for f in glob.glob(str(root / pattern), recursive=True) if Path(f).is_file())
            if not files:
                raise FileNotFoundError(
                    f"No image matching '{pattern}' under {root}. Pass --image_pattern '*.nii.gz' for a flat folder "
                    "of NIfTI files, or --dataset_dir with one image file."
                )
        else:
            raise FileNotFoundError(
                f"dataset_dir '{dataset_dir}' does not exist: pass a folder of images (--dataset_dir DIR "
                "--image_pattern '*.nii.gz'), one image file, or a list of files."
            )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"Image file(s) not found: {', '.join(missing[:5])}.")
    logger.info("Inference on %d image(s)", len(files))
    return [{"image": str(f.absolute())} for f in files]
