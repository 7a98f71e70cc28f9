"""How long a trainer waits for its data: the share of step time spent fetching labeled and unlabeled batches."""

from __future__ import annotations

import logging
import time
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["DataWaitHandler"]


class DataWaitHandler:
    """Measure the time an engine waits for batches, as a share of its step time; log it when the run ends.

    The labeled wait is Ignite's ``GET_BATCH_STARTED`` .. ``GET_BATCH_COMPLETED``; the unlabeled wait is what the
    trainer's :class:`~dycon_monai.engines.LabeledUnlabeledStreams` spent in ``next_unlabeled`` during the iteration
    (``engine.state.unlabeled_wait_s``). The step is from ``GET_BATCH_STARTED`` to ``ITERATION_COMPLETED``. The first
    ``skip`` iterations are left out (they include starting the loader workers and filling caches).

    At ``COMPLETED`` it logs one line and sets ``engine.state.data_wait = {"labeled_s", "unlabeled_s", "step_s",
    "iterations", "share"}`` (seconds summed over the measured iterations; ``share`` = wait / step).

    Args:
        skip: iterations at the start of the run that are not measured.
        warn_share: log a warning instead of an info line when the share exceeds it (``None``: never).
    """

    def __init__(self, skip: int = 2, warn_share: float | None = 0.05) -> None:
        if int(skip) < 0:
            raise ValueError(f"DataWaitHandler skip must be >= 0, got {skip}.")
        self.skip = int(skip)
        self.warn_share = warn_share
        self.logger = logging.getLogger(type(self).__name__)
        self.totals = {"labeled_s": 0.0, "unlabeled_s": 0.0, "step_s": 0.0, "iterations": 0}
        self._t_batch = self._t_unlabeled = 0.0
        self._labeled = 0.0
        self._seen = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _batch_started(self, engine: Engine) -> None:
        self._t_batch = time.perf_counter()
        self._t_unlabeled = float(getattr(engine.state, "unlabeled_wait_s", 0.0))

    def _batch_completed(self, engine: Engine) -> None:
        self._labeled = time.perf_counter() - self._t_batch

    def _iteration_completed(self, engine: Engine) -> None:
        self._seen += 1
        if self._seen <= self.skip:
            return
        t = self.totals
        t["labeled_s"] += self._labeled
        t["unlabeled_s"] += float(getattr(engine.state, "unlabeled_wait_s", 0.0)) - self._t_unlabeled
        t["step_s"] += time.perf_counter() - self._t_batch
        t["iterations"] += 1

    def summary(self) -> dict[str, Any]:
        """The totals so far and the share of the step spent waiting (NaN before a measured iteration)."""
        t = dict(self.totals)
        t["share"] = (t["labeled_s"] + t["unlabeled_s"]) / t["step_s"] if t["step_s"] > 0 else float("nan")
        return t

    def _completed(self, engine: Engine) -> None:
        s = self.summary()
        engine.state.data_wait = s
        if not s["iterations"]:
            return
        msg = (
            f"data wait: {100 * s['share']:.1f} % of the step time over {s['iterations']} iterations "
            f"(labeled {s['labeled_s']:.2f} s, unlabeled {s['unlabeled_s']:.2f} s of {s['step_s']:.2f} s)"
        )
        if self.warn_share is not None and s["share"] > self.warn_share:
            self.logger.warning(msg + "; more num_workers or caching (cache_rate) would shorten it")
        else:
            self.logger.info(msg)
