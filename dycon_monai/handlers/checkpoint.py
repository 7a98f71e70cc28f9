"""Atomic training checkpoints for the Mean-Teacher engine, and how to resume from them.

Why not MONAI's ``CheckpointSaver`` as is: it writes through Ignite's ``DiskSaver`` with ``atomic=False`` (an
interrupted ``torch.save`` leaves a truncated ``.pt``), and Ignite's ``Checkpoint`` deletes the previous file
*before* writing the next one, so a kill at that moment leaves no checkpoint at all. :class:`AtomicCheckpointSaver`
writes to a temporary file in the same directory, flushes and ``fsync``s it, renames it over the final name
(``os.replace``, atomic on POSIX and Windows), ``fsync``s the directory, and only then removes older files. Every
``*.pt`` it leaves is complete. Loading uses MONAI's own :class:`monai.handlers.CheckpointLoader`
(:func:`checkpoint_loader`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch  # noqa: F401  (``dycon_monai.handlers.checkpoint.torch`` stays importable for callers and tests)
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from torch import nn

from dycon_monai.networks.dycon_net import unwrap_module
from dycon_monai.utils.dist import rank_and_world_size
from dycon_monai.utils.io import TMP_PREFIX, atomic_torch_save

__all__ = [
    "AtomicCheckpointSaver",
    "TrainingCheckpointHandler",
    "atomic_torch_save",
    "checkpoint_dict",
    "checkpoint_loader",
    "latest_checkpoint",
]

_TMP_PREFIX = TMP_PREFIX  # temporary files of atomic_torch_save; leftovers of a killed run are removed


def _state_of(obj: Any) -> Any:
    if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        obj = obj.module
    if not hasattr(obj, "state_dict"):
        raise TypeError(f"cannot checkpoint {type(obj).__name__}: it has no state_dict().")
    return obj.state_dict()


def checkpoint_dict(trainer: Any, lr_scheduler: Any = None, **extra: Any) -> dict[str, Any]:
    """The objects a Mean-Teacher training checkpoint holds, under the keys the bundle and loaders use.

    Keys: ``"network"`` (the bare backbone, i.e. the inference weights), ``"head"`` (the projection head),
    ``"teacher"`` (the whole EMA teacher incl. its head; absent for the supervised method, which has none),
    ``"network_b"`` / ``"head_b"`` (the second network of a ``CoTrainingTrainer``, stored the same way),
    ``"optimizer"``, ``"lr_scheduler"`` (when given), ``"trainer"`` (the engine: iteration, epoch length, data-stream
    positions, skipped-step count), ``"scaler"`` (AMP grad scaler, when in use), plus ``extra`` objects (e.g. an
    :class:`AtomicCheckpointSaver` tracking the best metric).

    Args:
        trainer: a ``MeanTeacherTrainer`` or ``CoTrainingTrainer`` (or any engine with ``network``/``optimizer``; a network without
            ``backbone``/``head`` is stored whole under ``"network"``).
        lr_scheduler: optional learning-rate scheduler.
        extra: more objects with ``state_dict``/``load_state_dict``.
    """
    out: dict[str, Any] = {}
    for suffix, net in (("", trainer.network), ("_b", getattr(trainer, "network_b", None))):
        if net is None:
            continue
        network = unwrap_module(net)
        if hasattr(network, "backbone") and hasattr(network, "head"):
            out[f"network{suffix}"] = network.backbone
            out[f"head{suffix}"] = network.head
        else:
            out[f"network{suffix}"] = network
    teacher = getattr(trainer, "teacher_network", None)
    if teacher is not None:
        out["teacher"] = teacher
    out["optimizer"] = trainer.optimizer
    if lr_scheduler is not None:
        out["lr_scheduler"] = lr_scheduler
    out["trainer"] = trainer
    scaler = getattr(trainer, "scaler", None)
    if scaler is not None:
        out["scaler"] = scaler
    out.update(extra)
    return out


_ITER_RE = re.compile(r"_(iteration|epoch)=(\d+)\.pt$")


def latest_checkpoint(save_dir: str | os.PathLike, file_prefix: str = "checkpoint") -> Path | None:
    """The most advanced interval or final checkpoint in ``save_dir`` (``{prefix}_iteration=N.pt``,
    ``{prefix}_epoch=N.pt``, ``{prefix}_final_iteration=N.pt``), or ``None`` when there is none.

    Temporary files of an interrupted save are never returned.
    """
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return None
    best: tuple[int, int, Path] | None = None
    for p in save_dir.glob(f"{file_prefix}_*.pt"):
        m = _ITER_RE.search(p.name)
        if m is None:
            continue
        # rank: iteration-numbered files by iteration; epoch files cannot be compared, rank them below
        rank = (1 if m.group(1) == "iteration" else 0, int(m.group(2)))
        if best is None or rank > best[:2]:
            best = (*rank, p)
    return None if best is None else best[2]


def checkpoint_loader(
    path: str | os.PathLike,
    trainer: Any,
    lr_scheduler: Any = None,
    map_location: Any = None,
    strict: bool = True,
    **extra: Any,
) -> CheckpointLoader:
    """A MONAI :class:`~monai.handlers.CheckpointLoader` restoring everything :func:`checkpoint_dict` names.

    Attach it to the trainer (or pass it in ``train_handlers``) before ``run()``; it loads at ``Events.STARTED``
    and training continues from the saved iteration with the same data order, teacher, optimiser and schedules.
    ``path`` may be a checkpoint file or a directory (its :func:`latest_checkpoint` is used).

    Raises:
        FileNotFoundError: when ``path`` is a directory without checkpoints or a missing file.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint_*=N.pt file in {path} to resume from.")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    return CheckpointLoader(
        load_path=str(path),
        load_dict=checkpoint_dict(trainer, lr_scheduler, **extra),
        map_location=map_location,
        strict=strict,
    )


