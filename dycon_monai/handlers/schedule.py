"""Ignite handlers that set scheduled attributes (UnCL ``beta``, FeCL ``epoch``, ramps) before each step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

from dycon_monai.utils.schedules import BETA_SCHEDULES, beta_schedule

__all__ = ["BetaScheduleHandler", "FeCLEpochHandler", "ScheduleHandler"]

_UNITS = ("iteration", "epoch")


class ScheduleHandler:
    """Set ``setattr(target, attribute, schedule(t))`` at the start of every iteration or epoch.

    ``t`` is 0-based: the number of iterations (``unit="iteration"``) or epochs (``unit="epoch"``) completed before
    the one that starts, read from ``engine.state``, so a run resumed from a checkpoint gets the same values as an
    uninterrupted one. The value is also stored as ``engine.state.<state_name>`` for logging.

    Args:
        target: the object to update, or the name of an attribute of the engine that holds it (e.g. ``"uncl_loss"``
            on a ``MeanTeacherTrainer``). When that attribute is ``None`` the handler does nothing (the term is off).
        attribute: attribute of ``target`` to set.
        schedule: ``schedule(t) -> value``.
        unit: ``"iteration"`` (set at ``ITERATION_STARTED``) or ``"epoch"`` (set at ``EPOCH_STARTED``).
        state_name: name under ``engine.state``; defaults to ``attribute``.
    """

    def __init__(
        self,
        target: Any,
        attribute: str,
        schedule: Callable[[int], Any],
        unit: str = "iteration",
        state_name: str | None = None,
    ) -> None:
        if unit not in _UNITS:
            raise ValueError(f"schedule unit must be one of {_UNITS}, got {unit!r}.")
        if not callable(schedule):
            raise TypeError(f"schedule must be callable t -> value, got {type(schedule).__name__}.")
        self.target = target
        self.attribute = attribute
        self.schedule = schedule
        self.unit = unit
        self.state_name = state_name or attribute
        self.logger = logging.getLogger(type(self).__name__)
        self._obj: Any = None

    def _resolve(self, engine: Engine) -> Any:
        if isinstance(self.target, str):
            if not hasattr(engine, self.target):
                raise ValueError(
                    f"{type(self).__name__}: engine {type(engine).__name__} has no attribute {self.target!r}; "
                    "pass the object to schedule instead."
                )
            return getattr(engine, self.target)
        return self.target

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (``ITERATION_STARTED`` or ``EPOCH_STARTED``)."""
        self._obj = self._resolve(engine)
        if self._obj is None:
            self.logger.info(
                f"{type(self).__name__}: {self.target!r} is not in use by this engine; nothing to schedule."
            )
            return
        if not hasattr(self._obj, self.attribute):
            raise ValueError(
                f"{type(self).__name__}: {type(self._obj).__name__} has no attribute {self.attribute!r} to schedule."
            )
        event = Events.ITERATION_STARTED if self.unit == "iteration" else Events.EPOCH_STARTED
        engine.add_event_handler(event, self)

    def step(self, engine: Engine) -> int:
        """The 0-based step ``t`` for the iteration or epoch that is starting."""
        done = engine.state.iteration if self.unit == "iteration" else engine.state.epoch
        return max(int(done) - 1, 0)

    def __call__(self, engine: Engine) -> None:
        """Compute and set the value for the step that is starting."""
        value = self.schedule(self.step(engine))
        setattr(self._obj, self.attribute, value)
        setattr(engine.state, self.state_name, value)


