"""Run directories and the run-time checks of the ``dycon_isles`` bundle.

Every function here is meant to be called from a bundle config expression (``"$dycon_monai.utils.run_dir..."``):

- :func:`create_run_dir` gives every run a new output folder and refuses to reuse one that holds an earlier run's
  outputs unless ``--overwrite true`` is given.
- :func:`save_run_config` writes the merged config (every override applied), the seed and the resolved top-level
  values into the run folder, so that a run can be repeated exactly.
- :func:`check_overrides` stops a ``python -m monai.bundle run`` whose command line names a config key that the
  bundle does not define (a typo would otherwise be added silently as a new, unused key), and makes such a run end
  any error with a one-line summary of its root cause (:func:`install_error_summary`).
- :func:`check_dataset` stops at once, naming the expected ISLES'22 layout and the demo command, when the dataset
  folder holds no readable data.
- :func:`resolve_bundle_root` finds the bundle folder from the config file that is being run, so the bundle works
  from the repository root as well as from inside the bundle.
- :func:`unlabeled_training_data` gives the unlabeled stream: the datalist's unlabeled split when the labeled data
  comes from ``dataset_dir``, the labeled images without their labels when the labeled data is given directly (as
  MONAI Label does).
- :func:`publish_model` copies a run's inference weights to ``<bundle_root>/models/model.pt``, only when asked to
  (MONAI Label serves that file).
"""

from __future__ import annotations

import ast
import difflib
import glob
import inspect
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dycon_monai.utils.dist import broadcast_from_rank0, rank_and_world_size
from dycon_monai.utils.flags import as_bool
from dycon_monai.utils.io import atomic_copyfile, atomic_torch_save, atomic_write_json

__all__ = [
    "RUN_INFO_FILENAME",
    "CONFIG_FILENAME",
    "DatasetNotFoundError",
    "as_bool",
    "active_config",
    "check_dataset",
    "check_model_path",
    "check_overrides",
    "close_log_file",
    "create_run_dir",
    "find_images",
    "install_error_summary",
    "log_to_file",
    "make_run_dir",
    "publish_model",
    "resolve_bundle_root",
    "save_run_config",
    "summarize_datalists",
    "training_run_info",
    "unlabeled_training_data",
]

logger = logging.getLogger(__name__)

RUN_INFO_FILENAME = "run_info.json"
CONFIG_FILENAME = "config.json"

# named arguments of `python -m monai.bundle run`; everything else on its command line is a config override
_RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
)
# keys that `--tracking mlflow` adds to the config (monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS)
_TRACKING_KEYS = frozenset(
    {
        "tracking_uri",
        "experiment_name",
        "run_name",
        "save_execute_config",
        "is_not_rank0",
        "trainer",
        "validator",
        "evaluator",
        "handlers_id",
        "configs",
    }
)

_ISLES22_LAYOUT = """\
  <dataset_dir>/rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz   (+ _adc, anat/_FLAIR)
  <dataset_dir>/derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz"""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder given to the bundle holds no readable ISLES'22-layout data."""


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


