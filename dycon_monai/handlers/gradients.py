"""The gradient norm of a training step (and optional clipping) as a handler on the trainer's events.

The trainers fire :data:`StepEvents.GRADIENTS_READY` after ``IterationEvents.BACKWARD_COMPLETED`` (so gradient
averaging across processes has happened) and after an AMP ``GradScaler`` unscaled the gradients, right before the
optimiser step. :class:`GradientNormHandler` computes the total L2 norm there, clips it when asked, and records it
as ``state.loss_terms["grad_norm"]`` and ``state.output["grad_norm"]`` (NaN when the step was skipped).
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, EventEnum

__all__ = ["GradientNormHandler", "StepEvents", "gradient_norm"]


class StepEvents(EventEnum):
    """Events of an optimiser step that MONAI's ``IterationEvents`` do not name."""

    #: gradients are final (synchronised, unscaled); the optimiser step comes next
    GRADIENTS_READY = "gradients_ready"


def gradient_norm(parameters: list[torch.Tensor]) -> float:
    """Total L2 norm of the gradients of ``parameters`` (0 when none has a gradient)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))


class GradientNormHandler:
    """Record (and with ``clip_norm`` clip) the gradient norm of the optimiser's parameters before each step.

    Args:
        clip_norm: clip the total norm to this value (``torch.nn.utils.clip_grad_norm_``); ``None`` = measure only.
    """

    def __init__(self, clip_norm: float | None = None) -> None:
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {clip_norm!r}.")
        self.clip_norm = None if clip_norm is None else float(clip_norm)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(StepEvents.GRADIENTS_READY, self)

    def __call__(self, engine: Engine) -> None:
        params = [p for group in engine.optimizer.param_groups for p in group["params"]]
        if self.clip_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_norm))
        else:
            norm = gradient_norm(params)
        engine.state.loss_terms["grad_norm"] = norm
        if isinstance(engine.state.output, dict):
            engine.state.output["grad_norm"] = torch.tensor(norm)
