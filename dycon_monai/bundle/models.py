"""Model weights of a bundle: the checked path an evaluation or inference loads, and publishing a run's weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from dycon_monai.utils.dist import rank_and_world_size
from dycon_monai.utils.flags import as_bool
from dycon_monai.utils.io import atomic_copyfile, atomic_torch_save

__all__ = ["check_model_path", "publish_model"]

logger = logging.getLogger(__name__)


def check_model_path(model_path: str | os.PathLike) -> str:
    """Return ``model_path`` if it is a file, else stop with how to get one.

    Raises:
        FileNotFoundError: naming the path, and how to train a model or point ``--model_path`` at one.
    """
    path = Path(str(model_path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Model weights not found: {path}. Train first (python -m monai.bundle run --config_file "
            "<bundle>/configs/train.json --workflow_name dycon_monai.bundle.DyconWorkflow --dataset_dir DIR), then "
            "pass --model_path <run_dir>/models/model.pt, or copy that file to <bundle_root>/models/model.pt."
        )
    return str(path)


def publish_model(
    ckpt_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    enabled: bool | str = False,
    network: torch.nn.Module | None = None,
    filename: str = "model.pt",
) -> str | None:
    """Copy a training run's inference weights to ``<bundle_root>/models/<filename>``, only when ``enabled``.

    MONAI Label serves (and reloads when it changes) ``<bundle_root>/models/model.pt``; its train task turns this on
    (``publish_model_to_bundle``); :class:`~dycon_monai.bundle.DyconWorkflow` calls this in ``finalize``, a command-line run leaves the bundle alone unless ``--publish_model_to_bundle
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
