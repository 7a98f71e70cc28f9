"""Run folders: every bundle run writes into a new folder of its own.

:func:`plan_run_dir` gives the path (the configs' ``run_dir``), :func:`make_run_dir` creates it when the run starts
(:class:`~dycon_monai.bundle.DyconWorkflow` calls it in ``initialize``). A named run never silently replaces an
earlier one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dycon_monai.utils.dist import broadcast_from_rank0, rank_and_world_size
from dycon_monai.utils.flags import as_bool
from dycon_monai.utils.run_record import RUN_INFO_FILENAME

__all__ = ["make_run_dir", "plan_run_dir"]

logger = logging.getLogger(__name__)


def _timestamped_name(prefix: str) -> str:
    return f"{prefix}_{time.strftime('%Y%m%d-%H%M%S')}"


def _plan_run_dir_local(output_dir: Path, name: str | None, prefix: str) -> Path:
    if name:
        return output_dir / name
    base = _timestamped_name(prefix)
    for attempt in range(1, 1000):
        candidate = output_dir / (base if attempt == 1 else f"{base}_{attempt}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"Could not find a free run directory name {base}_N under {output_dir}.")


def _make_run_dir_local(output_dir: Path, name: str | None, prefix: str, overwrite: bool) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    if not name:
        base = _timestamped_name(prefix)
        for attempt in range(1, 1000):
            candidate = output_dir / (base if attempt == 1 else f"{base}_{attempt}")
            try:
                candidate.mkdir(parents=False, exist_ok=False)  # atomic: two runs never share a folder
                return candidate
            except FileExistsError:
                continue
        raise FileExistsError(f"Could not create a new run directory named {base}_N under {output_dir}.")

    run_dir = output_dir / str(name)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"Run directory {run_dir} exists and is a file, not a folder. Choose another run_name.")
    contents = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if contents:
        listing = ", ".join(contents[:8]) + (", ..." if len(contents) > 8 else "")
        if not overwrite:
            raise FileExistsError(
                f"Run directory {run_dir} already holds the outputs of an earlier run ({listing}). "
                "Refusing to overwrite them. Leave run_name unset to get a new time-stamped directory, "
                "choose another --run_name, or pass --overwrite true to replace that run."
            )
        if RUN_INFO_FILENAME not in contents:
            raise FileExistsError(
                f"--overwrite true was given, but {run_dir} is not a run directory of this bundle "
                f"(it has no {RUN_INFO_FILENAME}; it holds {listing}). Refusing to delete it; choose another "
                "--run_name or --output_dir."
            )
        logger.warning("--overwrite true: removing the earlier run in %s", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _run_name(name: str | None) -> str | None:
    return None if name in (None, "", "None", "null") else str(name)


def _path_from_rank0(make: Any, what: str) -> str:
    """Run ``make() -> Path`` on rank 0 and return its result as a string on every rank (errors too)."""
    rank, _ = rank_and_world_size()
    result: tuple[str, str]
    if rank == 0:
        try:
            result = ("ok", str(make()))
        except Exception as err:  # handed to the other ranks so that none of them waits forever
            result = ("error", f"{type(err).__name__}: {err}")
            broadcast_from_rank0(result)
            raise
    else:
        result = ("", "")
    status, value = broadcast_from_rank0(result)
    if status != "ok":
        raise FileExistsError(f"rank 0 could not {what}: {value}")
    return value


def plan_run_dir(output_dir: str | os.PathLike, name: str | None = None, prefix: str = "run") -> str:
    """The absolute path the next run will use, without creating anything.

    Without ``name`` the folder is ``<output_dir>/<prefix>_<YYYYmmdd-HHMMSS>`` (``_2``, ``_3``... appended when that
    is taken now); with ``name`` it is ``<output_dir>/<name>``. The bundle configs' ``run_dir`` is this path:
    components can be built with it (MONAI Label builds ``inference.json``'s post-processing for every model it
    loads, without running anything), and :class:`~dycon_monai.bundle.DyconWorkflow` creates the folder with
    :func:`make_run_dir` when the run starts. Under ``torch.distributed`` every rank gets rank 0's path.

    Args:
        output_dir: parent folder of all runs.
        name: folder name of this run (``--run_name``); ``None`` or ``""`` for a new time-stamped name.
        prefix: first part of a time-stamped name, e.g. ``"dycon"`` or ``"eval_test"``.
    """
    name = _run_name(name)
    root = Path(output_dir).expanduser().absolute()
    value = _path_from_rank0(lambda: _plan_run_dir_local(root, name, prefix), "choose the run directory")
    logger.debug("Run directory (created when the run starts): %s", value)
    return value


def make_run_dir(run_dir: str | os.PathLike, name: str | None = None, overwrite: bool | str = False) -> str:
    """Create the run folder planned by :func:`plan_run_dir`; an earlier run is never touched by accident.

    A named run (``name`` given, i.e. ``--run_name``) whose folder already holds files is refused unless
    ``overwrite`` is true, and then only if that folder is a run folder of these bundles (it holds a run record,
    ``run_info.json``), which is deleted first. A time-stamped folder must not exist yet: if another run took the
    same name in the meantime, the call stops instead of sharing the folder. Under ``torch.distributed`` rank 0
    creates the folder and an error on rank 0 is raised on every rank.

    Args:
        run_dir: the planned path (``@run_dir``).
        name: the run's ``run_name`` (``None`` for a time-stamped folder).
        overwrite: replace an earlier named run (bool or "true"/"false").

    Returns:
        The absolute path of the new, empty run folder.

    Raises:
        FileExistsError: the named folder holds an earlier run and ``overwrite`` is false, or it is not a run
            folder of these bundles, or the time-stamped folder exists already.
    """
    overwrite = as_bool(overwrite, "overwrite")
    path = Path(run_dir).expanduser().absolute()

    def make() -> Path:
        if _run_name(name):
            return _make_run_dir_local(path.parent, path.name, "run", overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            raise FileExistsError(
                f"Run directory {path} was created by another run that started in the same second. Start this run "
                "again (it gets a new name) or choose a --run_name."
            ) from None
        return path

    value = _path_from_rank0(make, "create the run directory")
    logger.info("Run directory: %s", value)
    return value
