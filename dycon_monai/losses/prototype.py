"""Prototype guided contrastive loss ``L_c`` of the dual_cce paper (Eq. 16-20) and its weight ``lambda_c``.

Reference:
    Y. Lu, Y. Wu, A. Chaddad et al. (dual_cce seed), Sec. 3.4, Eq. 16-20; Sec. 4.2 (``lambda_c``); Table 6.
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

__all__ = ["PrototypeContrastiveLoss", "prototype_weight"]

_DISTANCES = ("euclidean", "squared_euclidean", "cosine")
_PROTOTYPE_TERMS = ("add", "subtract", "none")


def prototype_weight(iteration: float, max_iterations: float, scale: float = 0.1, exponent: float = 4.0) -> float:
    """Time-dependent weight of ``L_c`` (paper Sec. 4.2): ``lambda_c = 0.1 * exp(4 (1 - t / t_max)^2)``.

    Computed as ``scale * exp(exponent * (1 - t / t_max)^2)`` with ``t`` clamped to ``[0, t_max]``. As printed the
    exponent is positive, so the weight *decays* from ``0.1 e^4 ~ 5.46`` at ``t = 0`` to ``0.1`` at ``t_max``; the
    defaults reproduce the printed formula. The usual sigmoid ramp-up (a likely missing minus sign) is
    ``exponent=-4.0`` (0.1 e^-4 rising to 0.1).

    Raises:
        ValueError: if ``max_iterations <= 0`` or an argument is not finite.
    """
    t, t_max = float(iteration), float(max_iterations)
    if not (math.isfinite(t) and math.isfinite(t_max) and t_max > 0):
        raise ValueError(
            f"prototype_weight needs finite iteration and max_iterations > 0, got iteration={iteration}, "
            f"max_iterations={max_iterations}."
        )
    if not (math.isfinite(float(scale)) and math.isfinite(float(exponent))):
        raise ValueError(f"prototype_weight needs finite scale and exponent, got scale={scale}, exponent={exponent}.")
    phase = 1.0 - min(max(t, 0.0), t_max) / t_max
    return float(scale) * math.exp(float(exponent) * phase * phase)


class PrototypeContrastiveLoss(_Loss):
    """Prototype guided contrastive loss (paper Eq. 16-20), binary foreground / background prototypes.

    From logits ``a``, ``b`` ``(B, C, *spatial)`` (no gradient) with ``y_A = argmax a``, ``y_B = argmax b`` and the
    normalised entropies ``H_A``, ``H_B`` (Eq. 9, :func:`normalized_entropy`)::

        tau_A, tau_B = gamma-th percentile of H_A, of H_B over the whole batch
        M_i = [y_A,i == y_B,i] and [H_A,i < tau_A] and [H_B,i < tau_B]                     (Eq. 16)
        S^r = {M = 1},  S^u = {M = 0};  foreground = {y_A != 0}, background = {y_A == 0}   (Eq. 17-18)
        c_f = mean of f over S^r_f,  c_b = mean of f over S^r_b                            (Eq. 19)
        L_c(f) = sum_{S^u_f} d(f_i, c_f) + sum_{S^u_b} d(f_i, c_b) + d(c_f, c_b)          (Eq. 20, "sum")

    with ``d = distance / temperature``. The loss is ``L_c(features_a) + L_c(features_b)``, each feature map with its
    own prototypes but the shared mask and labels. ``"mean"`` replaces the two sums of Eq. 20 by their mean over the
    counted uncertain voxels (``|S^u_f| + |S^u_b|``, counting a class only when its prototype exists); ``"none"``
    returns the ``(B, *spatial)`` map of the pull terms ``d(f_i, c_{y_i})`` (0 on reliable voxels) summed over the
    two feature maps, *without* the prototype term.

    Choices where the paper is ambiguous:
        * ``features`` must have the logits' spatial size (no resizing here; interpolate the logits first if needed).
          ``features_a`` and ``features_b`` may have different channel counts.
        * Labels of uncertain voxels are also ``argmax f_A`` (Eq. 18 only labels the reliable set); for ``C > 2``
          every class != 0 is "foreground".
        * Eq. 20 *adds* ``d(c_f, c_b)``, which minimised pulls the prototypes together, while the text says it
          "promotes separation" and Table 6 calls it a soft constraint against diverging prototypes.
          ``prototype_term="add"`` (default) is the printed Eq. 20, ``"subtract"`` the separation reading
          (unbounded below with Euclidean distances), ``"none"`` Table 6's "w/o d(c_f, c_b)".
        * Prototypes carry gradient by default (else the third term would have none); ``detach_prototypes=True``
          makes them constants. Gradients reach only the features, never the logits.
        * A class with an empty reliable subset has no prototype: its pull term and ``d(c_f, c_b)`` are skipped.
        * ``d``: ``"euclidean"`` (the paper's example) is ``sqrt(||x - y||^2 + eps)`` so that the gradient at 0 is
          finite; also ``"squared_euclidean"`` and ``"cosine"`` (``1 - cos``). The paper has no temperature; the
          default ``temperature=1`` reproduces Eq. 20.
    """

    def __init__(
        self,
        gamma: float = 70.0,
        temperature: float = 1.0,
        distance: str = "euclidean",
        prototype_term: str = "add",
        detach_prototypes: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        eps: float = 1e-12,
    ) -> None:
        """
        Args:
            gamma: entropy percentile in ``[0, 100]`` (paper: 70 LA, 80 Pancreas, 30 BraTS). Defaults to 70.
            temperature: ``> 0``; every distance is divided by it. Defaults to 1.0 (the paper's Eq. 20).
            distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
            prototype_term: ``"add"`` (Eq. 20), ``"subtract"`` or ``"none"`` for ``d(c_f, c_b)``.
            detach_prototypes: make ``c_f`` / ``c_b`` constants. Defaults to False.
            reduction: ``"mean"``, ``"sum"`` (Eq. 20 literally) or ``"none"``.
            eps: ``> 0``, inside the Euclidean square root and the cosine denominator. Defaults to 1e-12.

        Raises:
            ValueError: for an argument outside the ranges above or an unknown option.
        """
        super().__init__(reduction=check_reduction("PrototypeContrastiveLoss", reduction))
        self.gamma = check_percentile("PrototypeContrastiveLoss", gamma, "gamma")
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(
                f"PrototypeContrastiveLoss temperature must be finite and > 0, got temperature={temperature}."
            )
        if distance not in _DISTANCES:
            raise ValueError(f"PrototypeContrastiveLoss distance must be one of {_DISTANCES}, got {distance!r}.")
        if prototype_term not in _PROTOTYPE_TERMS:
            raise ValueError(
                f"PrototypeContrastiveLoss prototype_term must be one of {_PROTOTYPE_TERMS}, got {prototype_term!r}."
            )
        if not eps > 0:
            raise ValueError(f"PrototypeContrastiveLoss eps must be > 0, got eps={eps}.")
        self.temperature = t
        self.distance = distance
        self.prototype_term = prototype_term
        self.detach_prototypes = bool(detach_prototypes)
        self.eps = float(eps)

    def _dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance over the last dim, divided by the temperature."""
        if self.distance == "cosine":
            cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(self.eps)
            d = 1.0 - cos
        else:
            d = (x - y).pow(2).sum(-1)
            if self.distance == "euclidean":
                d = torch.sqrt(d + self.eps)
        return d / self.temperature

    def masks(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(B, *spatial)`` reliability mask ``M`` (Eq. 16) and foreground mask ``y_A != 0`` (Eq. 18)."""
        with torch.no_grad():
            dtype = compute_dtype(logits_a, logits_b)
            log_pa = F.log_softmax(logits_a.detach().to(dtype), dim=1)
            log_pb = F.log_softmax(logits_b.detach().to(dtype), dim=1)
            y_a, y_b = log_pa.argmax(dim=1), log_pb.argmax(dim=1)
            ha, hb = normalized_entropy(log_pa), normalized_entropy(log_pb)
            tau_a, tau_b = batch_percentile(ha, self.gamma), batch_percentile(hb, self.gamma)
            reliable = (y_a == y_b) & (ha < tau_a) & (hb < tau_b)
        return reliable, y_a != 0

    def _single(
        self, features: torch.Tensor, reliable: torch.Tensor, fg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pull map ``(B, *spatial)``, number of counted voxels, prototype term) for one feature map."""
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        f = features.to(dtype).movedim(1, -1)  # (B, *spatial, D)
        pull = torch.zeros(f.shape[:-1], dtype=dtype, device=f.device)
        count = torch.zeros((), dtype=dtype, device=f.device)
        protos = []
        for cls_mask in (fg, ~fg):
            rel = reliable & cls_mask
            if not bool(rel.any()):
                protos.append(None)
                continue
            proto = f[rel].mean(dim=0)
            if self.detach_prototypes:
                proto = proto.detach()
            protos.append(proto)
            unc = ~reliable & cls_mask
            pull = torch.where(unc, self._dist(f, proto), pull)
            count = count + unc.sum()
        term = torch.zeros((), dtype=dtype, device=f.device)
        if self.prototype_term != "none" and protos[0] is not None and protos[1] is not None:
            sign = 1.0 if self.prototype_term == "add" else -1.0
            term = sign * self._dist(protos[0], protos[1])
        return pull, count, term

    def forward(
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            features_a: ``(B, D_a, *spatial)`` embedding map of Subnet A, at the logits' spatial size.
            features_b: ``(B, D_b, *spatial)`` embedding map of Subnet B.
            logits_a: ``(B, C, *spatial)`` raw outputs of Subnet A, ``C >= 2`` (used without gradient).
            logits_b: ``(B, C, *spatial)`` raw outputs of Subnet B (used without gradient).

        Returns:
            A float32 (float64 for float64 features) scalar for ``"mean"`` / ``"sum"``, else ``(B, *spatial)``.
        """
        owner = "PrototypeContrastiveLoss"
        validate_pair(owner, logits_a, logits_b, ("logits_a", "logits_b"), 2)
        for name, x in (("features_a", features_a), ("features_b", features_b)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{owner} {name} must be a floating-point torch.Tensor, got {kind}.")
            if x.ndim != logits_a.ndim or x.shape[0] != logits_a.shape[0] or x.shape[2:] != logits_a.shape[2:]:
                raise ValueError(
                    f"{owner} {name} must be (B, D, *spatial) with the logits' batch and spatial size, got {name} "
                    f"{tuple(x.shape)} and logits_a {tuple(logits_a.shape)}; resize one of them first."
                )
        reliable, fg = self.masks(logits_a, logits_b)
        pull_a, count_a, term_a = self._single(features_a, reliable, fg)
        pull_b, count_b, term_b = self._single(features_b, reliable, fg)
        if self.reduction == LossReduction.NONE.value:
            return pull_a + pull_b
        if self.reduction == LossReduction.SUM.value:
            return pull_a.sum() + term_a + pull_b.sum() + term_b
        return pull_a.sum() / count_a.clamp_min(1) + term_a + pull_b.sum() / count_b.clamp_min(1) + term_b
