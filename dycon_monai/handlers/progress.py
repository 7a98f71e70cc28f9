"""How far a training run goes and how it shows: an exact iteration budget, and a progress bar of the loss."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from dycon_monai.utils.dist import rank_and_world_size
from dycon_monai.utils.flags import as_bool

__all__ = ["IterationLimitHandler", "LossProgressBar"]


class IterationLimitHandler:
    """End the run after ``max_iterations`` iterations, also when that is not a whole number of epochs.

    The bundles' epochs are ``epoch_iterations`` long (validation runs every ``val_interval`` epochs), so a budget
    such as 1000 iterations with ``epoch_iterations`` 300 runs 4 epochs of 300 and stops after the 100th iteration
    of the last one (without the validation of that partial epoch). When the budget is a whole number of epochs, the run ends normally.

    Args:
        max_iterations: the iteration budget (> 0).
    """

    def __init__(self, max_iterations: int) -> None:
        if int(max_iterations) <= 0:
            raise ValueError(f"max_iterations must be > 0, got {max_iterations}.")
        self.max_iterations = int(max_iterations)

    def attach(self, engine: Engine) -> None:
        """Register the stop on ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.max_iterations), self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration < engine.state.max_epochs * engine.state.epoch_length:
            engine.terminate()


class LossProgressBar:
    """Ignite's ``ProgressBar`` showing the total loss of each iteration, as one entry of ``train_handlers``.

    In a multi-process run only rank 0 shows it.

    Args:
        enabled: show it (bool or "true"/"false"; the bundles' ``--progress_bar false`` turns it off).
        persist: keep the finished bar on screen.
    """

    def __init__(self, enabled: bool | str = True, persist: bool = True) -> None:
        self.enabled = as_bool(enabled, "progress_bar")
        self.persist = bool(persist)

    @staticmethod
    def _loss(output: Any) -> dict[str, float]:
        from dycon_monai.engines import loss_terms_transform

        return {"loss": loss_terms_transform(output).get("loss", float("nan"))}

    def attach(self, engine: Engine) -> None:
        """Attach the bar to ``engine`` (nothing when disabled)."""
        if self.enabled and rank_and_world_size()[0] == 0:
            try:
                from ignite.handlers import ProgressBar
            except ImportError:  # pytorch-ignite < 0.5 keeps it in contrib
                from ignite.contrib.handlers import ProgressBar
            ProgressBar(persist=self.persist).attach(engine, output_transform=self._loss)
