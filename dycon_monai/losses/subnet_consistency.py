"""Consistency regularisation ``L_cr`` between the two subnets of the dual_cce paper (Eq. 4-6, Table 5).

Reference:
    Y. Lu, Y. Wu, A. Chaddad et al. (dual_cce seed), Sec. 3.1, Eq. 4-6; Sec. 4.4.2 / Table 5 (MSE vs KL).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .pair_inputs import check_reduction, compute_dtype, validate_pair

__all__ = ["SubnetConsistencyLoss"]

_MODES = ("mse", "kl")


class SubnetConsistencyLoss(_Loss):
    """Consistency between the softmax outputs of Subnet A and Subnet B (paper Eq. 6; MSE, or KL as in Table 5).

    For logits ``a``, ``b`` of shape ``(B, C, *spatial)``, ``p_A = softmax(a)``, ``p_B = softmax(b)``, per voxel::

        "mse":  d_i = (1/C) sum_c (p_A,c,i - p_B,c,i)^2          (so "mean" equals F.mse_loss(p_A, p_B))
        "kl":   d_i = sum_c p_B,c,i (log p_B,c,i - log p_A,c,i)  = KL(p_B || p_A), the Eq. 15 order

    Optional confidence mask (Eq. 4-5, ``threshold = lambda``, the paper's best 0.6): ``M_i = 1`` when at least one
    network predicts a foreground class (argmax != 0) with probability ``>= lambda``::

        M_i = [argmax p_B,i != 0 and max_c p_B,c,i >= lambda] OR [argmax p_A,i != 0 and max_c p_A,c,i >= lambda]

    ``"mean"`` is ``sum_i M_i d_i / (sum_i M_i + eps)`` (Eq. 6) with the mask, ``mean_i d_i`` without it; ``"sum"`` is
    ``sum_i M_i d_i``; ``"none"`` the ``(B, *spatial)`` map ``M_i d_i``.

    Choices where the paper is ambiguous:
        * Eq. 6 prints ``f(x; theta) - y`` (prediction minus ground truth), but Sec. 1, 2.2 and 3.1 describe the MSE
          *between the predictions of the two subnets*; we implement the latter, on softmax probabilities.
        * The MSE averages over classes (``torch.nn.functional.mse_loss`` convention).
        * Both subnets are students, so neither side is detached: the gradient reaches both ``logits_a`` and
          ``logits_b`` (also for ``"kl"``). The mask ``M`` is computed without gradient.
        * Eq. 5's ``f(x) >= lambda`` is read on the softmax probability of the predicted class, and "predicts the
          target class" as argmax != 0 (for ``C = 2``: foreground probability ``>= lambda``).
    """

    def __init__(
        self,
        mode: str = "mse",
        threshold: float | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        eps: float = 1e-8,
    ) -> None:
        """
        Args:
            mode: ``"mse"`` (the paper's choice) or ``"kl"`` (its Table 5 comparison). Defaults to ``"mse"``.
            threshold: ``lambda`` in ``[0, 1]`` of Eq. 5 for the confidence mask; ``None`` (default) = every voxel.
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.
            eps: the ``epsilon`` of Eq. 6's denominator (only used with a mask). Defaults to 1e-8.

        Raises:
            ValueError: for an unknown ``mode`` / ``reduction``, ``threshold`` outside ``[0, 1]`` or ``eps <= 0``.
        """
        super().__init__(reduction=check_reduction("SubnetConsistencyLoss", reduction))
        if mode not in _MODES:
            raise ValueError(f"SubnetConsistencyLoss mode must be one of {_MODES}, got mode={mode!r}.")
        if threshold is not None:
            t = float(threshold)
            if not (math.isfinite(t) and 0.0 <= t <= 1.0):
                raise ValueError(f"SubnetConsistencyLoss threshold must be in [0, 1], got threshold={threshold}.")
            threshold = t
        if not eps > 0:
            raise ValueError(f"SubnetConsistencyLoss eps must be > 0, got eps={eps}.")
        self.mode = mode
        self.threshold = threshold
        self.eps = float(eps)

    def confidence_mask(self, log_pa: torch.Tensor, log_pb: torch.Tensor) -> torch.Tensor:
        """Float ``(B, *spatial)`` mask ``M`` of Eq. 5 (all ones when ``threshold`` is None)."""
        with torch.no_grad():
            if self.threshold is None:
                return torch.ones_like(log_pa[:, 0])
            conf_a, y_a = log_pa.detach().exp().max(dim=1)
            conf_b, y_b = log_pb.detach().exp().max(dim=1)
            m = ((y_b != 0) & (conf_b >= self.threshold)) | ((y_a != 0) & (conf_a >= self.threshold))
            return m.to(log_pa.dtype)

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits_a: ``(B, C, *spatial)`` raw outputs of Subnet A, ``C >= 2``.
            logits_b: ``(B, C, *spatial)`` raw outputs of Subnet B.

        Returns:
            A float32 (float64 for float64 inputs) scalar for ``"mean"`` / ``"sum"``, else the ``(B, *spatial)`` map.
        """
        validate_pair("SubnetConsistencyLoss", logits_a, logits_b, ("logits_a", "logits_b"), 2)
        dtype = compute_dtype(logits_a, logits_b)
        log_pa = F.log_softmax(logits_a.to(dtype), dim=1)
        log_pb = F.log_softmax(logits_b.to(dtype), dim=1)
        if self.mode == "mse":
            d = (log_pa.exp() - log_pb.exp()).pow(2).mean(dim=1)
        else:
            d = (log_pb.exp() * (log_pb - log_pa)).sum(dim=1)
        m = self.confidence_mask(log_pa, log_pb)
        per_voxel = m * d
        if self.reduction == LossReduction.NONE.value:
            return per_voxel
        if self.reduction == LossReduction.SUM.value:
            return per_voxel.sum()
        if self.threshold is None:
            return per_voxel.mean()
        return per_voxel.sum() / (m.sum() + self.eps)
