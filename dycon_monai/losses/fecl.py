"""Focal Entropy-aware Contrastive Loss (FeCL), DyCON paper Eq. 3-6, as a MONAI-style loss.

Two variants, one class (:class:`FeCLLoss`) that validates inputs and prepares patches
(:mod:`dycon_monai.losses.patches`):

- ``variant="paper"`` (default): Eq. 3-6 as read in ``SPEC.md`` (focal weights on cosine similarity mapped to
  ``[0, 1]``, gambling-softmax entropy on positive pairs, top-K teacher hard negatives), computed by the chunked
  kernel of :mod:`dycon_monai.losses.fecl_paper`.
- ``variant="reference"``: the loss of the authors' released code (:mod:`dycon_monai.losses.fecl_reference`), for
  users who want to match those numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from dycon_monai.losses.fecl_paper import PaperConfig, PaperFeCLPerAnchor, PaperFeCLScalar
from dycon_monai.losses.fecl_reference import reference_fecl
from dycon_monai.losses.patches import patch_entropy, patchify_embeddings, patchify_labels
from dycon_monai.utils.schedules import fecl_reference_threshold

__all__ = ["FeCLLoss"]

_VARIANTS = ("paper", "reference")
_HARD_NEGATIVE_MODES = ("denominator", "none")


class FeCLLoss(_Loss):
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
    code's teacher term (``lambda_cross`` times the mean of ``-log(1 - z_i . zt_l + 1e-18)`` over other-class pairs
    with ``z_i . zt_l > thr(epoch)``, ``thr(t) = 0.3 + 0.2 * exp(-5 (1 - min(t, R) / R)^2)``) belongs to
    ``variant="reference"``.

    Reduction ``"mean"`` (SPEC): per sample, the mean of ``L_i`` over anchors with at least one positive, then the mean
    over the samples that have such anchors; 0 (not NaN, still differentiable) when no anchor qualifies. ``"sum"``:
    the sum of ``L_i`` over all anchors. ``"none"``: the ``(B, N)`` map of ``L_i`` (0 for anchors without positives).
    With ``variant="reference"`` its teacher term (a mean over pairs) is added to ``"mean"`` and ``"sum"`` as
    ``lambda_cross * mean``; with ``"none"`` each anchor carries its share of it, so ``none.sum() == sum``.

    Implementation: ``variant="paper"`` runs over chunks of ``chunk_size`` anchors (each chunk holds ``(B, chunk, N)``
    similarities, never ``B x N x N``), in log space (log-sum-exp), and computes the gradient with respect to the
    normalised embeddings in the same pass (hand-written, checked against autograd of a dense implementation in the
    tests); with ``reduction="none"`` the backward recomputes the chunks instead. ``variant="reference"`` reproduces the
    authors' released code (SPEC "reference" steps 1-5; its focal factor carries gradient, so it runs per chunk under
    ``torch.utils.checkpoint``); it ignores ``hard_negatives``, ``top_k`` and ``use_entropy``, refuses a ``patch_entropy``
    (their code computes none into the loss), and their scripts use ``gamma=2.0``. The result is float32 (float64 for float64 embeddings), whatever the input dtype.

    Reference:
        M. Assefa et al., "DyCON: Dynamic Uncertainty-aware Consistency and Contrastive Learning for Semi-supervised
        Medical Image Segmentation", CVPR 2025, Sec. 3.2, Eq. 3-6. Builds on supervised contrastive learning
        (Khosla et al., NeurIPS 2020).
    """

    def __init__(
        self,
        variant: str = "paper",
        temperature: float = 0.6,
        gamma: float = 0.5,
        hard_negatives: str = "denominator",
        top_k: int = 16,
        use_entropy: bool = True,
        gambling_temperature: float = 1.0,
        chunk_size: int = 256,
        lambda_cross: float = 1.0,
        ramp_length: float = 1500,
        reduction: LossReduction | str = LossReduction.MEAN,
        grid_size: int = 16,
        label_threshold: float = 0.5,
    ) -> None:
        """
        Args:
            variant: ``"paper"`` (Eq. 3-6, default) or ``"reference"`` (the authors' released code).
            temperature: ``tau`` in ``S = cos / tau`` (0.6 in the paper).
            gamma: focal exponent (0.5 for ISLES'22, 0.8 for the other datasets in the paper; 2.0 in the released
                scripts for ``variant="reference"``).
            hard_negatives: ``"denominator"`` or ``"none"`` (paper variant only).
            top_k: ``K`` teacher hard negatives per anchor (16 in the paper).
            use_entropy: multiply positive-pair weights by ``exp(Hn_k)`` when a patch entropy is given.
            gambling_temperature: ``T_g`` of Eq. 5, used when the loss computes the entropy itself from
                ``student_probs``.
            chunk_size: anchors per chunk; memory is ``O(B * chunk_size * N)``.
            lambda_cross: weight of the released code's teacher term (``variant="reference"``).
            ramp_length: ``R`` of the teacher-term threshold ``thr(epoch)`` (1500 in the released code).
            reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see the class docstring).
            grid_size: ``k`` for map inputs (``(B, D, *spatial)`` embeddings are pooled to ``k^d`` patches).
            label_threshold: foreground threshold for map-input labels (:func:`patchify_labels`).

        Attributes:
            epoch: the epoch ``t`` of ``thr(t)``; a handler (``FeCLEpochHandler``) sets it. Defaults to 0.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        if variant not in _VARIANTS:
            raise ValueError(f"FeCLLoss variant must be one of {_VARIANTS}, got {variant!r}.")
        if hard_negatives not in _HARD_NEGATIVE_MODES:
            raise ValueError(f"FeCLLoss hard_negatives must be one of {_HARD_NEGATIVE_MODES}, got {hard_negatives!r}.")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"FeCLLoss temperature must be a finite number > 0, got {temperature}.")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"FeCLLoss gamma must be a finite number >= 0, got {gamma}.")
        for name, value in (("top_k", top_k), ("chunk_size", chunk_size), ("grid_size", grid_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"FeCLLoss {name} must be a positive integer, got {value!r}.")
        if not (math.isfinite(lambda_cross) and lambda_cross >= 0):
            raise ValueError(f"FeCLLoss lambda_cross must be a finite number >= 0, got {lambda_cross}.")
        if not (math.isfinite(ramp_length) and ramp_length >= 0):
            raise ValueError(f"FeCLLoss ramp_length must be a finite number >= 0, got {ramp_length}.")
        if not gambling_temperature > 0:
            raise ValueError(f"FeCLLoss gambling_temperature must be > 0, got {gambling_temperature}.")
        self.variant = variant
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.hard_negatives = hard_negatives
        self.top_k = int(top_k)
        self.use_entropy = bool(use_entropy)
        self.gambling_temperature = float(gambling_temperature)
        self.chunk_size = int(chunk_size)
        self.lambda_cross = float(lambda_cross)
        self.ramp_length = float(ramp_length)
        self.grid_size = int(grid_size)
        self.label_threshold = float(label_threshold)
        self.epoch: int = 0

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads teacher embeddings (hard negatives of Eq. 6, or the reference teacher term)."""
        return self.variant == "reference" or self.hard_negatives != "none"

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss weights positives by patch entropy (paper variant with ``use_entropy``)."""
        return self.variant == "paper" and self.use_entropy

    # ------------------------------------------------------------------------------------------------ validation
    def _validate(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        teacher_embeddings: torch.Tensor | None,
        patch_entropy: torch.Tensor | None,
    ) -> None:
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(
                f"FeCLLoss expects embeddings of shape (B, N, D) (or a (B, D, *spatial) map), got {shape}."
            )
        if not embeddings.is_floating_point():
            raise ValueError(f"FeCLLoss expects floating embeddings, got dtype {embeddings.dtype}.")
        bsz, n, _ = embeddings.shape
        if n < 1 or embeddings.shape[2] < 1:
            raise ValueError(f"FeCLLoss embeddings need N >= 1 patches and D >= 1 dims, got {tuple(embeddings.shape)}.")
        if not isinstance(labels, torch.Tensor) or labels.shape != (bsz, n):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(
                f"FeCLLoss expects labels of shape (B, N) = {(bsz, n)} matching embeddings {tuple(embeddings.shape)}, "
                f"got {shape}."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"FeCLLoss expects integer patch labels (B, N), got dtype {labels.dtype}; use patchify_labels() to "
                "turn a label volume into patch classes."
            )
        if teacher_embeddings is not None:
            if not isinstance(teacher_embeddings, torch.Tensor) or teacher_embeddings.shape != embeddings.shape:
                shape = (
                    tuple(teacher_embeddings.shape)
                    if isinstance(teacher_embeddings, torch.Tensor)
                    else type(teacher_embeddings).__name__
                )
                raise ValueError(
                    f"FeCLLoss teacher_embeddings must have the shape of embeddings {tuple(embeddings.shape)}, "
                    f"got {shape}."
                )
            if not teacher_embeddings.is_floating_point():
                raise ValueError(f"FeCLLoss expects floating teacher_embeddings, got dtype {teacher_embeddings.dtype}.")
        if patch_entropy is not None:
            if not isinstance(patch_entropy, torch.Tensor) or patch_entropy.shape != (bsz, n):
                shape = tuple(patch_entropy.shape) if isinstance(patch_entropy, torch.Tensor) else type(patch_entropy)
                raise ValueError(
                    f"FeCLLoss expects patch_entropy of shape (B, N) = {(bsz, n)}, got {shape}; use patch_entropy() "
                    "to pool voxel probabilities onto the patch grid."
                )
            if not patch_entropy.is_floating_point():
                raise ValueError(f"FeCLLoss expects floating patch_entropy, got dtype {patch_entropy.dtype}.")
            tol = 1e-3
            in_range = (patch_entropy >= -tol) & (patch_entropy <= 1.0 + tol)
            if not bool(in_range.all()):
                bad = patch_entropy[~in_range].flatten()[0].item()
                raise ValueError(
                    f"FeCLLoss expects patch_entropy normalised to [0, 1] (entropy / log C), found value {bad} "
                    f"(shape {tuple(patch_entropy.shape)})."
                )

    def _from_maps(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        teacher_embeddings: torch.Tensor | None,
        student_probs: torch.Tensor | None,
        patch_entropy_: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        spatial_dims = embeddings.ndim - 2
        if teacher_embeddings is not None and (
            not isinstance(teacher_embeddings, torch.Tensor) or teacher_embeddings.shape != embeddings.shape
        ):
            shape = tuple(teacher_embeddings.shape) if isinstance(teacher_embeddings, torch.Tensor) else None
            raise ValueError(
                f"FeCLLoss teacher embedding map must have the shape of the student map {tuple(embeddings.shape)}, "
                f"got {shape}."
            )
        emb = patchify_embeddings(embeddings, self.grid_size)
        lab = patchify_labels(labels, self.grid_size, self.label_threshold, spatial_dims=spatial_dims)
        if lab.shape[0] != emb.shape[0]:
            raise ValueError(
                f"FeCLLoss label volume batch {tuple(labels.shape)} does not match embedding map {tuple(embeddings.shape)}."
            )
        tea = patchify_embeddings(teacher_embeddings, self.grid_size) if teacher_embeddings is not None else None
        if student_probs is not None and patch_entropy_ is None and self.uses_entropy:
            patch_entropy_ = patch_entropy(student_probs, self.grid_size, self.gambling_temperature)
        return emb, lab, tea, patch_entropy_

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        teacher_embeddings: torch.Tensor | None = None,
        patch_entropy: torch.Tensor | None = None,
        student_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            embeddings: ``(B, N, D)`` student patch embeddings (not necessarily normalised), or a ``(B, D, *spatial)``
                embedding map that is pooled to ``grid_size^d`` patches.
            labels: ``(B, N)`` integer patch classes (ground truth or teacher pseudo-label); with a map input, a label
                volume ``(B, 1, *spatial)`` / ``(B, *spatial)`` / one-hot ``(B, C, *spatial)``.
            teacher_embeddings: optional ``(B, N, D)`` (or map) teacher embeddings; detached and normalised here.
                They take the student's patch labels.
            patch_entropy: optional ``(B, N)`` normalised entropies in ``[0, 1]`` (:func:`patch_entropy`).
            student_probs: optional ``(B, C, *spatial)`` student probabilities, turned into ``patch_entropy`` when that
                is not given and the loss weights by entropy (:attr:`uses_entropy`; map inputs only).

        Returns:
            A float32 scalar (``"mean"`` / ``"sum"``) or the ``(B, N)`` per-anchor map (``"none"``).

        Raises:
            ValueError: on wrong ranks, mismatched shapes, non-integer labels or non-floating embeddings, or an
                entropy outside ``[0, 1]``.
        """
        if isinstance(embeddings, torch.Tensor) and embeddings.ndim >= 4:
            embeddings, labels, teacher_embeddings, patch_entropy = self._from_maps(
                embeddings, labels, teacher_embeddings, student_probs, patch_entropy
            )
        elif student_probs is not None and patch_entropy is None:
            raise ValueError(
                "FeCLLoss student_probs is only used with embedding maps (B, D, *spatial); with (B, N, D) patch "
                "embeddings pass patch_entropy=patch_entropy(probs, grid_size) instead."
            )
        return self.from_patches(embeddings, labels, teacher_embeddings, patch_entropy)

    def from_predictions(
        self,
        embeddings: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        teacher_embeddings: torch.Tensor | None = None,
        student_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """FeCL of a batch whose first samples carry ground truth and the rest the teacher's pseudo-labels.

        Args:
            embeddings: ``(B, D, *grid)`` student embedding map of the whole batch.
            teacher_logits: ``(B_u, C, *spatial)`` teacher logits of the last ``B_u`` samples; their argmax is the
                label volume of those samples (the ground truth of unlabeled cases is never needed).
            labels: ``(B - B_u, 1, *spatial)`` ground-truth volume of the first samples, or ``None`` when
                ``B_u == B``.
            teacher_embeddings, student_probs: as in :meth:`forward`.
        """
        if teacher_logits.shape[1] > 2:
            raise ValueError(
                f"FeCL patch labels are binary (foreground when the mean label > {self.label_threshold}); the network "
                f"predicts {teacher_logits.shape[1]} classes. Use a 2-class output or fecl_weight=0."
            )
        volumes = [] if labels is None else [labels.float()]
        volumes.append(teacher_logits.argmax(dim=1, keepdim=True).float())
        return self(embeddings, torch.cat(volumes, dim=0), teacher_embeddings, student_probs=student_probs)

    def from_patches(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        teacher_embeddings: torch.Tensor | None = None,
        patch_entropy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``(B, N, D)`` patch embeddings with ``(B, N)`` patch labels (what :meth:`forward` computes
        once map inputs are turned into patches)."""
        self._validate(embeddings, labels, teacher_embeddings, patch_entropy)
        if self.variant == "reference" and patch_entropy is not None:
            raise ValueError(
                "FeCLLoss(variant='reference') has no entropy weighting (the released code does not use its "
                "gambling_uncertainty argument in the loss); pass patch_entropy=None, or use variant='paper' for the "
                "entropy-aware positives of Eq. 4."
            )

        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        zn = F.normalize(embeddings.to(dtype), dim=2)
        ztn = None
        if teacher_embeddings is not None:
            ztn = F.normalize(teacher_embeddings.detach().to(dtype), dim=2)
        labels = labels.long()
        pos_count = self._positive_counts(labels)

        if self.variant == "reference":
            return reference_fecl(
                zn,
                ztn,
                labels,
                pos_count,
                temperature=self.temperature,
                gamma=self.gamma,
                threshold=fecl_reference_threshold(self.epoch, self.ramp_length),
                lambda_cross=self.lambda_cross,
                chunk_size=self.chunk_size,
                reduction=self.reduction,
            )
        return self._paper(zn, ztn, labels, pos_count, patch_entropy)

    @staticmethod
    def _positive_counts(labels: torch.Tensor) -> torch.Tensor:
        """``|P(i)|`` = same-class patches of anchor ``i`` in its sample, minus itself, without an N x N mask."""
        _, inverse = torch.unique(labels, return_inverse=True)
        n_cls = int(inverse.max()) + 1 if inverse.numel() else 1
        counts = torch.zeros(labels.shape[0], n_cls, dtype=torch.long, device=labels.device)
        counts.scatter_add_(1, inverse, torch.ones_like(inverse))
        return counts.gather(1, inverse) - 1

    def _paper(
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
