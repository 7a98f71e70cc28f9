"""The run record: what a bundle run writes into its folder so that it can be repeated, compared and evaluated.

One schema, written and read here only:

- ``config.json``: the bundle config as run, every config file merged and every override applied; runnable with
  ``python -m monai.bundle run --config_file <run_dir>/config.json --workflow_name dycon_monai.bundle.DyconWorkflow``.
- ``run_info.json``: the config's ``run_summary`` (resolved values of the main settings) at its top level, plus
  ``seed``, ``config_files``, ``overrides``, ``cwd``, ``started``, ``world_size``, ``versions`` and ``config_file``.
- ``datalist.json`` (when the config has a ``run_datalist``): the cases of every split the run used.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dycon_monai.utils.dist import rank_and_world_size
from dycon_monai.utils.io import atomic_write_json

__all__ = [
    "CONFIG_FILENAME",
    "DATALIST_FILENAME",
    "RUN_INFO_FILENAME",
    "read_run_record",
    "summarize_datalists",
    "training_run_info",
    "write_run_record",
]

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.json"
RUN_INFO_FILENAME = "run_info.json"
DATALIST_FILENAME = "datalist.json"

# what an evaluation takes over from the run record of the training run that made the model
_TRAINING_KEYS = (
    "method",
    "dataset",
    "labeled_fraction",
    "labeled_cases",
    "unlabeled_cases",
    "fold",
    "seed",
    "max_iterations",
    "dataset_dir",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("monai", "numpy", "ignite", "nibabel", "dycon_monai"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            continue
    return versions


def summarize_datalists(splits: Mapping[str, Sequence[Any] | None], required: str | None = None) -> dict[str, int]:
    """Log how many cases each split holds; stop when the ``required`` split is empty.

    Args:
        splits: split name -> datalist items, e.g. the config's ``run_datalist``.
        required: a split that must not be empty (``"training_labeled"`` for training).

    Returns:
        Split name -> number of cases.

    Raises:
        ValueError: ``required`` is empty.
    """
    counts = {name: len(items) if items is not None else 0 for name, items in splits.items()}
    logger.info("Cases per split: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    if required is not None and counts.get(required, 0) == 0:
        raise ValueError(
            f"The {required} split is empty: raise --labeled_fraction / --labeled_count or check the datalist "
            f"(cases per split: {counts})."
        )
    return counts


def write_run_record(
    run_dir: str | os.PathLike,
    config: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
    datalist: Mapping[str, Any] | None = None,
    seed: int | None = None,
    config_files: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write the run record into ``run_dir`` (rank 0 only under ``torch.distributed``); every file atomically.

    Args:
        run_dir: the run's folder.
        config: the raw config as run (merged, overrides applied), for ``config.json``.
        summary: resolved values of the main settings, the top level of ``run_info.json``.
        datalist: split name -> items, for ``datalist.json``.
        seed: the run's random seed.
        config_files: the config files given to the run.
        overrides: the overrides given to the run (command line, ``args_file`` or Python).

    Returns:
        The path of ``run_info.json``.
    """
    folder = Path(run_dir)
    rank, world = rank_and_world_size()
    if rank != 0:
        return folder / RUN_INFO_FILENAME
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / CONFIG_FILENAME, _jsonable(config))
    info = {
        **dict(summary or {}),
        "seed": seed,
        "config_files": [str(f) for f in config_files],
        "overrides": dict(overrides or {}),
        "cwd": str(Path.cwd()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": world,
        "versions": _package_versions(),
        "config_file": CONFIG_FILENAME,
    }
    atomic_write_json(folder / RUN_INFO_FILENAME, _jsonable(info))
    if datalist is not None:
        atomic_write_json(folder / DATALIST_FILENAME, _jsonable(datalist))
    logger.info("Run record (config, seed %s, datalist) written to %s", seed, folder)
    return folder / RUN_INFO_FILENAME


def _read_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}.")
    return obj


def read_run_record(run_dir: str | os.PathLike, scalars_only: bool = False) -> dict[str, Any]:
    """The run record of ``run_dir``: ``run_info.json`` over the top level of ``config.json``.

    Args:
        run_dir: a run folder (missing files give an empty record).
        scalars_only: keep only values that are not lists or dicts.

    Raises:
        ValueError: a record file is not a JSON object.
    """
    record: dict[str, Any] = {}
    for name in (CONFIG_FILENAME, RUN_INFO_FILENAME):  # run_info.json holds the resolved values: it wins
        path = Path(run_dir) / name
        if path.is_file():
            record.update(_read_object(path))
    if scalars_only:
        record = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    return record


def training_run_info(model_path: str | os.PathLike, **fallback: Any) -> dict[str, Any]:
    """Describe the training run that produced ``model_path``, for an evaluation's summary.

    When ``model_path`` is ``<run_dir>/models/model.pt`` of a bundle run, the method, dataset, labeled fraction,
    fold, seed and sizes come from that run's record; otherwise (and for missing entries) ``fallback`` is used.

    Returns:
        ``fallback`` updated from the record, plus ``model_path`` and ``training_run`` (the run folder or ``None``).
    """
    info: dict[str, Any] = dict(fallback)
    path = Path(str(model_path)).absolute()
    run_dir = path.parent.parent
    info["model_path"] = str(path)
    info["training_run"] = None
    if (run_dir / RUN_INFO_FILENAME).is_file():
        try:
            record = _read_object(run_dir / RUN_INFO_FILENAME)
        except (OSError, ValueError):
            record = {}
        info.update({k: record[k] for k in _TRAINING_KEYS if k in record})
        info["training_run"] = str(run_dir)
    return _jsonable(info)
