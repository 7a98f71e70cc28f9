"""The paper variant of FeCL (DyCON Eq. 3-6), chunked over anchors with a hand-written gradient.

No ``B x N x N`` tensor ever exists, in the forward or the backward: each chunk of anchors holds a few
``(B, chunk, N)`` buffers. :class:`dycon_monai.losses.FeCLLoss` validates the inputs and calls this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dycon_monai.losses.fecl_base import NEG_INF

__all__ = ["PaperConfig", "PaperFeCLPerAnchor", "PaperFeCLScalar", "paper_kernel"]


@dataclass(frozen=True)
class PaperConfig:
    tau: float
    gamma: float
    top_k: int
    mode: str
    chunk_size: int


@dataclass
class KernelOut:
    loss: torch.Tensor  # (B, N) per-anchor L_i (0 for anchors without positives)
    grad_loss: torch.Tensor | None  # (B, N, D) d(sum_i a_i L_i)/dz


@torch.no_grad()
def paper_kernel(
    zn: torch.Tensor,
    ztn: torch.Tensor | None,
    labels: torch.Tensor,
    pos_weight: torch.Tensor | None,
    pos_count: torch.Tensor,
    cfg: PaperConfig,
    anchor_weight: torch.Tensor | None = None,
) -> KernelOut:
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
        e_neg = sim.masked_fill(same, NEG_INF)  # other-class pairs only
        m_neg = e_neg.amax(dim=2)
        m_neg = torch.where(torch.isfinite(m_neg), m_neg, torch.zeros_like(m_neg))
        e_neg.sub_(m_neg.unsqueeze(2)).exp_()  # exp(S_iq - m_i), 0 on same-class pairs
        if weight is not None:
            e_neg.mul_(weight)  # F-_iq exp(S_iq - m_i)
        log_r = m_neg + e_neg.sum(dim=2).log()  # -inf where there is no (weighted) negative

        if use_hn:
            t_sim = torch.bmm(zc, zt_t).mul_(inv_tau).masked_fill_(same, NEG_INF)
            t_vals, t_idx = t_sim.topk(k_top, dim=2)
            del t_sim
            k_i = n_other_all[:, i0:i1].clamp(max=float(cfg.top_k))
            log_hn = torch.logsumexp(t_vals, dim=2) - k_i.clamp_min(1.0).log()
            log_hn = torch.where(k_i > 0, log_hn, torch.full_like(log_hn, NEG_INF))
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

    return KernelOut(loss, grad)


class PaperFeCLScalar(torch.autograd.Function):
    """Scalar paper FeCL whose gradient is computed in the same chunk pass as the value (no recomputation)."""

    @staticmethod
    def forward(ctx, zn, ztn, labels, pos_weight, pos_count, anchor_weight, cfg, grad_enabled):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] and grad_enabled  # needs_input_grad is True under no_grad too
        out = paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg, anchor_weight if need_grad else None)
        ctx.save_for_backward(out.grad_loss)
        return (anchor_weight * out.loss).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None, None, None, None, None


class PaperFeCLPerAnchor(torch.autograd.Function):
    """Per-anchor paper FeCL ``(B, N)``; the backward recomputes the chunks with the incoming per-anchor weights."""

    @staticmethod
    def forward(ctx, zn, ztn, labels, pos_weight, pos_count, cfg):  # type: ignore[override]
        out = paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg)
        ctx.cfg = cfg
        ctx.save_for_backward(zn, ztn, labels, pos_weight, pos_count)
        return out.loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        zn, ztn, labels, pos_weight, pos_count = ctx.saved_tensors
        cfg = ctx.cfg
        out = paper_kernel(zn, ztn, labels, pos_weight, pos_count, cfg, grad_output.to(zn.dtype))
        return out.grad_loss, None, None, None, None, None
