"""Resumable, reproducible labeled and unlabeled data streams of a semi-supervised trainer.

The labeled loader is the engine's own data (as in any MONAI trainer); the unlabeled loader is cycled beside it,
one batch per iteration. :class:`LabeledUnlabeledStreams` attaches to the engine's events and keeps both streams'
positions (``labeled_cycle``, ``labeled_position``, ``unlabeled_cycle``, ``unlabeled_position``) in the engine
state, which ``trainer.state_dict()`` saves. With a ``seed``, each data cycle (one pass over a loader) reseeds the
random generators and the MONAI random transforms of the loader's dataset from ``(seed, stream, cycle)``, so a run
resumed from a checkpoint draws the same batches as the uninterrupted run. Unlabeled batches that carry a label key
are refused: labels of unlabeled cases never reach training.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.data.utils import set_rnd
from monai.utils.enums import CommonKeys as Keys

__all__ = [
    "LabeledUnlabeledStreams",
    "as_plain_tensor",
    "case_ids",
    "check_loaders_yield",
    "check_unlabeled_batch",
    "derive_seed",
]

_FORBIDDEN_UNLABELED_KEYS = (Keys.LABEL,)
_STATE_KEYS = ("labeled_cycle", "labeled_position", "unlabeled_cycle", "unlabeled_position")


def derive_seed(seed: int, stream: str, index: int) -> int:
    """A 32-bit seed derived from ``(seed, stream name, index)``; equal inputs give equal seeds on every machine."""
    seq = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode()), int(index)])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def case_ids(batch: Any) -> list:
    """``case_id`` values of a collated batch (falls back to the image file names)."""
    if not isinstance(batch, Mapping):
        return []
    ids = batch.get("case_id")
    if ids is None:
        image = batch.get(Keys.IMAGE)
        meta = getattr(image, "meta", None)
        ids = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if ids is None:
        return []
    if isinstance(ids, (str, bytes)):
        return [ids]
    if isinstance(ids, torch.Tensor):
        return ids.tolist()
    return list(ids)


def as_plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI metadata (a ``MetaTensor`` becomes a plain tensor sharing its storage)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def check_unlabeled_batch(batch: Any, iteration: int) -> None:
    """Refuse an unlabeled batch that is not a dict with ``"image"`` or that carries a label key."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"unlabeled batches must be dicts with an 'image' key, got {type(batch).__name__} at iteration {iteration}."
        )
    leaked = [k for k in batch if k in _FORBIDDEN_UNLABELED_KEYS or str(k).startswith(f"{Keys.LABEL}_")]
    if leaked:
        raise ValueError(
            f"unlabeled batch at iteration {iteration} carries {leaked} (cases {case_ids(batch)}): "
            "labels of unlabeled cases must never reach training. Build the unlabeled stream from "
            "isles22_datalist(...)['training_unlabeled'] (no 'label' key) with unlabeled_train_transforms."
        )
    if Keys.IMAGE not in batch:
        raise ValueError(f"unlabeled batch at iteration {iteration} has no 'image' key (keys {sorted(batch)}).")


