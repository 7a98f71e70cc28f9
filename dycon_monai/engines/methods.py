"""Method presets: which loss terms each named semi-supervised method switches on, and the logged scalars."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "check_trainer_options",
    "loss_terms_transform",
    "method_weights",
]

#: every loss term the trainer puts on ``engine.state.output`` (``"loss"`` is the weighted total)
LOSS_TERMS = ("loss", "loss_sup", "loss_uncl", "loss_fecl", "loss_consistency")
#: all scalar entries of ``engine.state.output``
OUTPUT_SCALARS = (*LOSS_TERMS, "beta", "consistency_weight", "grad_norm")

#: method presets: the weights of the unlabeled terms for each named method (``method_weights``)
METHODS: dict[str, dict[str, float]] = {
    # labeled Dice+CE only; needs no unlabeled data and builds no teacher
    "supervised": {"uncl_weight": 0.0, "fecl_weight": 0.0, "consistency_weight": 0.0},
    # vanilla Mean Teacher: MSE between student and teacher softmax on unlabeled voxels
    "mean_teacher": {"uncl_weight": 0.0, "fecl_weight": 0.0, "consistency_weight": 0.1},
    # MT with UnCL as its consistency loss (paper Table 5: UnCL replaces the MT consistency)
    "mt_uncl": {"uncl_weight": 1.0, "fecl_weight": 0.0, "consistency_weight": 0.0},
    # MT (MSE consistency) plus FeCL (paper Table 6)
    "mt_fecl": {"uncl_weight": 0.0, "fecl_weight": 1.0, "consistency_weight": 0.1},
    # DyCON = MT + UnCL + FeCL, L = Dice + CE + eta * (UnCL + FeCL)
    "dycon": {"uncl_weight": 1.0, "fecl_weight": 1.0, "consistency_weight": 0.0},
}


def method_weights(method: str, eta: float = 1.0, consistency_weight: float | None = None) -> dict[str, float]:
    """Trainer keyword arguments that select a method by its loss terms.

    ========================  ===========  ===========  ===================
    method                    uncl_weight  fecl_weight  consistency_weight
    ========================  ===========  ===========  ===================
    ``supervised``            0            0            0
    ``mean_teacher``          0            0            0.1
    ``mt_uncl``               eta          0            0
    ``mt_fecl``               0            eta          0.1
    ``dycon``                 eta          eta          0 (optional term)
    ========================  ===========  ===========  ===================

    ``mean_teacher`` is the plain MSE consistency Mean Teacher (weight 0.1 with sigmoid ramp-up, as in the authors'
    code); in ``mt_uncl`` and ``dycon`` UnCL is the consistency loss (paper Table 5 compares "MT" with "MT+UnCL");
    ``mt_fecl`` keeps the MSE consistency and adds FeCL (paper Table 6). DyCON can add the MSE term on top by passing
    ``consistency_weight``.

    Args:
        method: one of :data:`METHODS`.
        eta: weight of UnCL and FeCL (``eta`` of the paper's total loss, 1.0 there).
        consistency_weight: override the MSE consistency weight of the preset (for every method but ``supervised``).

    Returns:
        ``{"uncl_weight", "fecl_weight", "consistency_weight"}`` for :class:`MeanTeacherTrainer`.

    Raises:
        ValueError: for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}.")
    weights = dict(METHODS[method])
    for key in ("uncl_weight", "fecl_weight"):
        weights[key] = weights[key] * float(eta)
    if consistency_weight is not None and method != "supervised":
        weights["consistency_weight"] = float(consistency_weight)
    return weights


def loss_terms_transform(output: Any) -> dict[str, float]:
    """``output_transform`` for MONAI ``StatsHandler`` / ``TensorBoardStatsHandler``: every scalar term as a float.

    Accepts ``engine.state.output`` of a Mean-Teacher or a co-training trainer, as a dict or as the decollated list
    of dicts (MONAI's default).
    """
    from .co_methods import CO_OUTPUT_SCALARS

    item = output[0] if isinstance(output, (list, tuple)) and output else output
    if not isinstance(item, Mapping):
        return {}
    names = dict.fromkeys([*OUTPUT_SCALARS, *CO_OUTPUT_SCALARS])  # ordered union of both trainers' scalars
    return {k: float(item[k]) for k in names if k in item}


def check_trainer_options(on_nonfinite: str = "raise", teacher_mode: str = "train", **options: Any) -> None:
    """Refuse a trainer option outside its range: ``*_on`` must be ``"unlabeled"`` / ``"all"``, weights, ramp-up
    lengths and noise levels finite and ``>= 0``, ``on_nonfinite`` ``"raise"`` / ``"skip"``, ``teacher_mode``
    ``"train"`` / ``"eval"``."""
    for name, value in options.items():
        if name.endswith("_on"):
            if value not in ("unlabeled", "all"):
                raise ValueError(f"{name} must be 'unlabeled' or 'all', got {value!r}.")
        elif not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
    if teacher_mode not in ("train", "eval"):
        raise ValueError(f"teacher_mode must be 'train' or 'eval', got {teacher_mode!r}.")