class BetaScheduleHandler(ScheduleHandler):
    """Set UnCL's ``beta`` from a named schedule (``dycon_monai.utils.schedules``) every iteration or epoch.

    ``beta(t) = beta_schedule(mode, t, total, **kwargs)``: ``mode="paper"`` (``max(beta_min, beta_max *
    exp(-lam * t / T))``, paper Sec. 3.1) or ``"geometric"`` (the authors' released code). ``t`` counts iterations or
    epochs (``unit``), from 0; ``total`` is in the same unit and defaults to the run length
    (``max_epochs * epoch_length`` iterations or ``max_epochs`` epochs), read when the run starts.

    Args:
        loss: the ``UnCLLoss`` to drive; defaults to ``engine.uncl_loss`` (no-op when the trainer has UnCL off).
        mode: ``"paper"`` or ``"geometric"``.
        total: horizon ``T``; ``None`` for the run length.
        unit: ``"iteration"`` or ``"epoch"``.
        kwargs: schedule parameters (``beta_max``, ``beta_min``, ``lam``).

    The current value is ``engine.state.beta``.
    """

    def __init__(
        self, loss: Any = None, mode: str = "paper", total: int | None = None, unit: str = "iteration", **kwargs: Any
    ) -> None:
        if mode not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule mode={mode!r}; expected one of {sorted(BETA_SCHEDULES)}.")
        if total is not None and not total > 0:
            raise ValueError(f"BetaScheduleHandler total must be > 0 (or None for the run length), got {total}.")
        beta_schedule(mode, 0, 1.0, **kwargs)  # fail early on bad keyword arguments
        super().__init__("uncl_loss" if loss is None else loss, "beta", self._beta, unit=unit, state_name="beta")
        self.mode = mode
        self.total = total
        self.kwargs = kwargs
        self._total: float | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` and resolve the horizon when the run starts."""
        super().attach(engine)
        if self._obj is not None:
            engine.add_event_handler(Events.STARTED, self._set_total)

    def _set_total(self, engine: Engine) -> None:
        if self.total is not None:
            self._total = float(self.total)
            return
        epochs = engine.state.max_epochs
        if self.unit == "epoch":
            self._total = float(epochs)
        else:
            if engine.state.epoch_length is None:
                raise ValueError("BetaScheduleHandler needs total= when the engine's epoch_length is unknown.")
            self._total = float(epochs * engine.state.epoch_length)

    def _beta(self, t: int) -> float:
        if self._total is None:
            raise RuntimeError("BetaScheduleHandler used before the run started (total unresolved).")
        return beta_schedule(self.mode, t, self._total, **self.kwargs)


class FeCLEpochHandler(ScheduleHandler):
    """Set ``FeCLLoss.epoch`` (the ``t`` of the reference variant's teacher-term threshold ``thr(t)``).

    The released code counts ``t`` in epochs of its two-stream sampler, ``floor(n_labeled / labeled_batch)``
    iterations each (5 iterations for ISLES'22 at 10 % labels: 20 cases, 4 per batch), not in validation intervals.
    Pass that length as ``iterations_per_epoch`` (the bundles derive it from the datalist) to count the same way:
    during the ``i``-th iteration (1-based) ``epoch = (i - 1) // iterations_per_epoch``. Without it, ``epoch`` is
    the engine's 0-based epoch (``unit="epoch"``) or the 0-based iteration (``unit="iteration"``).

    Args:
        loss: the ``FeCLLoss``; defaults to ``engine.fecl_loss`` (no-op when the trainer has FeCL off).
        unit: ``"epoch"`` (default) or ``"iteration"``; ignored when ``iterations_per_epoch`` is given.
        iterations_per_epoch: length of the released code's epoch in iterations (a positive integer), or ``None``.
    """

    def __init__(self, loss: Any = None, unit: str = "epoch", iterations_per_epoch: int | None = None) -> None:
        schedule: Callable[[int], Any] = int
        if iterations_per_epoch is not None:
            if isinstance(iterations_per_epoch, bool) or int(iterations_per_epoch) != iterations_per_epoch:
                raise ValueError(f"iterations_per_epoch must be a positive integer, got {iterations_per_epoch!r}.")
            if int(iterations_per_epoch) < 1:
                raise ValueError(
                    f"iterations_per_epoch must be >= 1, got {iterations_per_epoch} (fewer labeled cases than the "
                    "labeled batch size?)."
                )
            per = int(iterations_per_epoch)
            schedule, unit = (lambda t: t // per), "iteration"
        self.iterations_per_epoch = iterations_per_epoch
        super().__init__("fecl_loss" if loss is None else loss, "epoch", schedule, unit=unit, state_name="fecl_epoch")
