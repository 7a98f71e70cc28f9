"""Uncertainty-aware Consistency Loss (UnCL), DyCON paper Eq. 1 (gradient: Eq. 2 / supplementary Eq. 10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.autograd.function import once_differentiable
from torch.nn.modules.loss import _Loss

__all__ = ["UnCLLoss", "uncl_voxel_terms"]

_DISTANCES = ("mse", "kl")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half / bfloat16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


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


def _uncl_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float,
    distance: str,
    dtype: torch.dtype,
    grad_weight: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-voxel UnCL and, when ``grad_weight`` is given, the gradient of ``sum_i grad_weight_i * l_i`` w.r.t. ``s``.

    With ``W = exp(beta H_s) + exp(beta H_t)`` and ``s`` the student logits, per voxel::

        dl/ds = dD/ds / W + beta * (1 - D exp(beta H_s) / W^2) * dH_s/ds,     dH_s/ds_c = -p_c (log p_c + H_s)

    which is Eq. 2 (``dl/dp``) multiplied by the softmax Jacobian; ``dD/ds_c = p_c (2 (p_s,c - p_t,c) - m)`` with
    ``m = sum_j 2 p_j (p_s,j - p_t,j)`` for ``"mse"`` and ``p_s - p_t`` for ``"kl"``. The gradient costs three fused
    class-sized passes (``addcmul``) on top of the forward's intermediates.
    """
    with torch.no_grad():
        log_ps = F.log_softmax(student_logits.to(dtype), dim=1)
        log_pt = F.log_softmax(teacher_logits.to(dtype), dim=1)
        ps, pt = log_ps.exp(), log_pt.exp()
        neg_h_s = (ps * log_ps).sum(dim=1, keepdim=True)  # -H_s
        neg_h_t = (pt * log_pt).sum(dim=1, keepdim=True)
        e_s = torch.exp(neg_h_s * -beta)
        w = torch.exp(neg_h_t * -beta).add_(e_s)
        if distance == "mse":
            diff = ps - pt
            del pt, log_pt  # not needed any more: free them before the gradient's temporaries
            dist = (diff * diff).sum(dim=1, keepdim=True)
        else:
            dist = (pt * (log_pt - log_ps)).sum(dim=1, keepdim=True)
        per_voxel = (dist / w).sub_((neg_h_s + neg_h_t).mul_(beta)).squeeze(1)
        if grad_weight is None:
            return per_voxel, None
        if isinstance(grad_weight, torch.Tensor):
            grad_weight = grad_weight.to(dtype).unsqueeze(1)
        a = grad_weight / w  # weight of dD/ds
        c = (1.0 - dist * e_s / (w * w)) * (grad_weight * beta)  # weight of dH_s/ds
        if distance == "mse":
            # ps * (2 a diff - a m - c log ps - c H_s)
            k = c * neg_h_s - a * (2.0 * (ps * diff).sum(dim=1, keepdim=True))
            grad = torch.addcmul(k, 2.0 * a, diff).addcmul_(c, log_ps, value=-1.0).mul_(ps)
        else:
            # ps * (a - c log ps - c H_s) - a pt
            grad = torch.addcmul(a + c * neg_h_s, c, log_ps, value=-1.0).mul_(ps).addcmul_(a, pt, value=-1.0)
        return per_voxel, grad


class _UnCLScalar(torch.autograd.Function):
    """Mean or sum of the per-voxel UnCL; the gradient is computed in the forward pass and only it is kept.

    The kept gradient stays in the compute dtype and is scaled by the incoming gradient (e.g. an AMP loss scale)
    before it is cast to the input dtype, so float16 inputs do not lose small gradients.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, beta, distance, dtype, reduction, grad_enabled):  # type: ignore[override]
        n = student_logits.numel() // student_logits.shape[1]
        need_grad = ctx.needs_input_grad[0] and grad_enabled  # needs_input_grad is True under no_grad too
        weight = (1.0 / n if reduction == LossReduction.MEAN.value else 1.0) if need_grad else None
        per_voxel, grad = _uncl_from_logits(student_logits, teacher_logits, beta, distance, dtype, weight)
        ctx.save_for_backward(grad)
        ctx.input_dtype = student_logits.dtype
        return per_voxel.mean() if reduction == LossReduction.MEAN.value else per_voxel.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype)).to(ctx.input_dtype), None, None, None, None, None, None


class _UnCLMap(torch.autograd.Function):
    """Per-voxel UnCL map; keeps only the input logits (alive anyway) and recomputes in the backward."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, beta, distance, dtype):  # type: ignore[override]
        per_voxel, _ = _uncl_from_logits(student_logits, teacher_logits, beta, distance, dtype)
        ctx.save_for_backward(student_logits, teacher_logits)
        ctx.beta, ctx.distance, ctx.dtype = beta, distance, dtype
        return per_voxel

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        student_logits, teacher_logits = ctx.saved_tensors
        _, grad = _uncl_from_logits(student_logits, teacher_logits, ctx.beta, ctx.distance, ctx.dtype, grad_output)
        return grad.to(student_logits.dtype), None, None, None, None


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
    ``beta = 0`` gives ``0.5 * mean_i D_i``, half the class-summed MSE. The gradient is written by hand (Eq. 2 chained
    through the softmax Jacobian, a few fused passes instead of autograd's chain of elementwise ops) and checked
    against autograd in the tests. For ``"mean"`` / ``"sum"`` it is computed in the forward pass and only the gradient
    is kept for the backward (one logits-sized tensor); ``"none"`` keeps nothing but the input logits and recomputes.
    It is first-order only (no double backward).

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
        dtype = _compute_dtype(student_logits, teacher_logits)
        teacher_logits = teacher_logits.detach()
        if self.reduction == LossReduction.NONE.value:
            return _UnCLMap.apply(student_logits, teacher_logits, b, self.distance, dtype)
        grad_enabled = torch.is_grad_enabled() and student_logits.requires_grad
        return _UnCLScalar.apply(student_logits, teacher_logits, b, self.distance, dtype, self.reduction, grad_enabled)

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
        dtype = _compute_dtype(student_probs, teacher_probs)
        ps = student_probs.to(dtype)
        pt = teacher_probs.detach().to(dtype)
        per_voxel = uncl_voxel_terms(
            ps, ps.clamp(self.eps, 1.0).log(), pt, pt.clamp(self.eps, 1.0).log(), b, self.distance
        )
        return self._reduce(per_voxel)