def create_run_dir(
    output_dir: str | os.PathLike,
    name: str | None = None,
    prefix: str = "run",
    overwrite: bool | str = False,
    create: bool | str = True,
) -> str:
    """Create the output folder of one run and return its absolute path.

    Without ``name`` the folder is ``<output_dir>/<prefix>_<YYYYmmdd-HHMMSS>`` (``_2``, ``_3``... appended if that
    exists), created atomically, so an earlier run is never touched. With ``name`` the folder is
    ``<output_dir>/<name>``; if it already holds files the call refuses, unless ``overwrite`` is true, in which
    case the earlier run (recognised by its ``run_info.json``) is deleted first.

    With ``create=False`` nothing is created or checked: the call only returns the path the run will use (for a
    time-stamped name, the first one not taken now). A config whose ``run_dir`` is read by components that are built
    without running the workflow (MONAI Label builds ``inference.json``'s post-processing for every model it loads)
    uses this, and creates the folder in its ``initialize`` step with :func:`make_run_dir`.

    Under ``torch.distributed`` rank 0 creates the folder and every rank returns the same path; an error on rank 0
    is raised on every rank.

    Args:
        output_dir: parent folder of all runs (created if missing).
        name: folder name of this run; ``None`` or ``""`` for a new time-stamped name.
        prefix: first part of a time-stamped name, e.g. ``"train"`` or ``"eval"``.
        overwrite: allow replacing an existing run of the same ``name`` (bool or "true"/"false").
        create: false to only plan the path (see above).

    Returns:
        The absolute path of the new, empty run folder (of the folder to create, with ``create=False``).

    Raises:
        FileExistsError: the named folder holds an earlier run and ``overwrite`` is false, or it is not a run
            folder of this bundle.
    """
    overwrite = as_bool(overwrite, "overwrite")
    name = _run_name(name)
    root = Path(output_dir).expanduser().absolute()
    if not as_bool(create, "create"):
        value = _path_from_rank0(lambda: _plan_run_dir_local(root, name, prefix), "choose the run directory")
        logger.debug("Run directory (created when the run starts): %s", value)
        return value
    value = _path_from_rank0(lambda: _make_run_dir_local(root, name, prefix, overwrite), "create the run directory")
    logger.info("Run directory: %s", value)
    return value


