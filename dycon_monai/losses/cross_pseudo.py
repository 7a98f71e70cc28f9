"""Cross Pseudo Supervision (CPS, Eq. 8) and Entropy-Filtered Supervision (EFS, Eq. 9-11) of the dual_cce paper.

Reference:
    Y. Lu, Y. Wu, A. Chaddad et al., "Semi-supervised 3D medical image segmentation with dual networks, Cross
    Consistency Enhancement and prototype guided contrastive learning" (dual_cce seed), Sec. 3.2, Eq. 7-12.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .pair_inputs import (
    batch_percentile,
    check_percentile,
    check_reduction,
    compute_dtype,
    normalized_entropy,
    validate_pair,
)

__all__ = ["CrossPseudoSupervisionLoss"]

_FILTER_MODES = ("both", "either")


class CrossPseudoSupervisionLoss(_Loss):
    """Bidirectional cross pseudo supervision, optionally entropy filtered (paper Eq. 7-11).

    For logits ``a`` (Subnet A) and ``b`` (Subnet B) of shape ``(B, C, *spatial)``, ``y_A = argmax_c a``,
    ``y_B = argmax_c b`` (Eq. 7; argmax of logits equals argmax of softmax), both detached::

        l_i = CE(a_i, y_B,i) + CE(b_i, y_A,i)                    (Eq. 8, per voxel, natural-log CE)

    With entropy filtering (EFS, Eq. 9-11) a voxel is ignored (``l_i`` counts neither in the sum nor in the count)
    when its normalised entropy ``H_A,i`` and ``H_B,i`` (:func:`normalized_entropy`, Eq. 9) both exceed the
    thresholds ``tau_A`` / ``tau_B``; ``"mean"`` is then Eq. 11, the sum over kept voxels divided by their number.
    ``entropy_threshold=None`` and ``entropy_percentile=None`` give plain CPS (the DyCON supplementary co-training
    baseline). The paper's ``L_cce`` (Eq. 12) is ``CPS(no filter) + CPS(filter)``, i.e. two instances of this class.

    Choices where the paper is ambiguous:
        * "both" vs "or": Sec. 3.2.2 and Fig. 3 mask a voxel when the entropy is high in *both* models; Eq. 10 prints
          "or". ``filter_mode="both"`` (default) follows the text, ``filter_mode="either"`` follows Eq. 10.
        * Thresholds: a fixed ``entropy_threshold`` (on the ``[0, 1]`` normalised entropy, the same for both nets), or
          the paper's per-model ``gamma``-th percentile of the batch entropies (``entropy_percentile=gamma``, one
          ``tau`` per network over all ``B * prod(spatial)`` voxels of the batch). Exceeding means strictly ``>``.
        * Pseudo-labels in EFS are the other network's argmax, as in CPS (Eq. 11 does not say whose).
        * ``"mean"`` sums the two directions' means over the same kept voxels; with no kept voxel it is 0 with a
          zero gradient. ``"none"`` returns the ``(B, *spatial)`` map of ``l_i`` with ignored voxels set to 0.
    """

    def __init__(
        self,
        entropy_threshold: float | None = None,
        entropy_percentile: float | None = None,
        filter_mode: str = "both",
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        """
        Args:
            entropy_threshold: fixed threshold on the normalised entropy in ``[0, 1]``; ``None`` disables it.
            entropy_percentile: ``gamma`` in ``[0, 100]``; thresholds are each network's ``gamma``-th percentile of
                its batch entropies (Eq. 10). Mutually exclusive with ``entropy_threshold``.
            filter_mode: ``"both"`` (ignore when both entropies are high, default) or ``"either"`` (Eq. 10's "or").
            reduction: ``"mean"`` (over counted voxels), ``"sum"`` or ``"none"`` (per-voxel map).

        Raises:
            ValueError: for a bad reduction / filter_mode, a threshold outside ``[0, 1]``, a percentile outside
                ``[0, 100]``, or both thresholds given.
        """
        super().__init__(reduction=check_reduction("CrossPseudoSupervisionLoss", reduction))
        if entropy_threshold is not None and entropy_percentile is not None:
            raise ValueError(
                "CrossPseudoSupervisionLoss takes entropy_threshold or entropy_percentile, not both, got "
                f"entropy_threshold={entropy_threshold} and entropy_percentile={entropy_percentile}."
            )
        if entropy_threshold is not None:
            t = float(entropy_threshold)
            if not (math.isfinite(t) and 0.0 <= t <= 1.0):
                raise ValueError(
                    f"CrossPseudoSupervisionLoss entropy_threshold must be in [0, 1] (normalised entropy), "
                    f"got entropy_threshold={entropy_threshold}."
                )
            entropy_threshold = t
        if filter_mode not in _FILTER_MODES:
            raise ValueError(
                f"CrossPseudoSupervisionLoss filter_mode must be one of {_FILTER_MODES}, got {filter_mode!r}."
            )
        self.entropy_threshold = entropy_threshold
        self.entropy_percentile = check_percentile(
            "CrossPseudoSupervisionLoss", entropy_percentile, "entropy_percentile"
        )
        self.filter_mode = filter_mode

    def keep_mask(self, log_pa: torch.Tensor, log_pb: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B, *spatial)`` mask of the voxels that count (all True without filtering)."""
        if self.entropy_threshold is None and self.entropy_percentile is None:
            return torch.ones(log_pa.shape[:1] + log_pa.shape[2:], dtype=torch.bool, device=log_pa.device)
        with torch.no_grad():
            ha, hb = normalized_entropy(log_pa.detach()), normalized_entropy(log_pb.detach())
            if self.entropy_percentile is not None:
                tau_a, tau_b = (
                    batch_percentile(ha, self.entropy_percentile),
                    batch_percentile(hb, self.entropy_percentile),
                )
            else:
                tau_a = tau_b = self.entropy_threshold
            high_a, high_b = ha > tau_a, hb > tau_b
            ignore = (high_a & high_b) if self.filter_mode == "both" else (high_a | high_b)
        return ~ignore

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits_a: ``(B, C, *spatial)`` raw outputs of Subnet A, ``C >= 2``.
            logits_b: ``(B, C, *spatial)`` raw outputs of Subnet B.

        Returns:
            A float32 (float64 for float64 inputs) scalar for ``"mean"`` / ``"sum"``, else the ``(B, *spatial)`` map.
        """
        validate_pair("CrossPseudoSupervisionLoss", logits_a, logits_b, ("logits_a", "logits_b"), 2)
        dtype = compute_dtype(logits_a, logits_b)
        log_pa = F.log_softmax(logits_a.to(dtype), dim=1)
        log_pb = F.log_softmax(logits_b.to(dtype), dim=1)
        y_a = log_pa.detach().argmax(dim=1)
        y_b = log_pb.detach().argmax(dim=1)
        ce = F.nll_loss(log_pa, y_b, reduction="none") + F.nll_loss(log_pb, y_a, reduction="none")
        keep = self.keep_mask(log_pa, log_pb)
        per_voxel = torch.where(keep, ce, torch.zeros_like(ce))
        if self.reduction == LossReduction.NONE.value:
            return per_voxel
        total = per_voxel.sum()
        if self.reduction == LossReduction.SUM.value:
            return total
        return total / keep.sum().clamp_min(1).to(dtype)
