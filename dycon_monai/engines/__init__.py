"""Training and validation engines: the semi-supervised Mean-Teacher trainer and the evaluator wiring."""

from __future__ import annotations

from dycon_monai.handlers.nonfinite import NonFiniteLossError

from .mean_teacher import MeanTeacherTrainer
from .methods import LOSS_TERMS, METHODS, OUTPUT_SCALARS, loss_terms_transform, method_weights
from .streams import LabeledUnlabeledStreams
from .validation import VAL_KEY_METRIC, make_evaluator, validation_postprocessing

__all__ = [
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "VAL_KEY_METRIC",
    "LabeledUnlabeledStreams",
    "MeanTeacherTrainer",
    "NonFiniteLossError",
    "loss_terms_transform",
    "make_evaluator",
    "method_weights",
    "validation_postprocessing",
]