class AtomicCheckpointSaver:
    """Save checkpoints atomically: every N iterations or epochs, at the end of the run, and on a new best metric.

    Files in ``save_dir``: ``{prefix}_iteration=N.pt`` (or ``_epoch=N``) every ``save_interval`` (the ``n_saved``
    latest are kept; older ones are deleted only after the new one is complete), ``{prefix}_final_iteration=N.pt``
    (or ``final_filename``) when the run completes, and ``key_metric_filename`` (default
    ``{prefix}_key_metric=X.XXXX.pt``) when ``engine.state.metrics[key_metric_name]`` improves. A ``save_dict`` with a
    single entry is saved as that object's bare ``state_dict`` (as MONAI does), so ``{"network": backbone}`` with
    ``key_metric_filename="model.pt"`` writes the bundle's inference weights.

    Args:
        save_dir: output directory (created).
        save_dict: name -> object with ``state_dict()`` (see :func:`checkpoint_dict`).
        save_interval: every how many iterations (``epoch_level=False``) or epochs to save; 0 = never.
        epoch_level: count ``save_interval`` in epochs instead of iterations.
        n_saved: interval checkpoints to keep (``None`` = all).
        file_prefix: file name prefix.
        save_final: save when the run completes.
        final_filename: fixed name for the final checkpoint.
        save_key_metric: save when the key metric improves (attach to the evaluator).
        key_metric_name: metric name in ``engine.state.metrics``; defaults to ``engine.state.key_metric_name``.
        key_metric_filename: fixed name for the best checkpoint (replaced on each improvement).
        key_metric_negative_sign: lower is better.

    Its ``state_dict()`` holds the best metric so far, so a resumed run does not overwrite a better model with a worse
    one: include the evaluator's saver in the training checkpoint (``checkpoint_dict(trainer, best_saver=saver)``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 0,
        epoch_level: bool = False,
        n_saved: int | None = 2,
        file_prefix: str = "checkpoint",
        save_final: bool = True,
        final_filename: str | None = None,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_filename: str | None = None,
        key_metric_negative_sign: bool = False,
    ) -> None:
        if not save_dict:
            raise ValueError("AtomicCheckpointSaver needs a non-empty save_dict (name -> object with state_dict()).")
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval}.")
        if n_saved is not None and n_saved < 1:
            raise ValueError(f"n_saved must be >= 1 or None, got {n_saved}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.epoch_level = bool(epoch_level)
        self.n_saved = n_saved
        self.file_prefix = file_prefix
        self.save_final = bool(save_final)
        self.final_filename = final_filename
        self.save_key_metric = bool(save_key_metric)
        self.key_metric_name = key_metric_name
        self.key_metric_filename = key_metric_filename
        self.key_metric_negative_sign = bool(key_metric_negative_sign)
        self.best_metric: float | None = None
        self.best_step: int = -1
        self._best_file: Path | None = None
        self.logger = logging.getLogger(type(self).__name__)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Best metric tracking (to resume without losing the best model)."""
        return {
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_file": None if self._best_file is None else self._best_file.name,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best-metric tracking."""
        self.best_metric = state.get("best_metric")
        self.best_step = int(state.get("best_step", -1))
        name = state.get("best_file")
        self._best_file = None if name is None else self.save_dir / name

    # ------------------------------------------------------------------------------------------- attach
    def attach(self, engine: Engine) -> None:
        """Register the interval, final and key-metric saves on ``engine``; removes stale temporary files."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.save_dir.glob(f"{_TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        if self.save_interval > 0:
            event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
            engine.add_event_handler(event(every=self.save_interval), self.interval_completed)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.completed)
        if self.save_key_metric:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.metrics_completed)

    # ------------------------------------------------------------------------------------------- saving
    def _payload(self) -> Any:
        states = {k: _state_of(v) for k, v in self.save_dict.items()}
        if len(states) == 1:
            return next(iter(states.values()))
        return states

    def save(self, filename: str) -> Path:
        """Write the current ``save_dict`` atomically to ``save_dir / filename``."""
        path = atomic_torch_save(self._payload(), self.save_dir / filename)
        self.logger.info(f"saved checkpoint {path}")
        return path

    def _interval_files(self) -> list[tuple[int, Path]]:
        unit = "epoch" if self.epoch_level else "iteration"
        pattern = re.compile(rf"^{re.escape(self.file_prefix)}_{unit}=(\d+)\.pt$")
        files = []
        for p in self.save_dir.iterdir():
            m = pattern.match(p.name)
            if m:
                files.append((int(m.group(1)), p))
        return sorted(files)

    def interval_completed(self, engine: Engine) -> None:
        """Save ``{prefix}_iteration=N.pt`` (or ``_epoch=N``) and prune to the ``n_saved`` latest."""
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        unit = "epoch" if self.epoch_level else "iteration"
        path = self.save(f"{self.file_prefix}_{unit}={step}.pt")
        if self.n_saved is not None:
            for _, old in self._interval_files()[: -self.n_saved]:
                if old != path:
                    old.unlink(missing_ok=True)

    def completed(self, engine: Engine) -> None:
        """Save the final checkpoint."""
        name = self.final_filename or f"{self.file_prefix}_final_iteration={engine.state.iteration}.pt"
        path = self.save(name)
        if self.final_filename is None:  # keep one final checkpoint (a resumed run writes a newer one)
            for old in self.save_dir.glob(f"{self.file_prefix}_final_iteration=*.pt"):
                if old != path:
                    old.unlink(missing_ok=True)

    def metrics_completed(self, engine: Engine) -> None:
        """Save when the key metric improves on the best so far."""
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise ValueError(
                f"AtomicCheckpointSaver: key metric {name!r} is not in engine.state.metrics "
                f"{sorted(engine.state.metrics)}; set key_metric_name."
            )
        value = engine.state.metrics[name]
        try:
            value = float(value)
        except (TypeError, ValueError):
            self.logger.warning(
                f"key metric {name} is not a scalar ({type(value).__name__}); no best checkpoint saved."
            )
            return
        if not math.isfinite(value):
            self.logger.warning(f"key metric {name}={value} is not finite; no best checkpoint saved.")
            return
        score = -value if self.key_metric_negative_sign else value
        if self.best_metric is not None:
            best_score = -self.best_metric if self.key_metric_negative_sign else self.best_metric
            if score <= best_score:
                return
        filename = self.key_metric_filename or f"{self.file_prefix}_key_metric={value:.4f}.pt"
        path = self.save(filename)
        if self._best_file is not None and self._best_file != path:
            self._best_file.unlink(missing_ok=True)
        self._best_file = path
        self.best_metric = value
        self.best_step = int(engine.state.iteration)
        self.logger.info(f"new best {name}={value:.4f}: {path}")


class TrainingCheckpointHandler:
    """Save a Mean-Teacher training run's checkpoints and, optionally, resume it first: one entry of ``train_handlers``.

    On ``attach(trainer)`` it builds :func:`checkpoint_dict` from the trainer it is attached to (so the config needs
    no reference back to the trainer), attaches an :class:`AtomicCheckpointSaver` with it and, when
    ``resume_from`` is given, a MONAI :class:`~monai.handlers.CheckpointLoader` (:func:`checkpoint_loader`) that
    restores everything at ``Events.STARTED``.

    Args:
        save_dir: checkpoint folder (``<run_dir>/models``).
        save_interval: every how many iterations to save (0 = only the final checkpoint).
        n_saved: interval checkpoints to keep.
        lr_scheduler: saved and restored with the rest.
        best_saver: the evaluator's best-model :class:`AtomicCheckpointSaver` (its best metric is saved, so a
            resumed run does not replace a better model with a worse one).
        resume_from: a checkpoint file or a run's ``models`` folder to resume from; ``None`` starts afresh.

    In a multi-process run every rank resumes and only rank 0 saves.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_interval: int = 0,
        n_saved: int | None = 2,
        lr_scheduler: Any = None,
        best_saver: AtomicCheckpointSaver | None = None,
        resume_from: str | os.PathLike | None = None,
    ) -> None:
        self.save_dir = save_dir
        self.save_interval = int(save_interval)
        self.n_saved = n_saved
        self.lr_scheduler = lr_scheduler
        self.extra = {} if best_saver is None else {"best_saver": best_saver}
        self.resume_from = resume_from or None

    def attach(self, engine: Engine) -> None:
        """Attach the saver (and the loader) to the trainer ``engine``."""
        if rank_and_world_size()[0] == 0:
            AtomicCheckpointSaver(
                save_dir=self.save_dir,
                save_dict=checkpoint_dict(engine, self.lr_scheduler, **self.extra),
                save_interval=self.save_interval,
                n_saved=self.n_saved,
                save_final=True,
            ).attach(engine)
        if self.resume_from is not None:
            checkpoint_loader(self.resume_from, engine, self.lr_scheduler, **self.extra).attach(engine)
