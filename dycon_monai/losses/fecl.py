"""Focal Entropy-aware Contrastive Loss (FeCL), DyCON paper Eq. 3-6, and the patch helpers that feed it.

Two variants:

- ``variant="paper"`` (default): Eq. 3-6 as read in ``SPEC.md`` (focal weights on cosine similarity mapped to
  ``[0, 1]``, gambling-softmax entropy on positive pairs, top-K teacher hard negatives). Computed in chunks of
  anchors with a hand-written backward, so that no ``B x N x N`` tensor ever exists, in the forward or the backward.
- ``variant="reference"``: the loss of the authors' released code (SPEC "reference" steps 1-5), for users who want to
  match those numbers; chunked over anchors with per-chunk recomputation (``torch.utils.checkpoint``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.autograd.function import once_differentiable
from torch.nn.modules.loss import _Loss
from torch.utils.checkpoint import checkpoint

from dycon_monai.utils.schedules import fecl_reference_threshold

__all__ = ["FeCLLoss", "patch_entropy", "patchify_embeddings", "patchify_labels", "pool_to_grid"]

_VARIANTS = ("paper", "reference")
_HARD_NEGATIVE_MODES = ("denominator", "none")
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------------------
# patch helpers
# ----------------------------------------------------------------------------------------------------------------------
def pool_to_grid(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Adaptive average pooling of ``(B, C, *spatial)`` onto ``grid_size`` per spatial dim (1, 2 or 3 dims).

    The one pooling that defines FeCL's patches: :func:`patchify_embeddings`, :func:`patchify_labels`,
    :func:`patch_entropy` and :class:`~dycon_monai.networks.ProjectionHead` (when asked for pooled embeddings) use it.
    """
    spatial = x.ndim - 2
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if spatial not in pools:
        raise ValueError(f"expected a (B, C, *spatial) tensor with 1-3 spatial dims, got shape {tuple(x.shape)}.")
    return pools[spatial](x, (grid_size,) * spatial)


def _check_grid(grid_size: int, where: str) -> int:
    if isinstance(grid_size, bool) or int(grid_size) != grid_size or grid_size < 1:
        raise ValueError(f"{where}: grid_size must be a positive integer, got {grid_size!r}.")
    return int(grid_size)


def patchify_embeddings(emb_map: torch.Tensor, grid_size: int = 16) -> torch.Tensor:
    """Average an embedding map onto a ``grid_size^d`` grid of patches (paper Sec. 3.2, ``k x k x k`` patches).

    Args:
        emb_map: ``(B, D, *spatial)`` embeddings from the projection head (1-3 spatial dims).
        grid_size: patches per spatial dimension ``k`` (16 in the paper: 4096 patches in 3D).

    Returns:
        ``(B, N, D)`` patch embeddings, ``N = grid_size ** len(spatial)``, NOT L2-normalised (the loss normalises).
        Patch ``n`` is the flattened (C-order) grid index, identical to :func:`patchify_labels` and
        :func:`patch_entropy`.
    """
    grid_size = _check_grid(grid_size, "patchify_embeddings")
    if not isinstance(emb_map, torch.Tensor) or emb_map.ndim not in (3, 4, 5):
        shape = tuple(emb_map.shape) if isinstance(emb_map, torch.Tensor) else type(emb_map).__name__
        raise ValueError(
            f"patchify_embeddings expects emb_map of shape (B, D, *spatial) with 1-3 spatial dims, got {shape}."
        )
    if not emb_map.is_floating_point():
        raise ValueError(f"patchify_embeddings expects a floating emb_map, got dtype {emb_map.dtype}.")
    pooled = pool_to_grid(emb_map, grid_size)
    return pooled.flatten(2).transpose(1, 2)


