"""Training and validation engines: the Mean-Teacher and co-training trainers and the evaluator wiring."""

from __future__ import annotations

from dycon_monai.handlers.nonfinite import NonFiniteLossError

from .co_methods import CO_LOSS_TERMS, CO_METHODS, CO_OUTPUT_SCALARS, DUAL_CCE_SWITCHES, co_training_weights
from .co_training import CoTrainingTrainer
from .mean_teacher import MeanTeacherTrainer
from .methods import LOSS_TERMS, METHODS, OUTPUT_SCALARS, loss_terms_transform, method_weights
from .semi_supervised import SemiSupervisedTrainer
from .streams import LabeledUnlabeledStreams
from .validation import VAL_KEY_METRIC, make_evaluator, validation_postprocessing

__all__ = [
    "CO_LOSS_TERMS",
    "CO_METHODS",
    "CO_OUTPUT_SCALARS",
    "CoTrainingTrainer",
    "DUAL_CCE_SWITCHES",
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "VAL_KEY_METRIC",
    "LabeledUnlabeledStreams",
    "MeanTeacherTrainer",
    "NonFiniteLossError",
    "SemiSupervisedTrainer",
    "co_training_weights",
    "loss_terms_transform",
    "make_evaluator",
    "method_weights",
    "validation_postprocessing",
]
