"""KL-divergence uncertainty-weighted pseudo supervision (``L_une``) of the dual_cce paper, Eq. 13-15.

Reference:
    Y. Lu, Y. Wu, A. Chaddad et al. (dual_cce seed), Sec. 3.3, Eq. 13-15; after Zheng & Yang, IJCV 2021.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .pair_inputs import check_reduction, compute_dtype, validate_pair

__all__ = ["KLUncertaintyLoss"]


class KLUncertaintyLoss(_Loss):
    """Uncertainty loss ``L_une`` for the Subnet A direction (paper Eq. 13-15).

    For logits ``a`` (the network being trained) and ``b`` (the network providing the pseudo label), shape
    ``(B, C, *spatial)``, per voxel ``i``::

        p_A = softmax(a),  p_B = softmax(b),  q_B = softmax(b / T_p)                    (T_p = ``temperature``)
        L_p,i  = CE(p_A, q_B) = -sum_c q_B,c log p_A,c                                   (Eq. 13)
        D_KL,i = sum_c p_B,c (log p_B,c - log p_A,c)        = KL(p_B || p_A)             (Eq. 15)
        l_i    = exp(-D_KL,i) * L_p,i + D_KL,i                                           (Eq. 14)

    and ``"mean"`` is ``mean_i l_i`` over all ``B * prod(spatial)`` voxels. Eq. 1 has ``L_u^A + L_u^B``: call the
    loss twice with the arguments swapped to get the Subnet B direction.

    Choices where the paper is ambiguous:
        * ``sigma(p_B / T_p)`` (Eq. 13) is read as the softmax of Subnet B's *logits* divided by ``T_p`` (the text
          calls the pre-softmax output ``p^u``); dividing probabilities by ``T_p`` and re-applying softmax would not
          sharpen them as the text says ``T_p = 0.5`` does.
        * ``D_KL`` uses the untempered softmax ``p_B`` (``T = 1``), in the argument order printed in Eq. 15,
          summed over classes.
        * Subnet B is the pseudo-label provider and is detached entirely (in ``q_B`` and in ``D_KL``): no gradient
          reaches ``logits_b``. The weight ``exp(-D_KL)`` is *not* detached, so ``logits_a`` also gets the gradient
          through the weight (as in the rectification loss of Zheng & Yang that the paper cites).
    """

    def __init__(self, temperature: float = 0.5, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        """
        Args:
            temperature: ``T_p > 0`` of Eq. 13 (the paper's best value is 0.5). Defaults to 0.5.
            reduction: ``"mean"`` (over all voxels), ``"sum"``, or ``"none"`` (the ``(B, *spatial)`` map of ``l_i``).

        Raises:
            ValueError: for a non-positive / non-finite ``temperature`` or an unknown ``reduction``.
        """
        super().__init__(reduction=check_reduction("KLUncertaintyLoss", reduction))
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(
                f"KLUncertaintyLoss temperature must be a finite number > 0, got temperature={temperature}."
            )
        self.temperature = t

    def voxel_terms(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voxel ``(L_p, D_KL)``, each ``(B, *spatial)`` (inputs validated by :meth:`forward`)."""
        dtype = compute_dtype(logits_a, logits_b)
        log_pa = F.log_softmax(logits_a.to(dtype), dim=1)
        with torch.no_grad():
            b = logits_b.detach().to(dtype)
            q_b = F.softmax(b / self.temperature, dim=1)
            log_pb = F.log_softmax(b, dim=1)
        l_p = -(q_b * log_pa).sum(dim=1)
        d_kl = (log_pb.exp() * (log_pb - log_pa)).sum(dim=1)
        return l_p, d_kl

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits_a: ``(B, C, *spatial)`` raw outputs of the network being supervised, ``C >= 2``.
            logits_b: ``(B, C, *spatial)`` raw outputs of the pseudo-label network; detached here.

        Returns:
            A float32 (float64 for float64 inputs) scalar for ``"mean"`` / ``"sum"``, else the ``(B, *spatial)`` map.
        """
        validate_pair("KLUncertaintyLoss", logits_a, logits_b, ("logits_a", "logits_b"), 2)
        l_p, d_kl = self.voxel_terms(logits_a, logits_b)
        per_voxel = torch.exp(-d_kl) * l_p + d_kl
        if self.reduction == LossReduction.MEAN.value:
            return per_voxel.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_voxel.sum()
        return per_voxel