def loader_len(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for an iterable without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


def check_loaders_yield(**loaders: Any) -> None:
    """Refuse a loader (given by name) that yields no batch; MONAI would skip the run with a warning only."""
    for name, loader in loaders.items():
        if loader is not None and loader_len(loader) == 0:
            batch = getattr(loader, "batch_size", None)
            cases = len(getattr(loader, "dataset", ()) or ())
            raise ValueError(
                f"{name} yields no batch: {cases} cases with batch_size={batch} and drop_last=True. Use at least "
                "batch_size cases (e.g. a larger labeled_count) or a smaller batch_size."
            )


class _SkipFirstBatches:
    """Iterable over ``loader`` whose first iterator starts ``skip`` batches in (resuming mid-cycle); later ones
    start at the beginning."""

    def __init__(self, loader: Iterable, skip: int) -> None:
        self.loader = loader
        self.skip = int(skip)
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            try:
                next(it)
            except StopIteration:
                break
        return it


class LabeledUnlabeledStreams:
    """The labeled stream (the engine's ``data_loader``) and the cycled unlabeled stream of a trainer.

    Args:
        unlabeled_loader: loader of unlabeled batches (``{"image", "case_id"}``), or ``None`` (supervised).
        seed: base seed of the per-cycle reseeding, or ``None`` to leave the random generators alone.
    """

    def __init__(self, unlabeled_loader: Iterable | None, seed: int | None = 0) -> None:
        self.unlabeled_loader = unlabeled_loader
        self.seed = None if seed is None else int(seed)
        self.engine: Engine | None = None
        self._unlabeled_iter: Iterator | None = None
        self._fresh_run = False

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        for key in _STATE_KEYS:
            setattr(engine.state, key, 0)
            if key not in engine.state_dict_user_keys:
                engine.state_dict_user_keys.append(key)
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._on_labeled_batch)
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._on_labeled_cycle_end)

    def reseed(self, stream: str, cycle: int, loader: Any) -> None:
        """Reseed torch / numpy / random and the loader dataset's random transforms for a new cycle of ``stream``."""
        if self.seed is None:
            return
        s = derive_seed(self.seed, stream, cycle)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed=derive_seed(self.seed, stream + "-transforms", cycle))

    def _on_started(self, engine: Engine) -> None:
        self._fresh_run = True
        self._unlabeled_iter = None

    def _on_epoch_started(self, engine: Engine) -> None:
        if not self._fresh_run:
            return
        self._fresh_run = False
        state = engine.state
        n = loader_len(engine.data_loader)
        if n is not None and state.labeled_position >= n:
            state.labeled_cycle += 1
            state.labeled_position = 0
        self.reseed("labeled", state.labeled_cycle, engine.data_loader)
        if state.labeled_position > 0:
            state.dataloader = _SkipFirstBatches(engine.data_loader, state.labeled_position)

    def _on_labeled_batch(self, engine: Engine) -> None:
        engine.state.labeled_position += 1

    def _on_labeled_cycle_end(self, engine: Engine) -> None:
        engine.state.labeled_cycle += 1
        engine.state.labeled_position = 0
        self.reseed("labeled", engine.state.labeled_cycle, engine.data_loader)

    def _open_unlabeled(self) -> None:
        state = self.engine.state  # type: ignore[union-attr]
        loader = self.unlabeled_loader
        n = loader_len(loader)
        if n is not None and state.unlabeled_position >= n:
            state.unlabeled_cycle += 1
            state.unlabeled_position = 0
        self.reseed("unlabeled", state.unlabeled_cycle, loader)
        it = iter(loader)  # type: ignore[arg-type]
        for _ in range(state.unlabeled_position):
            try:
                next(it)
            except StopIteration:
                break
        self._unlabeled_iter = it

    def next_unlabeled(self) -> Any:
        """The next unlabeled batch (checked for label keys), opening a new cycle when the loader is exhausted."""
        if self.engine is None or self.unlabeled_loader is None:
            raise RuntimeError("next_unlabeled needs an unlabeled loader and an attached engine.")
        state = self.engine.state
        start = time.perf_counter()
        if self._unlabeled_iter is None:
            self._open_unlabeled()
        try:
            batch = next(self._unlabeled_iter)  # type: ignore[arg-type]
        except StopIteration:
            state.unlabeled_cycle += 1
            state.unlabeled_position = 0
            self._open_unlabeled()
            try:
                batch = next(self._unlabeled_iter)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("unlabeled_data_loader yields no batch; check the unlabeled datalist.") from None
        # seconds spent waiting for unlabeled batches, read by DataWaitHandler (not part of the checkpointed state)
        state.unlabeled_wait_s = getattr(state, "unlabeled_wait_s", 0.0) + time.perf_counter() - start
        state.unlabeled_position += 1
        check_unlabeled_batch(batch, state.iteration)
        return batch

    def next_batch(
        self, engine: Engine, batchdata: Any, unlabeled: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(labeled images, labels, unlabeled images or None)`` of one iteration, on the engine's device.

        The labeled batch goes through the engine's ``prepare_batch``; the unlabeled one is the stream's next batch.
        Their case ids are stored as ``engine.state.batch_case_ids = {"labeled": [...], "unlabeled": [...]}``.

        Raises:
            ValueError: a labeled batch without label, or unlabeled images whose channels / patch size differ.
        """
        state = engine.state
        it = state.iteration
        labeled_ids = case_ids(batchdata)
        batch = engine.prepare_batch(batchdata, state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise ValueError(
                f"labeled batch at iteration {it} has no 'label' (cases {labeled_ids}); train_data_loader must yield "
                "{'image', 'label'} dicts."
            )
        unlabeled_ids: list = []
        x_u = None
        if unlabeled:
            ubatch = self.next_unlabeled()
            unlabeled_ids = case_ids(ubatch)
            x_u = as_plain_tensor(ubatch[Keys.IMAGE]).to(state.device, non_blocking=engine.non_blocking)
            if x_u.shape[1:] != inputs.shape[1:]:
                raise ValueError(
                    f"unlabeled images {tuple(x_u.shape)} (cases {unlabeled_ids}) and labeled images "
                    f"{tuple(inputs.shape)} (cases {labeled_ids}) must share channels and patch size at iteration {it}."
                )
        state.batch_case_ids = {"labeled": labeled_ids, "unlabeled": unlabeled_ids}
        return inputs, targets, x_u