def patchify_labels(
    label: torch.Tensor, grid_size: int = 16, threshold: float = 0.5, spatial_dims: int = 3
) -> torch.Tensor:
    """Patch class labels on the same grid as :func:`patchify_embeddings` (paper Sec. 3.2, patched masks).

    A single-channel (binary) label is averaged per patch and the patch is foreground (1) if the mean exceeds
    ``threshold``. A multi-channel label ``(B, C, *spatial)`` with ``C > 1`` is read as one-hot / soft class scores:
    each patch gets the argmax of the per-class means.

    Args:
        label: ``(B, 1, *spatial)``, ``(B, *spatial)`` (binary, values in ``[0, 1]``) or ``(B, C, *spatial)`` one-hot.
        grid_size: patches per spatial dimension.
        threshold: foreground threshold on the patch mean (binary labels).
        spatial_dims: number of spatial dims (3 for volumes), used to tell ``(B, *spatial)`` from
            ``(B, C, *spatial)``.

    Returns:
        ``(B, N)`` int64 patch classes.

    Raises:
        ValueError: on a rank that fits neither layout, or binary label values outside ``[0, 1]`` (e.g. BraTS
            labels {0, 1, 2, 4}: map them to binary or one-hot first).
    """
    grid_size = _check_grid(grid_size, "patchify_labels")
    if not isinstance(label, torch.Tensor):
        raise ValueError(f"patchify_labels expects a torch.Tensor label, got {type(label).__name__}.")
    if label.ndim == spatial_dims + 1:
        label = label.unsqueeze(1)
    elif label.ndim != spatial_dims + 2:
        raise ValueError(
            f"patchify_labels expects label of shape (B, 1, *spatial), (B, *spatial) or one-hot (B, C, *spatial) with "
            f"{spatial_dims} spatial dims, got shape {tuple(label.shape)}."
        )
    x = label.detach().float()
    if x.shape[1] == 1:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"patchify_labels expects a binary label with values in [0, 1], got values in [{lo}, {hi}] "
                f"(shape {tuple(label.shape)}); map multi-class labels to binary or one-hot (B, C, *spatial) first."
            )
        pooled = pool_to_grid(x, grid_size)
        return (pooled.flatten(1) > threshold).long()
    pooled = pool_to_grid(x, grid_size)
    return pooled.flatten(2).argmax(dim=1)


@torch.no_grad()
def patch_entropy(
    probs: torch.Tensor, grid_size: int = 16, gambling_temperature: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """Normalised gambling-softmax entropy per patch, ``Hn`` in paper Eq. 4-5.

    Per voxel, ``p_h = softmax(log(p) / T_g + (1 - max_c p))`` (Eq. 5); the added term is the same for every class,
    so ``p_h`` is ``p^(1/T_g)`` renormalised. Its entropy is divided by ``log C`` (values in ``[0, 1]``) and averaged
    over each patch of the ``grid_size^d`` grid.

    Args:
        probs: ``(B, C, *spatial)`` student probabilities (after softmax), ``C >= 2``.
        grid_size: patches per spatial dimension.
        gambling_temperature: ``T_g > 0`` (1.0: plain softmax entropy).
        eps: lower clamp on probabilities before the log.

    Returns:
        ``(B, N)`` detached entropies in ``[0, 1]``, in the patch order of :func:`patchify_embeddings`.
    """
    grid_size = _check_grid(grid_size, "patch_entropy")
    if not isinstance(probs, torch.Tensor) or probs.ndim not in (3, 4, 5):
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"patch_entropy expects probs of shape (B, C, *spatial) with 1-3 spatial dims, got {shape}.")
    if not probs.is_floating_point():
        raise ValueError(f"patch_entropy expects floating probabilities, got dtype {probs.dtype}.")
    if probs.shape[1] < 2:
        raise ValueError(
            f"patch_entropy needs C >= 2 class probabilities (softmax over dim 1), got shape {tuple(probs.shape)}."
        )
    if not gambling_temperature > 0:
        raise ValueError(f"patch_entropy gambling_temperature must be > 0, got {gambling_temperature}.")
    p = probs.float()
    logits = p.clamp_min(eps).log() / gambling_temperature + (1.0 - p.amax(dim=1, keepdim=True))
    log_q = F.log_softmax(logits, dim=1)
    ent = -(log_q.exp() * log_q).sum(dim=1, keepdim=True) / math.log(p.shape[1])
    return pool_to_grid(ent.clamp_(0.0, 1.0), grid_size).flatten(1)


# ----------------------------------------------------------------------------------------------------------------------
# paper variant: chunked kernel with a hand-written gradient
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PaperConfig:
    tau: float
    gamma: float
    top_k: int
    mode: str
    chunk_size: int


@dataclass
class _KernelOut:
    loss: torch.Tensor  # (B, N) per-anchor L_i (0 for anchors without positives)
    grad_loss: torch.Tensor | None  # (B, N, D) d(sum_i a_i L_i)/dz


