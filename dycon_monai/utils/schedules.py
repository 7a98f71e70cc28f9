"""Plain schedule functions for DyCON training: the UnCL ``beta`` decay and sigmoid ramps.

Every function takes a step counter ``t`` and a horizon (``total`` or ``length``) in the *same* unit, and that unit
is whatever the caller counts: epochs (as in the paper's ``beta(t)``, where ``t`` and ``T`` are epochs) or
iterations (as in the authors' released code, which updates ``beta`` every iteration). The functions never assume
one or the other; the handler that calls them (``BetaScheduleHandler(..., unit="iteration" | "epoch")``) decides.

All functions return Python floats and are pure, so they can be tested, plotted and named from bundle configs.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "BETA_SCHEDULES",
    "LR_SCHEDULES",
    "beta_schedule",
    "fecl_reference_threshold",
    "geometric_beta",
    "lr_scheduler",
    "paper_beta",
    "sigmoid_rampup",
]


def _check_step(t: float, horizon: float, name: str, allow_zero_horizon: bool = False) -> tuple[float, float]:
    t = float(t)
    horizon = float(horizon)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"schedule step t must be a finite number >= 0, got t={t}.")
    if not math.isfinite(horizon) or horizon < 0 or (horizon == 0 and not allow_zero_horizon):
        expected = ">= 0" if allow_zero_horizon else "> 0"
        raise ValueError(f"schedule {name} must be a finite number {expected}, got {name}={horizon}.")
    return t, horizon


def paper_beta(t: float, total: float, beta_max: float = 1.0, beta_min: float = 0.1, lam: float = 0.1) -> float:
    """UnCL ``beta`` as in the DyCON paper (Sec. 3.1, below Eq. 1).

    ``beta(t) = max(beta_min, beta_max * exp(-lam * t / total))``.

    The paper uses ``lam=0.1`` for ISLES'22 and ``lam=0.3`` for BraTS'19, LA and Pancreas. Note that with these decay
    rates ``beta`` falls only to ``beta_max * exp(-lam)`` at ``t = total`` (0.905 for ``lam=0.1``), so ``beta_min``
    is reached only for ``lam >= log(beta_max / beta_min)``; this is the formula as published.

    Args:
        t: current step (epoch or iteration; same unit as ``total``), ``>= 0``. Values beyond ``total`` keep decaying.
        total: the horizon ``T`` (total epochs or iterations), ``> 0``.
        beta_max: initial value ``beta(0)``.
        beta_min: floor.
        lam: decay rate ``lambda``.

    Returns:
        ``beta(t)`` as a float.
    """
    t, total = _check_step(t, total, "total")
    return float(max(beta_min, beta_max * math.exp(-lam * t / total)))


def geometric_beta(t: float, total: float, beta_max: float = 5.0, beta_min: float = 0.5) -> float:
    """UnCL ``beta`` as a geometric interpolation, the schedule of the authors' released code.

    ``beta(t) = beta_max * (beta_min / beta_max) ** (min(t, total) / total)``: ``beta_max`` at ``t = 0``,
    ``sqrt(beta_max * beta_min)`` at ``t = total / 2`` and ``beta_min`` at ``t >= total`` (held there afterwards).

    Args:
        t: current step (epoch or iteration; same unit as ``total``), ``>= 0``.
        total: the horizon ``T``, ``> 0``.
        beta_max: value at ``t = 0`` (``> 0``).
        beta_min: value at ``t = total`` (``> 0``).

    Returns:
        ``beta(t)`` as a float.
    """
    t, total = _check_step(t, total, "total")
    if beta_max <= 0 or beta_min <= 0:
        raise ValueError(
            f"geometric_beta needs beta_max > 0 and beta_min > 0 (a geometric path between them), "
            f"got beta_max={beta_max}, beta_min={beta_min}."
        )
    frac = min(t, total) / total
    return float(beta_max * (beta_min / beta_max) ** frac)


def sigmoid_rampup(t: float, length: float) -> float:
    """Sigmoid-shaped ramp from ~0 to 1: ``exp(-5 * (1 - t / length) ** 2)`` for ``t < length``, then 1.

    The usual Mean-Teacher consistency ramp (Laine & Aila; Tarvainen & Valpola). ``length == 0`` means "no ramp" and
    returns 1 for every ``t``.

    Args:
        t: current step (epoch or iteration; same unit as ``length``), ``>= 0``.
        length: ramp length ``L``, ``>= 0``.

    Returns:
        A float in ``[exp(-5), 1]`` (``exp(-5) ~= 0.0067`` at ``t = 0``).
    """
    t, length = _check_step(t, length, "length", allow_zero_horizon=True)
    if length == 0 or t >= length:
        return 1.0
    phase = 1.0 - t / length
    return float(math.exp(-5.0 * phase * phase))


def fecl_reference_threshold(epoch: float, ramp_length: float = 1500.0) -> float:
    """Similarity threshold of the released code's FeCL teacher term (step 5 of the released-code loss, docs/losses.md).

    ``thr(t) = 0.3 + 0.2 * exp(-5 * (1 - min(t, R) / R) ** 2)``, i.e. ``0.3 + 0.2 * sigmoid_rampup(t, R)``: it rises
    from ~0.301 at ``t = 0`` to 0.5 at ``t >= R``.

    Args:
        epoch: the step ``t`` (the released code passes its epoch counter), ``>= 0``.
        ramp_length: ``R`` (1500 in the released code), ``>= 0``.
    """
    return 0.3 + 0.2 * sigmoid_rampup(epoch, ramp_length)


BETA_SCHEDULES = {"paper": paper_beta, "geometric": geometric_beta}


def beta_schedule(mode: str, t: float, total: float, **kwargs: Any) -> float:
    """Dispatch to a named ``beta`` schedule.

    Args:
        mode: ``"paper"`` (:func:`paper_beta`) or ``"geometric"`` (:func:`geometric_beta`).
        t: current step, same unit as ``total``.
        total: the horizon ``T``.
        kwargs: forwarded to the schedule (``beta_max``, ``beta_min``, and ``lam`` for ``"paper"``).

    Returns:
        ``beta(t)`` as a float.
    """
    try:
        fn = BETA_SCHEDULES[mode]
    except KeyError:
        raise ValueError(f"unknown beta schedule mode={mode!r}; expected one of {sorted(BETA_SCHEDULES)}.") from None
    try:
        return fn(t, total, **kwargs)
    except TypeError as err:
        raise ValueError(f"beta schedule {mode!r} got unexpected arguments {sorted(kwargs)}: {err}") from None


#: learning-rate schedules of :func:`lr_scheduler`
LR_SCHEDULES = ("constant", "poly")


def lr_scheduler(optimizer: Any, schedule: str = "constant", total_iters: int = 6000, power: float = 0.9) -> Any:
    """The training learning-rate schedule, stepped once per iteration (``LrScheduleHandler(epoch_level=False)``).

    ``"constant"`` (the paper and the authors' released scripts: SGD at lr 0.01 throughout) is a
    ``torch.optim.lr_scheduler.LambdaLR`` of factor 1; ``"poly"`` is ``PolynomialLR(total_iters, power)``, the
    decay ``lr * (1 - t / total_iters) ** power`` common in nnU-Net-style recipes.

    Raises:
        ValueError: for an unknown schedule name.
    """
    import torch

    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda _step: 1.0)
    if schedule == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=int(total_iters), power=float(power))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")
