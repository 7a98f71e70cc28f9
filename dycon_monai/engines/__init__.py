"""Training and validation engines: the semi-supervised Mean-Teacher trainer and the evaluator wiring."""

from __future__ import annotations

from .mean_teacher import (
    LOSS_TERMS,
    METHODS,
    OUTPUT_SCALARS,
    MeanTeacherTrainer,
    NonFiniteLossError,
    loss_terms_transform,
    method_weights,
)
from .validation import VAL_KEY_METRIC, make_evaluator, validation_postprocessing

__all__ = [
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "VAL_KEY_METRIC",
    "MeanTeacherTrainer",
    "NonFiniteLossError",
    "loss_terms_transform",
    "make_evaluator",
    "method_weights",
    "validation_postprocessing",
]