@torch.no_grad()
def _paper_kernel(
    zn: torch.Tensor,
    ztn: torch.Tensor | None,
    labels: torch.Tensor,
    pos_weight: torch.Tensor | None,
    pos_count: torch.Tensor,
    cfg: _PaperConfig,
    anchor_weight: torch.Tensor | None = None,
) -> _KernelOut:
    """Paper FeCL per anchor, chunk by chunk, optionally with the gradient of a weighted sum w.r.t. ``zn``.

    For anchor ``i`` (sample ``b``), with ``S = cos / tau``, ``w+`` / ``w-`` the detached focal weights and
    ``R_i = sum_q w-_iq exp(S_iq) + HN_i``::

        L_i = (1/|P_i|) sum_{k in P_i} w+_ik * log(1 + R_i exp(-S_ik))                    (= -log(e^S / (e^S + R)))
        dL_i/dS_ik = -(1/|P_i|) w+_ik (1 - sigma_ik),  sigma_ik = e^S_ik / (e^S_ik + R_i)  (k in P_i)
        dL_i/dS_iq =  (1/|P_i|) coef_i * w-_iq e^S_iq / R_i,  coef_i = sum_k w+_ik (1 - sigma_ik)   (q in N_i)
        dL_i/dT_il =  (1/|P_i|) coef_i * e^T_il / (K_i R_i)                                 (top-K teacher l)

    Everything is evaluated in log space (``log R`` by a masked log-sum-exp, ``1 - sigma = sigmoid(log R - S)``), so
    it is stable for any temperature. Each chunk holds a handful of ``(B, chunk, N)`` buffers; the gradient of
    ``cos_ij = zn_i . zn_j`` is scattered to both rows and columns with two ``bmm``.
    """
    bsz, n_all, _ = zn.shape
    dtype = zn.dtype
    inv_tau = 1.0 / cfg.tau
    use_hn = cfg.mode == "denominator" and ztn is not None
    k_top = min(cfg.top_k, n_all)
    want_grad = anchor_weight is not None

    loss = zn.new_zeros(bsz, n_all)
    grad = torch.zeros_like(zn) if want_grad else None
    zn_t = zn.transpose(1, 2)
    zt_t = ztn.transpose(1, 2) if ztn is not None else None
    n_other_all = (n_all - 1 - pos_count).to(dtype)  # other-class patches per anchor
    plus_half = zn.new_tensor(0.5)
    minus_half = zn.new_tensor(-0.5)

    for i0 in range(0, n_all, cfg.chunk_size):
        i1 = min(n_all, i0 + cfg.chunk_size)
        rows = torch.arange(i1 - i0, device=zn.device)
        zc = zn[:, i0:i1]
        p_cnt = pos_count[:, i0:i1].to(dtype).clamp_min(1.0)
        same = labels[:, i0:i1].unsqueeze(2) == labels.unsqueeze(1)  # (B, n, N), diagonal included

        cos = torch.bmm(zc, zn_t).clamp_(-1.0, 1.0)  # (B, n, N); clamping only removes rounding beyond +-1
        # focal weights, no gradient (Eq. 4 on s01 = (cos + 1) / 2): s01^gamma on other-class pairs now, and
        # (1 - s01)^gamma on same-class pairs further down, in one buffer: 0.5 -+ 0.5 cos, then ** gamma
        weight = None
        if cfg.gamma != 0:
            half_sign = torch.where(same, minus_half, plus_half)
            weight = torch.addcmul(plus_half, cos, half_sign).pow_(cfg.gamma)
            del half_sign
        sim = cos.mul_(inv_tau)  # S_ij, reusing the cosine buffer

        # log of the weighted negative sum R_i (before hard negatives), by a masked log-sum-exp
        e_neg = sim.masked_fill(same, _NEG_INF)  # other-class pairs only
        m_neg = e_neg.amax(dim=2)
        m_neg = torch.where(torch.isfinite(m_neg), m_neg, torch.zeros_like(m_neg))
        e_neg.sub_(m_neg.unsqueeze(2)).exp_()  # exp(S_iq - m_i), 0 on same-class pairs
        if weight is not None:
            e_neg.mul_(weight)  # F-_iq exp(S_iq - m_i)
        log_r = m_neg + e_neg.sum(dim=2).log()  # -inf where there is no (weighted) negative

        if use_hn:
            t_sim = torch.bmm(zc, zt_t).mul_(inv_tau).masked_fill_(same, _NEG_INF)
            t_vals, t_idx = t_sim.topk(k_top, dim=2)
            del t_sim
            k_i = n_other_all[:, i0:i1].clamp(max=float(cfg.top_k))
            log_hn = torch.logsumexp(t_vals, dim=2) - k_i.clamp_min(1.0).log()
            log_hn = torch.where(k_i > 0, log_hn, torch.full_like(log_hn, _NEG_INF))
            log_r = torch.logaddexp(log_r, log_hn)

        # the weight buffer now becomes F+ on positive pairs only (same class, off the diagonal)
        if weight is None:
            weight = same.to(dtype)
        else:
            weight.masked_fill_(~same, 0.0)
        weight[:, rows, rows + i0] = 0.0
        if pos_weight is not None:
            weight.mul_(pos_weight.unsqueeze(1))  # exp(Hn_k) of the positive patch k
        del same
        # u = log R_i - S_ik; the per-pair loss is softplus(u), and 1 - sigma = sigmoid(u)
        u = torch.sub(log_r.unsqueeze(2), sim)
        del sim
        per_pair = F.softplus(u, beta=1.0, threshold=50.0).mul_(weight)
        loss[:, i0:i1] = per_pair.sum(dim=2) / p_cnt
        del per_pair

        if want_grad:
            a_c = anchor_weight[:, i0:i1] / p_cnt * inv_tau  # d loss / d cos carries 1/tau
            g_pos = u.sigmoid_().mul_(weight)  # F+ (1 - sigma)
            coef = g_pos.sum(dim=2)
            finite_r = torch.isfinite(log_r)
            safe_log_r = torch.where(finite_r, log_r, torch.zeros_like(log_r))
            neg_scale = torch.where(finite_r, coef * torch.exp(m_neg - safe_log_r), torch.zeros_like(coef))
            g = e_neg.mul_(neg_scale.unsqueeze(2)).sub_(g_pos).mul_(a_c.unsqueeze(2))
            del g_pos, u, weight
            grad[:, i0:i1] += torch.bmm(g, zn)
            grad.baddbmm_(g.transpose(1, 2), zc)
            del g
            if use_hn:
                g_t = (t_vals - safe_log_r.unsqueeze(2)).exp_()
                g_t.mul_((coef / k_i.clamp_min(1.0) * a_c).unsqueeze(2))
                for b in range(bsz):  # sum_l g_il zt_l over the top-K indices, without a (n, K, D) gather
                    grad[b, i0:i1] += F.embedding_bag(t_idx[b], ztn[b], per_sample_weights=g_t[b], mode="sum")
        del e_neg

    return _KernelOut(loss, grad)