def make_run_dir(run_dir: str | os.PathLike, name: str | None = None, overwrite: bool | str = False) -> str:
    """Create the run folder planned by ``create_run_dir(..., create=False)``, with the same rules.

    A named run (``name`` given, i.e. ``--run_name``) gets the checks of :func:`create_run_dir`: an existing folder
    holding files is refused unless ``overwrite`` is true (and then only if it is a run folder of this bundle). A
    time-stamped folder must not exist yet: if another run took the same name in the meantime, the call stops
    instead of sharing the folder.

    Args:
        run_dir: the planned path (``@run_dir``).
        name: the run's ``run_name`` (``None`` for a time-stamped folder).
        overwrite: as for :func:`create_run_dir`.

    Returns:
        The absolute path of the new, empty run folder.

    Raises:
        FileExistsError: as for :func:`create_run_dir`, or the time-stamped folder exists already.
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


def _frames_locals_self() -> list[Any]:
    found = []
    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            if obj is not None:
                found.append(obj)
            frame = frame.f_back
    finally:
        del frame
    return found


def _active_parser() -> Any | None:
    from monai.bundle import ConfigParser

    for obj in _frames_locals_self():
        if isinstance(obj, ConfigParser):
            return obj
    return None


def active_config() -> dict | None:
    """The raw config (every file merged, every override applied) of the bundle being parsed right now.

    Found by looking up the call stack for the ``monai.bundle.ConfigParser`` that evaluates the calling config
    expression. Returns ``None`` when called outside a bundle config.
    """
    parser = _active_parser()
    if parser is None:
        return None
    return parser.get()


def _argv_config_files(argv: Sequence[str]) -> list[str]:
    for i, token in enumerate(argv):
        value = None
        if token.startswith("--config_file=") or token.startswith("--config-file="):
            value = token.split("=", 1)[1]
        elif token in ("--config_file", "--config-file") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is None:
            continue
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        if isinstance(parsed, str):
            return [p for p in parsed.split(",") if p] if ("," in parsed and not os.path.isfile(parsed)) else [parsed]
        return [str(p) for p in parsed]
    return []


def resolve_bundle_root(default: str = "bundles/dycon_isles") -> str:
    """Absolute path of the bundle folder (the one holding ``configs/``) of the config being run.

    Looked up, in order: the ``monai.bundle`` workflow that is running (its config folder's parent), the
    ``--config_file`` on the command line, ``default`` relative to the working directory if it holds
    ``configs/metadata.json``, and finally the working directory. ``--bundle_root DIR`` on the command line
    replaces this value altogether.
    """
    from monai.bundle import ConfigWorkflow

    for obj in _frames_locals_self():
        if isinstance(obj, ConfigWorkflow):
            root = Path(obj.config_root_path)
            root = root.parent if root.name == "configs" else root
            return str(root.absolute())
    files = _argv_config_files(sys.argv)
    if files:
        root = Path(files[0]).absolute().parent
        root = root.parent if root.name == "configs" else root
        return str(root)
    if (Path(default) / "configs" / "metadata.json").is_file():
        return str(Path(default).absolute())
    return str(Path.cwd())


def _override_keys(argv: Sequence[str]) -> tuple[list[str], list[str], dict]:
    """Parse a ``monai.bundle run`` command line (fire syntax) into (override keys, config files, run args)."""
    keys: list[str] = []
    run_args: dict = {}
    i = 2  # argv[0] is the module, argv[1] the command
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            i += 1
            continue
        body = token[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 2
        else:
            key, value = body, "True"
            i += 1
        if key.replace("-", "_") in _RUN_ARGUMENTS:
            run_args[key.replace("-", "_")] = value
        else:
            keys.append(key)
    return keys, _argv_config_files(argv), run_args


def _is_bundle_run(argv: Sequence[str]) -> bool:
    if len(argv) < 2 or argv[1] != "run":
        return False
    main = Path(argv[0])
    return main.name == "__main__.py" and main.parent.name == "bundle" and main.parent.parent.name == "monai"


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def install_error_summary() -> None:
    """End an uncaught error of this process with a one-line summary of its root cause.

    MONAI wraps an error raised inside a config expression or a transform in ``RuntimeError("Failed to evaluate
    ...")`` / ``RuntimeError("applying transform ...")``, so the last line of the traceback hides the actual message
    (e.g. which file is unreadable). After the usual traceback this hook prints ``error: <type>: <message>`` of the
    innermost exception. Installed once; exceptions stay typed for code that catches them.
    """
    previous = sys.excepthook
    if getattr(previous, "_dycon_error_summary", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        previous(exc_type, exc, tb)
        root = _root_cause(exc)
        if root is not exc:
            print(f"\nerror: {type(root).__name__}: {root}", file=sys.stderr)

    hook._dycon_error_summary = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def check_overrides(argv: Sequence[str] | None = None) -> list[str]:
    """Stop a ``python -m monai.bundle run`` whose command line names a config key the bundle does not define.

    ``monai.bundle`` adds any unknown ``--key value`` to the config silently, so ``--max_iteration 10`` would train
    for the default number of iterations. Here every ``--key`` must be an id defined in the config files given to
    ``--config_file`` (ids may be nested, ``--train#trainer#amp true``); a new argument of an existing component
    (its parent id is a dict) is allowed. Does nothing when the process was not started by
    ``python -m monai.bundle run`` (e.g. MONAI Label, or a workflow built in Python).

    Args:
        argv: the command line, ``sys.argv`` by default.

    Returns:
        The override keys that were checked.

    Raises:
        ValueError: naming each unknown key, the closest defined keys and the defined top-level keys.
    """
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return []
    if argv == list(sys.argv):  # the running process itself
        install_error_summary()
    keys, files, run_args = _override_keys(argv)
    if "args_file" in run_args:
        extra = ConfigParser.load_config_file(run_args["args_file"])
        if "config_file" in extra and not files:
            cf = extra["config_file"]
            files = [cf] if isinstance(cf, str) else list(cf)
        keys.extend(k for k in extra if k not in _RUN_ARGUMENTS)
    if not files:
        return keys
    parser = ConfigParser(ConfigParser.load_config_files(files))
    allowed_extra = _TRACKING_KEYS if "tracking" in run_args else frozenset()
    top_level = sorted(k for k in parser.get() if not k.startswith("_"))
    unknown = []
    for raw_key in keys:
        key = raw_key.lstrip("+").replace("::", "#")
        if key in allowed_extra or key.startswith("_meta_") or key in parser:
            continue
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is not None and parent in parser and isinstance(parser[parent], dict):
            continue
        unknown.append(raw_key)
    if unknown:
        lines = []
        for key in unknown:
            near = difflib.get_close_matches(key.split("#")[0], top_level, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join('--' + n for n in near)}?" if near else ""
            lines.append(f"  --{key}: not defined in {', '.join(files)}.{hint}")
        raise ValueError(
            "Unknown config key(s) on the command line; monai.bundle would add them as new, unused keys:\n"
            + "\n".join(lines)
            + f"\nKeys this bundle defines: {', '.join(top_level)}.\n"
            "Nested ids use '#', e.g. --train#trainer#amp true."
        )
    return keys


def check_dataset(dataset_dir: str | os.PathLike | None, demo_command: str = "make demo") -> str:
    """Check that ``dataset_dir`` holds ISLES'22-layout data and return its absolute path.

    Looks for ``rawdata/sub-*/ses-*/**/*_dwi.nii[.gz]`` and ``derivatives/sub-*/ses-*/*_msk.nii[.gz]``. Reading
    the images themselves (and reporting unreadable ones by name) is left to the data loader.

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
        dwi = glob.glob(str(root / "rawdata" / "sub-*" / "ses-*" / "**" / "*_dwi.nii*"), recursive=True)
        masks = glob.glob(str(root / "derivatives" / "sub-*" / "ses-*" / "**" / "*_msk.nii*"), recursive=True)
        if not root.is_dir():
            problem = f"dataset_dir '{dataset_dir}' does not exist or is not a folder"
        elif not (root / "rawdata").is_dir():
            problem = f"dataset_dir '{dataset_dir}' has no rawdata/ folder"
        elif not dwi:
            problem = f"dataset_dir '{dataset_dir}' has no DWI images (*_dwi.nii.gz) under rawdata/sub-*/ses-*/"
        elif not masks:
            problem = f"dataset_dir '{dataset_dir}' has no lesion masks (*_msk.nii.gz) under derivatives/sub-*/ses-*/"
        else:
            logger.info("Dataset %s: %d DWI images, %d masks", root, len(dwi), len(masks))
            return str(root.absolute())
    raise DatasetNotFoundError(
        f"No readable ISLES'22 dataset: {problem}.\n"
        f"Expected the layout of the ISLES'22 release:\n{_ISLES22_LAYOUT}\n"
        "Pass its root with --dataset_dir DIR. To try the bundle without ISLES'22, run "
        f"`{demo_command}` (it builds a synthetic cohort in this layout, trains on it and evaluates)."
    )


def summarize_datalists(**splits: Sequence[Mapping[str, Any]] | None) -> dict[str, int]:
    """Log how many cases each split holds and stop if there is no labeled case.

    Args:
        splits: split name -> list of datalist items, e.g. ``labeled=@train#dataset#data``.

    Returns:
        Split name -> number of cases.

    Raises:
        ValueError: the ``labeled`` split is empty.
    """
    counts = {name: len(items) if items is not None else 0 for name, items in splits.items()}
    logger.info("Cases per split: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    if "labeled" in counts and counts["labeled"] == 0:
        raise ValueError(
            "The labeled training set is empty: raise --labeled_fraction or check the datalist (cases per split: "
            f"{counts})."
        )
    return counts


def _refers_to(raw: Any, config_id: str) -> bool:
    """Whether the raw config value ``raw`` is an expression or reference that uses ``@config_id``."""
    if not isinstance(raw, str) or not raw.startswith(("$", "@")):
        return False
    return re.search(rf"@{re.escape(config_id)}(?![\w#])", raw) is not None


def unlabeled_training_data(
    labeled: Sequence[Mapping[str, Any]],
    datalist: Mapping[str, Any] | None = None,
    split: str = "training_unlabeled",
    labeled_id: str = "train#dataset#data",
    datalist_id: str = "datalist",
) -> list[dict[str, Any]]:
    """The unlabeled training stream, following where the labeled training data comes from.

    - The labeled data comes from the dataset's datalist (``train#dataset#data`` is still
      ``"$@datalist['training_labeled']"``, as in ``python -m monai.bundle run ... --dataset_dir DIR``): the
      datalist's unlabeled split, ``datalist[split]`` (built once; a ``dataset_dir`` without readable data has
      already stopped the run with :class:`DatasetNotFoundError` while the labeled data was read).
    - The labeled data is given directly as a list (MONAI Label's ``BundleTrainTask`` replaces
      ``train#dataset#data`` by the datastore's labeled studies and reads no ``dataset_dir``): the images of the
      labeled cases, **without** their labels, ``[{"image": item["image"]}, ...]``, so that the Mean-Teacher terms
      still see data. ``dycon_monai.monailabel.DyCONBundleTrainTask`` replaces this by the datastore's unlabeled
      studies (it sets ``train#unlabeled_dataset#data`` itself).

    The choice is made from the raw config of the bundle being parsed (found on the call stack); outside a bundle
    config pass ``datalist`` to get its unlabeled split, or nothing to get the labeled images.

    Args:
        labeled: the labeled training items (``@train#dataset#data``).
        datalist: a datalist whose ``split`` to return (optional).
        split: name of the unlabeled split in the datalist.
        labeled_id: config id of the labeled data.
        datalist_id: config id of the datalist.

    Returns:
        Datalist items for the unlabeled stream; none of them has a label key.

    Raises:
        KeyError: the datalist has no ``split``, or a labeled item has no ``"image"``.
    """
    if datalist is None:
        parser = _active_parser()
        if parser is not None and _refers_to(parser.get(labeled_id), datalist_id):
            datalist = parser.get_parsed_content(datalist_id)
    if datalist is not None:
        if split not in datalist:
            raise KeyError(f"The datalist has no '{split}' split (it has {sorted(datalist)}).")
        return list(datalist[split])
    items = []
    for index, item in enumerate(labeled):
        if "image" not in item:
            raise KeyError(f"Labeled training item {index} has no 'image' key (keys: {sorted(item)}).")
        items.append({"image": item["image"]})
    logger.info(
        "Unlabeled stream: the %d labeled training images without their labels (the labeled data was given "
        "directly, not read from dataset_dir)",
        len(items),
    )
    return items


def publish_model(
    ckpt_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    enabled: bool | str = False,
    network: torch.nn.Module | None = None,
    filename: str = "model.pt",
) -> str | None:
    """Copy a training run's inference weights to ``<bundle_root>/models/<filename>``, only when ``enabled``.

    MONAI Label serves (and reloads when it changes) ``<bundle_root>/models/model.pt``; its train task turns this on
    (``publish_model_to_bundle``), a command-line run leaves the bundle alone unless ``--publish_model_to_bundle
    true`` is given. The copied file is the run's best weights by validation, ``<ckpt_dir>/<filename>``; when the
    run saved none (no validation with a finite metric), ``network``'s final weights are saved instead. The file is
    written to a temporary name next to the target and renamed over it, so a reader sees the old weights or the
    new ones, never a partial file. Rank 0 only under ``torch.distributed``.

    Args:
        ckpt_dir: the run's model folder (``@ckpt_dir``).
        bundle_root: the bundle folder (``@bundle_root``).
        enabled: publish or not (bool or "true"/"false").
        network: the trained inference network (its ``state_dict`` is the fallback).
        filename: weights file name, in ``ckpt_dir`` and in ``<bundle_root>/models``.

    Returns:
        The path written, or ``None`` when not enabled (or not rank 0).

    Raises:
        FileNotFoundError: enabled, but the run saved no weights and no ``network`` was given.
    """
    if not as_bool(enabled, "publish_model_to_bundle") or rank_and_world_size()[0] != 0:
        return None
    source = Path(ckpt_dir) / filename
    target = Path(bundle_root) / "models" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_file() and source.resolve() == target.resolve():
        return str(target)
    if source.is_file():
        what = f"best weights {source}"
        atomic_copyfile(source, target)
    elif network is not None:
        what = f"final weights of the run (no {source} was saved)"
        module = network.module if hasattr(network, "module") else network
        atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, target)
    else:
        raise FileNotFoundError(f"Cannot publish the model: the run saved no {source} and no network was given.")
    logger.info("Published the %s to %s", what, target)
    return str(target)


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


def check_model_path(model_path: str | os.PathLike) -> str:
    """Return ``model_path`` if it is a file, else stop with how to get one.

    Raises:
        FileNotFoundError: naming the path, and how to train a model or point ``--model_path`` at one.
    """
    path = Path(str(model_path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Model weights not found: {path}. Train first (python -m monai.bundle run --config_file "
            "bundles/dycon_isles/configs/train.json --dataset_dir DIR), then pass --model_path "
            "<run_dir>/models/model.pt, or copy that file to <bundle_root>/models/model.pt."
        )
    return str(path)


def training_run_info(model_path: str | os.PathLike, **fallback: Any) -> dict[str, Any]:
    """Describe the training run that produced ``model_path``, for the evaluation summary.

    When ``model_path`` is ``<run_dir>/models/model.pt`` of a run made by this bundle, the method, labeled fraction,
    fold and seed are read from that run's ``run_info.json``; otherwise (and for missing entries) ``fallback`` is used.

    Returns:
        ``{"method", "labeled_fraction", "labeled_count", "fold", "seed", "training_run", "model_path", ...}``.
    """
    info: dict[str, Any] = dict(fallback)
    path = Path(str(model_path)).absolute()
    run_info = path.parent.parent / RUN_INFO_FILENAME
    info["model_path"] = str(path)
    info["training_run"] = None
    if run_info.is_file():
        try:
            resolved = json.loads(run_info.read_text())
        except (OSError, ValueError):
            resolved = {}
        for key in (
            "method",
            "dataset",
            "labeled_fraction",
            "labeled_cases",
            "unlabeled_cases",
            "fold",
            "seed",
            "max_iterations",
            "dataset_dir",
        ):
            if key in resolved:
                info[key] = resolved[key]
        info["training_run"] = str(run_info.parent)
    return _jsonable(info)


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("monai", "numpy", "ignite", "nibabel", "dycon_monai"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            continue
    return versions


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _write_json_atomic(path: Path, content: Any) -> None:
    atomic_write_json(path, _jsonable(content))


def save_run_config(
    run_dir: str | os.PathLike,
    seed: int | None = None,
    resolved: Mapping[str, Any] | None = None,
    datalist: Mapping[str, Any] | None = None,
) -> str:
    """Save what is needed to repeat a run into its folder (rank 0 only under ``torch.distributed``).

    Writes ``config.json`` (the bundle config with every file merged and every override applied, runnable with
    ``python -m monai.bundle run --config_file <run_dir>/config.json``), ``run_info.json`` (the resolved values of the
    main settings at its top level, the seed, command line, package versions, start time) and, if given,
    ``datalist.json``.

    Args:
        run_dir: the run's folder, from :func:`create_run_dir`.
        seed: the random seed of the run.
        resolved: the resolved values of the main settings (paths, method, sizes...), e.g.
            ``{"dataset_dir": @dataset_dir, "method": @method}``.
        datalist: the datalist the run trains and validates on.

    Returns:
        ``run_dir``, so that the call can be chained in a config expression.
    """
    rank, world = rank_and_world_size()
    if rank != 0:
        return str(run_dir)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config = active_config()
    if config is not None:
        _write_json_atomic(folder / CONFIG_FILENAME, config)
    info = {
        **dict(resolved or {}),
        "seed": seed,
        "command": list(sys.argv),
        "cwd": str(Path.cwd()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": world,
        "versions": _package_versions(),
        "config_file": CONFIG_FILENAME if config is not None else None,
    }
    _write_json_atomic(folder / RUN_INFO_FILENAME, info)
    if datalist is not None:
        _write_json_atomic(folder / "datalist.json", datalist)
    logger.info("Saved the resolved config and seed %s to %s", seed, folder)
    return str(run_dir)


_LOG_HANDLERS: dict[str, logging.Handler] = {}


def log_to_file(run_dir: str | os.PathLike, filename: str = "log.txt", level: int = logging.INFO) -> str:
    """Also write the log of this run to ``<run_dir>/<filename>`` (rank 0 only). Returns the file's path.

    The handler is attached to the root logger until :func:`close_log_file` (the configs' ``finalize``) removes it.
    """
    path = str(Path(run_dir) / filename)
    rank, _ = rank_and_world_size()
    if rank == 0 and path not in _LOG_HANDLERS:
        handler = logging.FileHandler(path)
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        _LOG_HANDLERS[path] = handler
    return path


def close_log_file(run_dir: str | os.PathLike, filename: str = "log.txt") -> None:
    """Detach and close the log file handler that :func:`log_to_file` attached for ``run_dir`` (if any)."""
    handler = _LOG_HANDLERS.pop(str(Path(run_dir) / filename), None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
