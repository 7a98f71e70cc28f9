"""Focal Entropy-aware Contrastive Loss (FeCL), DyCON paper Eq. 3-6, as a MONAI-style loss.

:class:`FeCLLoss` is the paper's loss (Eq. 3-6 as read in docs/losses.md: focal weights on cosine similarity mapped to
``[0, 1]``, gambling-softmax entropy on positive pairs, top-K teacher hard negatives), computed by the chunked kernel
of :mod:`dycon_monai.losses.fecl_paper`. The authors' released code is :class:`~dycon_monai.losses.FeCLReferenceLoss`
(:mod:`dycon_monai.losses.fecl_reference`); both share :class:`~dycon_monai.losses.fecl_base.FeCLBase`.
"""

from __future__ import annotations

import torch
from monai.utils import LossReduction

from dycon_monai.losses.fecl_base import FeCLBase
from dycon_monai.losses.fecl_paper import PaperConfig, PaperFeCLPerAnchor, PaperFeCLScalar

__all__ = ["FeCLLoss"]

_HARD_NEGATIVE_MODES = ("denominator", "none")


class FeCLLoss(FeCLBase):
    """Focal Entropy-aware Contrastive Loss (FeCL) of DyCON, paper Eq. 3-6.

    Inputs are ``B`` independent sets of ``N`` patch embeddings (contrast happens within each sample). With
    ``z`` the L2-normalised student patch embeddings, ``cos_ik = z_i . z_k``, ``S_ik = cos_ik / tau``, positives
    ``P(i) = {k != i : m_k = m_i}`` and negatives ``N(i) = {q : m_q != m_i}`` (``m`` the patch labels)::

        s01_ik = clamp((cos_ik + 1) / 2, 0, 1)                                    (our reading of Eq. 4, see below)
        F+_ik  = (1 - s01_ik)^gamma * exp(Hn_k),   F-_iq = s01_iq^gamma           (Eq. 4, no gradient)
        HN_i   = (1/K_i) sum_{l in topK_i} exp(cos(z_i, zt_l) / tau)              (Eq. 6, teacher l of the other class)
        L_i    = (1/|P(i)|) sum_{k in P(i)} F+_ik * -log( exp(S_ik) / (exp(S_ik) + sum_{q in N(i)} F-_iq exp(S_iq) + HN_i) )
                                                                                  (Eq. 3)

    ``Hn_k`` is the normalised gambling-softmax entropy of patch ``k`` (Eq. 5, :func:`patch_entropy`); the factor is 1
    when ``use_entropy=False`` or no entropy is given. Readings of the paper that are ours (``docs/losses.md``):
    the focal weights use the cosine mapped to ``[0, 1]`` (``S`` itself is negative-valued and a fractional power of
    it is undefined); the top-K term is added once per denominator, not once per negative; ``K_i = min(K, #other-class
    teacher patches)`` and ``HN_i = 0`` when there are none.

    ``hard_negatives``: ``"denominator"`` (paper Eq. 3/6, needs ``teacher_embeddings``) or ``"none"``. The released
    code's loss, with its own teacher term, is :class:`~dycon_monai.losses.FeCLReferenceLoss`.

    Reduction ``"mean"``: per sample, the mean of ``L_i`` over anchors with at least one positive, then the mean
    over the samples that have such anchors; 0 (not NaN, still differentiable) when no anchor qualifies. ``"sum"``:
    the sum of ``L_i`` over all anchors. ``"none"``: the ``(B, N)`` map of ``L_i`` (0 for anchors without positives).

    Implementation: the loss runs over chunks of ``chunk_size`` anchors (each chunk holds ``(B, chunk, N)``
    similarities, never ``B x N x N``), in log space (log-sum-exp), and computes the gradient with respect to the
    normalised embeddings in the same pass (hand-written, checked against autograd of a dense implementation in the
    tests); with ``reduction="none"`` the backward recomputes the chunks instead. The result is float32 (float64 for
    float64 embeddings), whatever the input dtype. Inputs, map inputs and :meth:`from_predictions` are those of
    :class:`~dycon_monai.losses.fecl_base.FeCLBase`.

    Reference:
        M. Assefa et al., "DyCON: Dynamic Uncertainty-aware Consistency and Contrastive Learning for Semi-supervised
        Medical Image Segmentation", CVPR 2025, Sec. 3.2, Eq. 3-6. Builds on supervised contrastive learning
        (Khosla et al., NeurIPS 2020).
    """

    def __init__(
        self,
        temperature: float = 0.6,
        gamma: float = 0.5,
        hard_negatives: str = "denominator",
        top_k: int = 16,
        use_entropy: bool = True,
        gambling_temperature: float = 1.0,
        chunk_size: int = 256,
        reduction: LossReduction | str = LossReduction.MEAN,
        grid_size: int = 16,
        label_threshold: float = 0.5,
    ) -> None:
        """
        Args:
            temperature: ``tau`` in ``S = cos / tau`` (0.6 in the paper).
            gamma: focal exponent (0.5 for ISLES'22, 0.8 for the other datasets in the paper).
            hard_negatives: ``"denominator"`` or ``"none"``.
            top_k: ``K`` teacher hard negatives per anchor (16 in the paper).
            use_entropy: multiply positive-pair weights by ``exp(Hn_k)`` when a patch entropy is given.
            gambling_temperature: ``T_g`` of Eq. 5, used when the loss computes the entropy itself from
                ``student_probs``.
            chunk_size: anchors per chunk; memory is ``O(B * chunk_size * N)``.
            reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see the class docstring).
            grid_size: ``k`` for map inputs (``(B, D, *spatial)`` embeddings are pooled to ``k^d`` patches).
            label_threshold: foreground threshold for map-input labels (:func:`patchify_labels`).
        """
        super().__init__(temperature, gamma, chunk_size, reduction, grid_size, label_threshold, gambling_temperature)
        if hard_negatives not in _HARD_NEGATIVE_MODES:
            raise ValueError(f"FeCLLoss hard_negatives must be one of {_HARD_NEGATIVE_MODES}, got {hard_negatives!r}.")
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
            raise ValueError(f"FeCLLoss top_k must be a positive integer, got {top_k!r}.")
        self.hard_negatives = hard_negatives
        self.top_k = int(top_k)
        self.use_entropy = bool(use_entropy)

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads teacher embeddings (the hard negatives of Eq. 6)."""
        return self.hard_negatives != "none"

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss weights positives by patch entropy (``use_entropy``)."""
        return self.use_entropy

    def _loss(
        self,
        zn: torch.Tensor,
        ztn: torch.Tensor | None,
        labels: torch.Tensor,
        pos_count: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> torch.Tensor:
        pos_weight = None
        if self.use_entropy and entropy is not None:
            pos_weight = entropy.detach().to(zn.dtype).clamp(0.0, 1.0).exp()
        cfg = PaperConfig(
            tau=self.temperature,
            gamma=self.gamma,
            top_k=self.top_k,
            mode=self.hard_negatives,
            chunk_size=self.chunk_size,
        )
        qualifies = pos_count > 0
        if self.reduction == LossReduction.NONE.value:
            return PaperFeCLPerAnchor.apply(zn, ztn, labels, pos_weight, pos_count, cfg)
        if not bool(qualifies.any()):
            return zn.sum() * 0.0  # no positive pair anywhere: 0, still attached to the graph
        if self.reduction == LossReduction.SUM.value:
            anchor_weight = qualifies.to(zn.dtype)
        else:
            per_sample = qualifies.sum(dim=1, keepdim=True).to(zn.dtype)
            n_samples = (per_sample > 0).sum().to(zn.dtype).clamp_min(1.0)
            anchor_weight = qualifies.to(zn.dtype) / (per_sample.clamp_min(1.0) * n_samples)
        return PaperFeCLScalar.apply(
            zn, ztn, labels, pos_weight, pos_count, anchor_weight, cfg, torch.is_grad_enabled() and zn.requires_grad
        )
