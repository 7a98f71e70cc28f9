"""Exponential-moving-average (Mean-Teacher) update of the teacher network as an Ignite handler."""

from __future__ import annotations

import logging
import math

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch import nn
from torch.profiler import record_function

from dycon_monai.networks.dycon_net import unwrap_module

__all__ = ["EMATeacherHandler", "ema_decay_at", "ema_update_"]


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up EMA decay ``min(1 - 1 / (step + 1), decay)`` (Tarvainen & Valpola, 2017).

    ``step`` counts completed optimiser steps before this update, from 0: the first update (step 0) copies the student
    into the teacher, the second averages them equally, and from ``step >= 1 / (1 - decay) - 1`` the decay is constant.
    """
    if step < 0:
        raise ValueError(f"EMA step must be >= 0, got {step}.")
    return min(1.0 - 1.0 / (step + 1.0), float(decay))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: ``teacher_param = decay * teacher_param + (1 - decay) * student_param``; buffers are copied.

    Floating parameters are averaged; buffers (e.g. BatchNorm running statistics, ``num_batches_tracked``) are
    copied from the student, as in the original Mean Teacher.

    Raises:
        ValueError: when the two networks do not have the same parameter and buffer names and shapes.
    """
    teacher, student = unwrap_module(teacher), unwrap_module(student)
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"teacher and student parameters differ in names, e.g. {missing}; the teacher must be a copy.")
    t_list, s_list = [], []
    for name, tp in t_params.items():
        sp = s_params[name]
        if tp.shape != sp.shape:
            raise ValueError(
                f"teacher parameter '{name}' has shape {tuple(tp.shape)}, student {tuple(sp.shape)}; "
                "the teacher must be a copy of the student."
            )
        if tp.is_floating_point():
            t_list.append(tp.data)
            s_list.append(sp.data.to(tp.dtype))
        else:
            tp.data.copy_(sp.data)
    if t_list:
        torch._foreach_mul_(t_list, decay)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - decay)
    t_bufs = dict(teacher.named_buffers())
    for name, sb in student.named_buffers():
        if name not in t_bufs:
            raise ValueError(f"teacher has no buffer '{name}'; the teacher must be a copy of the student.")
        t_bufs[name].copy_(sb)


class EMATeacherHandler:
    """Update the Mean-Teacher teacher as an EMA of the student after every optimiser step.

    ``teacher = decay_t * teacher + (1 - decay_t) * student`` with ``decay_t = min(1 - 1 / (step + 1), decay)`` and
    ``step = engine.state.iteration - 1`` (0 at the first update, which therefore copies the student); buffers are
    copied. The update runs on MONAI's ``IterationEvents.MODEL_COMPLETED`` (end of the iteration, before any
    ``ITERATION_COMPLETED`` handler such as a checkpoint saver, whatever the handler order), or on
    ``ITERATION_COMPLETED`` for engines without that event. Iterations that the trainer skipped because of a
    non-finite loss (``engine.state.iteration_skipped``) leave the teacher unchanged.

    Args:
        decay: the EMA decay (0.99 in DyCON).
        teacher: the teacher network; defaults to ``engine.teacher_network`` at attach time.
        student: the student network; defaults to ``engine.network``.

    The value used at the last update is stored in ``engine.state.ema_decay``.
    """

    def __init__(self, decay: float = 0.99, teacher: nn.Module | None = None, student: nn.Module | None = None) -> None:
        if not (math.isfinite(decay) and 0.0 <= decay <= 1.0):
            raise ValueError(f"EMATeacherHandler decay must be in [0, 1], got {decay}.")
        self.decay = float(decay)
        self.teacher = teacher
        self.student = student

    def attach(self, engine: Engine) -> None:
        """Register the update on ``engine``; resolves ``teacher`` / ``student`` from it when not given."""
        if self.teacher is None and hasattr(engine, "teacher_network") and engine.teacher_network is None:
            # e.g. the supervised method of a MeanTeacherTrainer: no teacher to update (keeps configs uniform)
            logging.getLogger(type(self).__name__).info("the engine has no teacher network; EMATeacherHandler is idle.")
            return
        if self.teacher is None:
            self.teacher = getattr(engine, "teacher_network", None)
        if self.student is None:
            self.student = getattr(engine, "network", None)
        if self.teacher is None or self.student is None:
            raise ValueError(
                "EMATeacherHandler needs a teacher and a student: pass them, or attach to a MeanTeacherTrainer "
                f"that has them (got teacher={type(self.teacher).__name__}, student={type(self.student).__name__})."
            )
        if unwrap_module(self.teacher) is unwrap_module(self.student):
            raise ValueError("EMATeacherHandler: teacher and student are the same module; the teacher must be a copy.")
        if getattr(engine, "ema_handler", None) is not None:
            raise ValueError(
                "this engine already has an EMATeacherHandler; a second one would update the teacher twice per step."
            )
        engine.state.ema_decay = float("nan")
        try:
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)
        except ValueError:  # an engine without MONAI's iteration events
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.ema_handler = self

    def __call__(self, engine: Engine) -> None:
        """Apply one EMA update (skipped when the trainer skipped this iteration's optimiser step)."""
        if getattr(engine.state, "iteration_skipped", False):
            return
        decay_t = ema_decay_at(max(engine.state.iteration - 1, 0), self.decay)
        with record_function("dycon/ema_update"):
            ema_update_(self.teacher, self.student, decay_t)
        engine.state.ema_decay = decay_t
