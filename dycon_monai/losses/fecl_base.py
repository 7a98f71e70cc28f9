"""What the two FeCL losses share: input validation, patch preparation from maps and predictions, the reduction.

:class:`FeCLBase` turns embedding maps into patches (:mod:`dycon_monai.losses.patches`: grid ``grid_size``, label
threshold, patch entropy), checks every input, L2-normalises the embeddings and counts positives; a subclass computes
the loss from normalised ``(B, N, D)`` patch embeddings in :meth:`FeCLBase._loss`. The subclasses are
:class:`~dycon_monai.losses.FeCLLoss` (the paper, Eq. 3-6) and :class:`~dycon_monai.losses.FeCLReferenceLoss` (the
authors' released code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from dycon_monai.losses.patches import patch_entropy, patchify_embeddings, patchify_labels

__all__ = ["NEG_INF", "FeCLBase"]

#: minus infinity, for masked log-sum-exp terms of both FeCL kernels
NEG_INF = float("-inf")


class FeCLBase(_Loss):
    """Base of the FeCL losses (see the module docstring); not a loss by itself.

    Args:
        temperature: ``tau`` in ``S = cos / tau`` (0.6 in the paper).
        gamma: focal exponent.
        chunk_size: anchors per chunk; memory is ``O(B * chunk_size * N)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see the subclass).
        grid_size: ``k`` for map inputs (``(B, D, *spatial)`` embeddings are pooled to ``k^d`` patches).
        label_threshold: foreground threshold for map-input labels (:func:`patchify_labels`).
        gambling_temperature: ``T_g`` of Eq. 5, used when the loss computes the patch entropy itself from
            ``student_probs`` (only when :attr:`uses_entropy`).

    Attributes:
        epoch: the epoch ``t`` a ``FeCLEpochHandler`` sets (read by the released-code variant). Defaults to 0.
    """

    def __init__(
        self,
        temperature: float = 0.6,
        gamma: float = 0.5,
        chunk_size: int = 256,
        reduction: LossReduction | str = LossReduction.MEAN,
        grid_size: int = 16,
        label_threshold: float = 0.5,
        gambling_temperature: float = 1.0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        name = type(self).__name__
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"{name} temperature must be a finite number > 0, got {temperature}.")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"{name} gamma must be a finite number >= 0, got {gamma}.")
        for key, value in (("chunk_size", chunk_size), ("grid_size", grid_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} {key} must be a positive integer, got {value!r}.")
        if not gambling_temperature > 0:
            raise ValueError(f"{name} gambling_temperature must be > 0, got {gambling_temperature}.")
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.chunk_size = int(chunk_size)
        self.grid_size = int(grid_size)
        self.label_threshold = float(label_threshold)
        self.gambling_temperature = float(gambling_temperature)
        self.epoch: int = 0

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads teacher embeddings."""
        raise NotImplementedError

    @property
    def uses_entropy(self) -> bool:
        """Whether the loss weights positives by patch entropy."""
        return False

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
                f"{type(self).__name__} expects embeddings of shape (B, N, D) (or a (B, D, *spatial) map), got {shape}."
            )
        if not embeddings.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects floating embeddings, got dtype {embeddings.dtype}.")
        bsz, n, _ = embeddings.shape
        if n < 1 or embeddings.shape[2] < 1:
            raise ValueError(f"FeCLLoss embeddings need N >= 1 patches and D >= 1 dims, got {tuple(embeddings.shape)}.")
        if not isinstance(labels, torch.Tensor) or labels.shape != (bsz, n):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(
                f"{type(self).__name__} expects labels of shape (B, N) = {(bsz, n)} matching embeddings {tuple(embeddings.shape)}, "
                f"got {shape}."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"{type(self).__name__} expects integer patch labels (B, N), got dtype {labels.dtype}; use patchify_labels() to "
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
                    f"{type(self).__name__} teacher_embeddings must have the shape of embeddings {tuple(embeddings.shape)}, got {shape}."
                )
            if not teacher_embeddings.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__} expects floating teacher_embeddings, got dtype {teacher_embeddings.dtype}."
                )
        if patch_entropy is not None:
            if not isinstance(patch_entropy, torch.Tensor) or patch_entropy.shape != (bsz, n):
                shape = tuple(patch_entropy.shape) if isinstance(patch_entropy, torch.Tensor) else type(patch_entropy)
                raise ValueError(
                    f"{type(self).__name__} expects patch_entropy of shape (B, N) = {(bsz, n)}, got {shape}; use patch_entropy() "
                    "to pool voxel probabilities onto the patch grid."
                )
            if not patch_entropy.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__} expects floating patch_entropy, got dtype {patch_entropy.dtype}."
                )
            tol = 1e-3
            in_range = (patch_entropy >= -tol) & (patch_entropy <= 1.0 + tol)
            if not bool(in_range.all()):
                bad = patch_entropy[~in_range].flatten()[0].item()
                raise ValueError(
                    f"{type(self).__name__} expects patch_entropy normalised to [0, 1] (entropy / log C), found value {bad} "
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
                f"{type(self).__name__} teacher embedding map must have the shape of the student map {tuple(embeddings.shape)}, "
                f"got {shape}."
            )
        emb = patchify_embeddings(embeddings, self.grid_size)
        lab = patchify_labels(labels, self.grid_size, self.label_threshold, spatial_dims=spatial_dims)
        if lab.shape[0] != emb.shape[0]:
            raise ValueError(
                f"{type(self).__name__} label volume batch {tuple(labels.shape)} does not match embedding map {tuple(embeddings.shape)}."
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
                f"{type(self).__name__} student_probs is only used with embedding maps (B, D, *spatial); with (B, N, D) patch "
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
            labels: ``(B - B_u, 1, *spatial)`` ground-truth volume of the first samples (class indices), or ``None``
                when ``B_u == B``.
            teacher_embeddings, student_probs: as in :meth:`forward`.

        Patch labels: with two classes, a patch is foreground when its mean label exceeds ``label_threshold``
        (binary path). With ``C > 2`` classes each patch takes its majority class (the argmax of the per-class voxel
        fractions of the one-hot volume, see :func:`~dycon_monai.losses.patches.patchify_labels`); a tie goes to the
        lowest class index, and a mixed patch simply takes the class most of its voxels have.

        Raises:
            ValueError: a ground-truth label outside ``0 .. C - 1``.
        """
        n_cls = int(teacher_logits.shape[1])
        pseudo = teacher_logits.argmax(dim=1, keepdim=True)
        if n_cls <= 2:
            volumes = [] if labels is None else [labels.float()]
            volumes.append(pseudo.float())
            return self(embeddings, torch.cat(volumes, dim=0), teacher_embeddings, student_probs=student_probs)
        volumes = [pseudo]
        if labels is not None:
            truth = labels.long()
            if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= n_cls):
                raise ValueError(
                    f"{type(self).__name__}: ground-truth labels must be class indices in 0..{n_cls - 1} for a "
                    f"{n_cls}-class network, got values in [{int(truth.min())}, {int(truth.max())}]."
                )
            volumes.insert(0, truth)
        one_hot = F.one_hot(torch.cat(volumes, dim=0)[:, 0], n_cls).movedim(-1, 1).float()
        return self(embeddings, one_hot, teacher_embeddings, student_probs=student_probs)

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
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        zn = F.normalize(embeddings.to(dtype), dim=2)
        ztn = None
        if teacher_embeddings is not None:
            ztn = F.normalize(teacher_embeddings.detach().to(dtype), dim=2)
        labels = labels.long()
        return self._loss(zn, ztn, labels, self._positive_counts(labels), patch_entropy)

    def _loss(
        self,
        zn: torch.Tensor,
        ztn: torch.Tensor | None,
        labels: torch.Tensor,
        pos_count: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> torch.Tensor:
        """The loss from normalised student / teacher patch embeddings, labels and positive counts."""
        raise NotImplementedError

    @staticmethod
    def _positive_counts(labels: torch.Tensor) -> torch.Tensor:
        """``|P(i)|`` = same-class patches of anchor ``i`` in its sample, minus itself, without an N x N mask."""
        _, inverse = torch.unique(labels, return_inverse=True)
        n_cls = int(inverse.max()) + 1 if inverse.numel() else 1
        counts = torch.zeros(labels.shape[0], n_cls, dtype=torch.long, device=labels.device)
        counts.scatter_add_(1, inverse, torch.ones_like(inverse))
        return counts.gather(1, inverse) - 1
