"""What a trainer does when a loss term or the gradient norm of an iteration is NaN or infinite.

:class:`NonFiniteHandler` is an Ignite handler on the trainer's ``IterationEvents.LOSS_COMPLETED`` (loss terms and
network outputs) and :data:`~dycon_monai.handlers.gradients.StepEvents.GRADIENTS_READY` (gradient norm) events. The
trainers attach one from their ``on_nonfinite`` argument; it reads what the iteration left on the engine state:

- ``state.loss_terms``: ``{name: float}`` of the iteration's loss terms (and, after the gradients, ``grad_norm``);
- ``state.nonfinite_outputs``: ``{name: first bad value}`` of network outputs that were already non-finite (the
  losses are then not computed), and ``state.nonfinite_detail``, a sentence on the input images;
- ``state.batch_case_ids``: ``{"labeled": [...], "unlabeled": [...]}``, the case ids of the iteration's batches.

With ``policy="raise"`` it raises :class:`NonFiniteLossError`; with ``"skip"`` it sets ``state.iteration_skipped``
(the trainer then takes no optimiser step; the EMA teacher handler leaves the teacher alone), counts the step in
``state.nonfinite_skipped``, keeps the last 100 in ``state.nonfinite_log`` and logs a warning.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from .gradients import StepEvents

__all__ = ["NONFINITE_POLICIES", "NonFiniteHandler", "NonFiniteLossError", "nonfinite_outputs"]

NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient norm) of a training iteration is NaN or infinite.

    Attributes:
        iteration: the engine iteration (1-based).
        terms: ``{name: value}`` of the offending terms.
        labeled_cases: ``case_id`` values of the labeled batch.
        unlabeled_cases: ``case_id`` values of the unlabeled batch.
    """

    def __init__(
        self, message: str, iteration: int, terms: dict[str, float], labeled_cases: list, unlabeled_cases: list
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.terms = terms
        self.labeled_cases = labeled_cases
        self.unlabeled_cases = unlabeled_cases


def nonfinite_outputs(
    outputs: dict[str, torch.Tensor | None], images: torch.Tensor, ids: Sequence
) -> tuple[dict[str, float], str]:
    """Network outputs holding NaN or inf, as ``{name: first bad value}``, and a sentence naming the cases whose
    input ``images`` (batch order = ``ids``) hold non-finite voxels (``"image"`` is then added to the dict)."""
    bad = {}
    for name, value in outputs.items():
        if value is None:
            continue
        value = value.detach()
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad[name] = float(value[~finite].flatten()[0])
    if not bad:
        return bad, ""
    finite_images = torch.isfinite(images.detach()).flatten(1).all(dim=1).tolist()
    bad_images = [ids[i] if i < len(ids) else i for i, ok in enumerate(finite_images) if not ok]
    if not bad_images:
        return bad, ""
    return {"image": float("nan"), **bad}, f" Non-finite voxels in the input images of cases {bad_images}."


class NonFiniteHandler:
    """Stop (``"raise"``) or skip (``"skip"``) a training step whose losses or gradients are not finite.

    Args:
        policy: ``"raise"`` or ``"skip"``.
        terms: names in ``state.loss_terms`` checked after the loss (``None``: every entry).
    """

    def __init__(self, policy: str = "raise", terms: tuple[str, ...] | None = None) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {policy!r}.")
        self.policy = policy
        self.terms = terms
        self.logger = logging.getLogger(type(self).__name__)

    def attach(self, engine: Engine) -> None:
        for key in ("nonfinite_skipped",):
            if not hasattr(engine.state, key):
                setattr(engine.state, key, 0)
            if key not in engine.state_dict_user_keys:
                engine.state_dict_user_keys.append(key)
        engine.state.iteration_skipped = False
        engine.state.nonfinite_log = []
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
        engine.add_event_handler(StepEvents.GRADIENTS_READY, self.gradients_ready)

    def loss_completed(self, engine: Engine) -> None:
        state = engine.state
        bad = dict(getattr(state, "nonfinite_outputs", None) or {})
        if not bad:
            values = getattr(state, "loss_terms", {}) or {}
            names = values if self.terms is None else [t for t in self.terms if t in values]
            bad = {k: float(values[k]) for k in names if not math.isfinite(float(values[k]))}
        if bad:
            self.report(engine, bad, getattr(state, "nonfinite_detail", "") or "")

    def gradients_ready(self, engine: Engine) -> None:
        if getattr(engine, "scaler", None) is not None:
            return  # float16 loss scaling: the GradScaler skips steps with non-finite gradients itself
        norm = float(engine.state.loss_terms.get("grad_norm", 0.0))
        if not math.isfinite(norm):
            self.report(engine, {"grad_norm": norm})

    def report(self, engine: Engine, bad: dict[str, float], detail: str = "") -> None:
        """Raise or record-and-skip for the non-finite ``bad`` terms of the current iteration."""
        state = engine.state
        it = state.iteration
        ids: dict[str, Any] = getattr(state, "batch_case_ids", None) or {}
        labeled, unlabeled = list(ids.get("labeled", [])), list(ids.get("unlabeled", []))
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        msg = (
            f"non-finite loss at iteration {it} (epoch {state.epoch}): {terms}; labeled cases {labeled}, "
            f"unlabeled cases {unlabeled}.{detail}"
        )
        if self.policy == "raise":
            raise NonFiniteLossError(
                msg + " Set on_nonfinite='skip' to skip such steps (they are counted and logged), lower the learning "
                "rate or set grad_clip_norm.",
                it,
                bad,
                labeled,
                unlabeled,
            )
        state.nonfinite_skipped += 1
        state.iteration_skipped = True
        record = {"iteration": it, "terms": bad, "labeled_cases": labeled, "unlabeled_cases": unlabeled}
        state.nonfinite_log = [*state.nonfinite_log[-99:], record]
        full = f"{msg} Skipped the optimizer step ({state.nonfinite_skipped} skipped so far)."
        self.logger.warning(full)
        warnings.warn(full, RuntimeWarning, stacklevel=2)
