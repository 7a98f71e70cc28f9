"""Uncertainty-aware Consistency Loss (UnCL), DyCON paper Eq. 1 (gradient: Eq. 2 / supplementary Eq. 10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .pair_inputs import compute_dtype

__all__ = ["UnCLLoss", "uncl_voxel_terms"]

_DISTANCES = ("mse", "kl")


def _check_beta(beta: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise ValueError(f"UnCLLoss beta must be a scalar, got a tensor of shape {tuple(beta.shape)}.")
        value = float(beta.detach().reshape(()).item())
    else:
        value = float(beta)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"UnCLLoss beta must be a finite number >= 0, got beta={value}.")
    return beta if isinstance(beta, torch.Tensor) else value


def uncl_voxel_terms(
    student_probs: torch.Tensor,
    student_log_probs: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    beta: float | torch.Tensor,
    distance: str = "mse",
) -> torch.Tensor:
    """Per-voxel UnCL (the summand of Eq. 1) from probabilities and their logarithms.

    ``l_i = D(p_s,i, p_t,i) / (exp(beta * H_s,i) + exp(beta * H_t,i)) + beta * (H_s,i + H_t,i)`` with
    ``H = -sum_c p_c log p_c`` (natural log) and ``D`` the class-summed squared difference (``"mse"``) or
    ``KL(p_t || p_s) = sum_c p_t,c (log p_t,c - log p_s,c)`` (``"kl"``).

    Probabilities and log-probabilities are passed separately so that callers can supply stable
    ``log_softmax`` values (as :class:`UnCLLoss` does) while tests can make ``p_s`` an autograd leaf and pass
    ``log(p_s)`` to check the gradient against paper Eq. 2.

    Args:
        student_probs: ``(B, C, *spatial)`` student probabilities ``p_s``.
        student_log_probs: ``log p_s``, same shape.
        teacher_probs: ``(B, C, *spatial)`` teacher probabilities ``p_t`` (callers detach them).
        teacher_log_probs: ``log p_t``, same shape.
        beta: the uncertainty scale ``beta >= 0``.
        distance: ``"mse"`` or ``"kl"``.

    Returns:
        ``(B, *spatial)`` per-voxel loss.
    """
    h_s = -(student_probs * student_log_probs).sum(dim=1)
    h_t = -(teacher_probs * teacher_log_probs).sum(dim=1)
    if distance == "mse":
        dist = (student_probs - teacher_probs).pow(2).sum(dim=1)
    elif distance == "kl":
        dist = (teacher_probs * (teacher_log_probs - student_log_probs)).sum(dim=1)
    else:
        raise ValueError(f"UnCLLoss distance must be one of {_DISTANCES}, got {distance!r}.")
    weight = torch.exp(beta * h_s) + torch.exp(beta * h_t)
    return dist / weight + beta * (h_s + h_t)


class UnCLLoss(_Loss):
    """Uncertainty-aware Consistency Loss (UnCL) of DyCON, paper Eq. 1.

    For student logits ``s`` and teacher logits ``t`` of shape ``(B, C, *spatial)``, with ``p = softmax(., dim=1)``,
    per voxel ``i``::

        H(p)_i = -sum_c p_c,i log p_c,i                                  (natural log)
        D_i    = sum_c (p_s,c,i - p_t,c,i)^2                             ("mse", default)  or  KL(p_t || p_s) ("kl")
        l_i    = D_i / (exp(beta H_s,i) + exp(beta H_t,i)) + beta (H_s,i + H_t,i)

    and the loss is ``mean_i l_i`` (Eq. 1: ``(1/N) sum_i [...] + (beta/N) sum_i (H_s + H_t)``).

    The teacher side is detached inside: no gradient reaches ``teacher_logits``. With respect to ``p_s`` (taken as
    free variables) the gradient is, per voxel and class ``c`` (paper Eq. 2, supplementary Eq. 10, with
    ``dH_s/dp_s,c = -(log p_s,c + 1)``)::

        dl/dp_s,c = 2 (p_s,c - p_t,c) / W - D * beta * exp(beta H_s) * dH_s/dp_s,c / W^2 + beta * dH_s/dp_s,c

    where ``W = exp(beta H_s) + exp(beta H_t)``. Two readings are ours: the squared difference in the middle term is
    the class-summed ``D`` (the paper writes ``(p^s - p^t)^2``), and the last term has a ``+`` sign as in supplementary
    Eq. 10 (the main text's Eq. 2 prints ``-``; the derivative of ``+beta H_s`` is ``+beta dH_s/dp``). The tests
    check exactly this expression against autograd.

    Numerics: probabilities and logs come from ``log_softmax`` computed in float32 (float64 when an input is float64),
    so logits of magnitude 1e4 and float16 / bfloat16 inputs give finite values and gradients. The result is float32
    (float64 for float64 inputs) whatever the input dtype, which is what mixed-precision training wants for a loss.
    ``beta = 0`` gives ``0.5 * mean_i D_i``, half the class-summed MSE. The gradient is plain autograd through
    ``log_softmax``: a hand-written Eq. 2 backward was measured against it (``benchmarks/bench_losses.py``, see
    ``docs/benchmarks.md``) and was slower with under 20 % less peak memory, so it was not kept. The tests check the
    autograd gradient against Eq. 2 chained through the softmax Jacobian.

    Reference:
        M. Assefa et al., "DyCON: Dynamic Uncertainty-aware Consistency and Contrastive Learning for Semi-supervised
        Medical Image Segmentation", CVPR 2025, Sec. 3.1, Eq. 1-2.
    """

    def __init__(
        self,
        beta: float = 1.0,
        distance: str = "mse",
        reduction: LossReduction | str = LossReduction.MEAN,
        eps: float = 1e-8,
    ) -> None:
        """
        Args:
            beta: uncertainty scale ``beta >= 0`` (Eq. 1). A schedule handler may overwrite the ``beta`` attribute
                every step; ``forward(..., beta=x)`` overrides it for one call. Defaults to 1.0.
            distance: ``"mse"`` (class-summed squared difference of probabilities, the paper's choice) or ``"kl"``
                (``KL(p_t || p_s)``). Defaults to ``"mse"``.
            reduction: ``"mean"`` (Eq. 1, the mean over all ``B * prod(spatial)`` voxels), ``"sum"``, or ``"none"``
                (the per-voxel loss map of shape ``(B, *spatial)``). Defaults to ``"mean"``.
            eps: lower clamp for probabilities in :meth:`forward_probs` (logits go through ``log_softmax`` and need
                no clamp). Defaults to 1e-8.

        Raises:
            ValueError: for an unknown ``distance`` or ``reduction``, a negative or non-finite ``beta``, or
                ``eps <= 0``.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        if distance not in _DISTANCES:
            raise ValueError(f"UnCLLoss distance must be one of {_DISTANCES}, got {distance!r}.")
        if not eps > 0:
            raise ValueError(f"UnCLLoss eps must be > 0, got eps={eps}.")
        self.beta = _check_beta(beta)
        self.distance = distance
        self.eps = float(eps)

    @staticmethod
    def _validate(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
        for name, x in (("student", student), ("teacher", teacher)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"UnCLLoss {name} {what} must be a torch.Tensor, got {type(x).__name__}.")
            if x.ndim < 3:
                raise ValueError(
                    f"UnCLLoss expects {name} {what} of shape (B, C, *spatial) with at least one spatial dim, "
                    f"got shape {tuple(x.shape)} (ndim={x.ndim})."
                )
            if not x.is_floating_point():
                raise ValueError(
                    f"UnCLLoss expects floating-point {name} {what}, got dtype {x.dtype} (shape {tuple(x.shape)})."
                )
        if student.shape != teacher.shape:
            raise ValueError(
                f"UnCLLoss student and teacher {what} must have the same shape, got student {tuple(student.shape)} "
                f"and teacher {tuple(teacher.shape)}."
            )
        if student.shape[1] < 2:
            raise ValueError(
                f"UnCLLoss needs at least 2 channels (softmax over dim 1), got {what} of shape {tuple(student.shape)}; "
                "for a single sigmoid channel x pass the two-class logits torch.cat([torch.zeros_like(x), x], 1)."
            )

    def _reduce(self, per_voxel: torch.Tensor) -> torch.Tensor:
        if self.reduction == LossReduction.MEAN.value:
            return per_voxel.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_voxel.sum()
        return per_voxel

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            student_logits: ``(B, C, *spatial)`` raw student outputs (before softmax), ``C >= 2``.
            teacher_logits: ``(B, C, *spatial)`` raw teacher outputs; detached here.
            beta: optional per-call ``beta`` overriding the ``beta`` attribute.

        Returns:
            A float32 (float64 for float64 inputs) scalar for ``"mean"`` / ``"sum"``, else the ``(B, *spatial)`` map.

        Raises:
            ValueError: if an input is not a floating tensor of rank >= 3, the shapes differ, ``C < 2``, or ``beta``
                is negative / non-finite.
        """
        self._validate(student_logits, teacher_logits, "logits")
        b = _check_beta(self.beta if beta is None else beta)
        b = float(b) if isinstance(b, torch.Tensor) else b
        dtype = compute_dtype(student_logits, teacher_logits)
        log_ps = F.log_softmax(student_logits.to(dtype), dim=1)
        with torch.no_grad():
            log_pt = F.log_softmax(teacher_logits.detach().to(dtype), dim=1)
        per_voxel = uncl_voxel_terms(log_ps.exp(), log_ps, log_pt.exp(), log_pt, b, self.distance)
        return self._reduce(per_voxel)

    def forward_probs(
        self, student_probs: torch.Tensor, teacher_probs: torch.Tensor, beta: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """UnCL from probabilities (already softmax-ed), for callers that hold probabilities rather than logits.

        Logs are taken of the probabilities clamped to ``[eps, 1]``; prefer :meth:`forward` with logits, which is
        exact and stable for any logit magnitude.

        Args:
            student_probs: ``(B, C, *spatial)`` student probabilities (sum to 1 over dim 1).
            teacher_probs: ``(B, C, *spatial)`` teacher probabilities; detached here.
            beta: optional per-call ``beta``.
        """
        self._validate(student_probs, teacher_probs, "probabilities")
        b = _check_beta(self.beta if beta is None else beta)
        dtype = compute_dtype(student_probs, teacher_probs)
        ps = student_probs.to(dtype)
        pt = teacher_probs.detach().to(dtype)
        per_voxel = uncl_voxel_terms(
            ps, ps.clamp(self.eps, 1.0).log(), pt, pt.clamp(self.eps, 1.0).log(), b, self.distance
        )
        return self._reduce(per_voxel)