class _PaperFeCLScalar(torch.autograd.Function):
    """Scalar paper FeCL whose gradient is computed in the same chunk pass as the value (no recomputation)."""

    @staticmethod
    def forward(ctx, zn, ztn, labels, pos_weight, pos_count, anchor_weight, cfg, grad_enabled):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] and grad_enabled  # needs_input_grad is True under no_grad too
        out = _paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg, anchor_weight if need_grad else None)
        ctx.save_for_backward(out.grad_loss)
        return (anchor_weight * out.loss).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None, None, None, None, None


class _PaperFeCLPerAnchor(torch.autograd.Function):
    """Per-anchor paper FeCL ``(B, N)``; the backward recomputes the chunks with the incoming per-anchor weights."""

    @staticmethod
    def forward(ctx, zn, ztn, labels, pos_weight, pos_count, cfg):  # type: ignore[override]
        out = _paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg)
        ctx.cfg = cfg
        ctx.save_for_backward(zn, ztn, labels, pos_weight, pos_count)
        return out.loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        zn, ztn, labels, pos_weight, pos_count = ctx.saved_tensors
        cfg = ctx.cfg
        out = _paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg, grad_output.to(zn.dtype))
        return out.grad_loss, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------------
# reference variant (the authors' released code, SPEC steps 1-5), chunked with per-chunk recomputation
# ----------------------------------------------------------------------------------------------------------------------
def _reference_rows(
    zc: torch.Tensor,
    zn: torch.Tensor,
    ztn: torch.Tensor | None,
    labels_c: torch.Tensor,
    labels: torch.Tensor,
    col_max: torch.Tensor,
    pos_count_c: torch.Tensor,
    i0: int,
    tau: float,
    gamma: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC reference steps 1-5 for anchors ``i0 .. i0 + n``: per-anchor ``l_i``, teacher-term sum and pair count."""
    n = zc.shape[1]
    rows = torch.arange(n, device=zc.device)
    diag = torch.zeros(1, n, zn.shape[1], dtype=torch.bool, device=zc.device)
    diag[0, rows, rows + i0] = True
    same = labels_c.unsqueeze(2) == labels.unsqueeze(1)
    neg = ~same
    pos = same & ~diag
    # step 1: A = z z^T / tau, diagonal set to 0, minus the (detached) column max
    a = (torch.bmm(zc, zn.transpose(1, 2)) / tau).masked_fill(diag, 0.0) - col_max.unsqueeze(1)
    # step 2
    e = torch.exp(a)
    neg_sum = (e * neg).sum(dim=2, keepdim=True)
    p = e / (e + neg_sum + 1e-18)
    l_mat = -torch.log(p + 1e-18)
    # step 3: focal factor on same-class pairs, with gradient (base clamped so 0 ** (gamma - 1) never appears)
    if gamma != 0:
        base = torch.where(pos, 1.0 - p, torch.ones_like(p)).clamp_min(1e-12)
        l_mat = l_mat * base.pow(gamma)
    l_mat = torch.where(pos, l_mat, torch.zeros_like(l_mat))
    # step 4 (per anchor; the mean over all B*N anchors is taken by the caller)
    l_rows = l_mat.sum(dim=2) / (pos_count_c + 1e-18)
    # step 5: teacher term pieces
    if ztn is None:
        zeros = l_rows.new_zeros(l_rows.shape)
        return l_rows, zeros, zeros
    c_st = torch.bmm(zc, ztn.transpose(1, 2))
    valid = neg & (c_st.detach() > threshold)
    term = -torch.log((1.0 - c_st).clamp_min(0.0) + 1e-18)
    term = torch.where(valid, term, torch.zeros_like(term))
    return l_rows, term.sum(dim=2), valid.sum(dim=2).to(l_rows.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------------------------------
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
            return self._reference(zn, ztn, labels, pos_count)
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
        cfg = _PaperConfig(
            tau=self.temperature,
            gamma=self.gamma,
            top_k=self.top_k,
            mode=self.hard_negatives,
            chunk_size=self.chunk_size,
        )
        qualifies = pos_count > 0
        if self.reduction == LossReduction.NONE.value:
            return _PaperFeCLPerAnchor.apply(zn, ztn, labels, pos_weight, pos_count, cfg)
        if not bool(qualifies.any()):
            return zn.sum() * 0.0  # no positive pair anywhere: 0, still attached to the graph
        if self.reduction == LossReduction.SUM.value:
            anchor_weight = qualifies.to(zn.dtype)
        else:
            per_sample = qualifies.sum(dim=1, keepdim=True).to(zn.dtype)
            n_samples = (per_sample > 0).sum().to(zn.dtype).clamp_min(1.0)
            anchor_weight = qualifies.to(zn.dtype) / (per_sample.clamp_min(1.0) * n_samples)
        return _PaperFeCLScalar.apply(
            zn, ztn, labels, pos_weight, pos_count, anchor_weight, cfg, torch.is_grad_enabled() and zn.requires_grad
        )

    def _reference(
        self, zn: torch.Tensor, ztn: torch.Tensor | None, labels: torch.Tensor, pos_count: torch.Tensor
    ) -> torch.Tensor:
        bsz, n_all, _ = zn.shape
        tau = self.temperature
        threshold = fecl_reference_threshold(self.epoch, self.ramp_length)
        chunk = self.chunk_size
        # step 1's detached column maxima of A (diagonal set to 0), one chunk of rows at a time
        with torch.no_grad():
            col_max = zn.new_full((bsz, n_all), _NEG_INF)
            for i0 in range(0, n_all, chunk):
                i1 = min(n_all, i0 + chunk)
                rows = torch.arange(i1 - i0, device=zn.device)
                a = torch.bmm(zn[:, i0:i1], zn.transpose(1, 2)).div_(tau)
                a[:, rows, rows + i0] = 0.0
                col_max = torch.maximum(col_max, a.amax(dim=1))
                del a
        pieces = []
        for i0 in range(0, n_all, chunk):
            i1 = min(n_all, i0 + chunk)
            args = (
                zn[:, i0:i1],
                zn,
                ztn,
                labels[:, i0:i1],
                labels,
                col_max,
                pos_count[:, i0:i1].to(zn.dtype),
                i0,
                tau,
                self.gamma,
                threshold,
            )
            if torch.is_grad_enabled() and zn.requires_grad:
                pieces.append(checkpoint(_reference_rows, *args, use_reentrant=False))
            else:
                pieces.append(_reference_rows(*args))
        l_rows = torch.cat([p[0] for p in pieces], dim=1)
        t_sum = torch.cat([p[1] for p in pieces], dim=1)
        t_cnt = torch.cat([p[2] for p in pieces], dim=1)
        count = t_cnt.sum()
        scale = self.lambda_cross / count if (ztn is not None and float(count) > 0) else None
        if self.reduction == LossReduction.NONE.value:
            return l_rows + scale * t_sum if scale is not None else l_rows
        total = l_rows.mean() if self.reduction == LossReduction.MEAN.value else l_rows.sum()
        if scale is not None:
            total = total + scale * t_sum.sum()
        return total
