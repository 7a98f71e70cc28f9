"""FeCLLoss (paper variant): chunked value and gradients against a naive dense implementation, invariances,
degenerate cases, an independent supervised-contrastive special case, memory bound, patch helpers, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from dense_fecl_reference import dense_paper_fecl
from torch.utils._python_dispatch import TorchDispatchMode

from dycon_monai.losses import (
    FeCLLoss,
    FeCLReferenceLoss,
    fecl_loss,
    patch_entropy,
    patchify_embeddings,
    patchify_labels,
)


def _inputs(b=3, n=48, d=8, fg=0.3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, n, d, generator=g, dtype=dtype)
    teacher = emb + 0.5 * torch.randn(b, n, d, generator=g, dtype=dtype)
    labels = (torch.rand(b, n, generator=g) < fg).long()
    labels[:, 0], labels[:, 1] = 0, 1  # both classes in every sample
    entropy = torch.rand(b, n, generator=g, dtype=dtype)
    return emb, labels, teacher, entropy


def _value_and_grad(fn, emb, grad_out_seed=0):
    x = emb.detach().clone().requires_grad_()
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


CASES = list(
    itertools.product(
        ["denominator", "none"],  # hard-negative mode
        [False, True],  # teacher given
        [False, True],  # entropy given
        ["mean", "sum", "none"],  # reduction
    )
)


# every combination at one chunk size that leaves a ragged last chunk, and the extremes of chunk size on a subset
CHUNKED_CASES = [(*case, 7) for case in CASES] + [
    (mode, True, True, reduction, chunk)
    for mode in ("denominator",)
    for reduction in ("mean", "none")
    for chunk in (1, 16, 48, 1000)
]


@pytest.mark.parametrize("mode, with_teacher, with_entropy, reduction, chunk_size", CHUNKED_CASES)
def test_chunked_matches_dense_value_and_gradient(mode, with_teacher, with_entropy, reduction, chunk_size):
    emb, labels, teacher, entropy = _inputs()
    teacher = teacher if with_teacher else None
    entropy = entropy if with_entropy else None
    loss = FeCLLoss(hard_negatives=mode, chunk_size=chunk_size, top_k=5, reduction=reduction)

    def dense(x):
        return dense_paper_fecl(
            x,
            labels,
            teacher,
            entropy,
            hard_negatives=mode,
            top_k=5,
            reduction=reduction,
        )

    got, got_grad = _value_and_grad(lambda x: loss(x, labels, teacher, entropy), emb)
    ref, ref_grad = _value_and_grad(dense, emb)
    assert got.shape == ref.shape
    # float64 on both sides: far tighter than the 1e-5 asked for
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("mode", ["denominator", "none"])
def test_float32_matches_dense_at_larger_n(mode):
    emb, labels, teacher, entropy = _inputs(b=2, n=300, d=16, fg=0.1, dtype=torch.float32, seed=3)
    loss = FeCLLoss(hard_negatives=mode, chunk_size=64)

    def dense(x):
        return dense_paper_fecl(x, labels, teacher, entropy, hard_negatives=mode)

    got, got_grad = _value_and_grad(lambda x: loss(x, labels, teacher, entropy), emb)
    ref, ref_grad = _value_and_grad(dense, emb)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # gradients are ~1e-3 here: compare relative to their scale
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_fewer_other_class_teacher_patches_than_top_k():
    emb, labels, teacher, _ = _inputs(b=2, n=30, seed=4)
    labels.zero_()
    labels[0, :3] = 1  # 3 foreground patches < K = 16; sample 1 has a single foreground patch
    labels[1, 5] = 1
    loss = FeCLLoss(top_k=16, chunk_size=8, use_entropy=False)
    got, got_grad = _value_and_grad(lambda x: loss(x, labels, teacher), emb)
    ref, ref_grad = _value_and_grad(lambda x: dense_paper_fecl(x, labels, teacher, top_k=16), emb)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant, mode", [("paper", "denominator"), ("paper", "none"), ("reference", "none")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_permuting_patches_leaves_the_loss_unchanged(variant, mode, reduction):
    emb, labels, teacher, entropy = _inputs(b=2, n=40)
    if variant == "reference":  # the reference variant has no entropy weighting and refuses one
        entropy = None
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    loss = fecl_loss(variant, hard_negatives=mode, chunk_size=9, top_k=4, reduction=reduction)
    out, grad = _value_and_grad(lambda x: loss(x, labels, teacher, entropy), emb)
    if reduction == "none":  # permute the incoming per-anchor gradient along with the patches
        x = emb[:, perm].detach().clone().requires_grad_()
        out_p = loss(x, labels[:, perm], teacher[:, perm], None if entropy is None else entropy[:, perm])
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
        (grad_p,) = torch.autograd.grad(out_p, x, g[:, perm])
        torch.testing.assert_close(out_p.detach(), out[:, perm], rtol=1e-10, atol=1e-12)
    else:
        out_p, grad_p = _value_and_grad(
            lambda x: loss(x, labels[:, perm], teacher[:, perm], None if entropy is None else entropy[:, perm]),
            emb[:, perm],
        )
        torch.testing.assert_close(out_p, out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_p, grad[:, perm], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_single_class_sample_gives_zero_not_nan(variant):
    emb = torch.randn(1, 20, 8, requires_grad=True)
    teacher = torch.randn(1, 20, 8)
    labels = torch.zeros(1, 20, dtype=torch.long)
    entropy = torch.rand(1, 20) if variant == "paper" else None  # the reference variant refuses an entropy
    loss = fecl_loss(variant, chunk_size=6)(emb, labels, teacher, entropy)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(emb.grad).all()


def test_sample_without_positives_is_left_out_of_the_mean():
    emb, labels, teacher, _ = _inputs(b=2, n=24)
    lone = labels.clone()
    lone[1] = torch.arange(24)  # every patch of sample 1 its own class: no anchor there has a positive
    loss = FeCLLoss(chunk_size=5)
    both = loss(emb, lone, teacher)
    first = loss(emb[:1], labels[:1], teacher[:1])
    assert both.item() == pytest.approx(first.item(), rel=1e-12)


def test_no_qualifying_anchor_anywhere_is_zero_and_differentiable():
    emb = torch.randn(2, 4, 8, requires_grad=True)
    labels = torch.arange(4).repeat(2, 1)  # every patch its own class
    loss = FeCLLoss(hard_negatives="none")(emb, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def _independent_supcon(emb: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss whose denominator holds the positive and the negatives (Eq. 3 with F = 1, no HN).

    Written as one softmax cross-entropy per positive pair (target: the positive among [positive, negatives]),
    averaged per anchor over its positives, then over anchors per sample, then over samples.
    """
    z = F.normalize(emb, dim=-1)
    sample_losses = []
    for b in range(z.shape[0]):
        anchor_losses = []
        for i in range(z.shape[1]):
            same = [k for k in range(z.shape[1]) if k != i and labels[b, k] == labels[b, i]]
            other = [q for q in range(z.shape[1]) if labels[b, q] != labels[b, i]]
            if not same:
                continue
            pair_losses = []
            for k in same:
                logits = torch.stack([z[b, i] @ z[b, k]] + [z[b, i] @ z[b, q] for q in other]) / tau
                pair_losses.append(F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long)))
            anchor_losses.append(torch.stack(pair_losses).mean())
        if anchor_losses:
            sample_losses.append(torch.stack(anchor_losses).mean())
    return torch.stack(sample_losses).mean()


def test_gamma_zero_without_entropy_or_hard_negatives_is_supervised_contrastive():
    emb, labels, teacher, entropy = _inputs(b=2, n=14, d=6, fg=0.4, seed=7)
    loss = FeCLLoss(gamma=0.0, use_entropy=False, hard_negatives="none", temperature=0.6, chunk_size=4)
    got, got_grad = _value_and_grad(lambda x: loss(x, labels, teacher, entropy), emb)
    ref, ref_grad = _value_and_grad(lambda x: _independent_supcon(x, labels, 0.6), emb)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-8, atol=1e-12)


def test_none_reduction_sums_to_sum_reduction_and_keeps_zero_rows():
    emb, labels, teacher, entropy = _inputs(b=2, n=20)
    labels[1] = 0
    labels[1, 3] = 1  # a lone foreground patch: no positive, row value 0
    for mode in ("denominator", "none"):
        per = FeCLLoss(hard_negatives=mode, reduction="none", chunk_size=6)(emb, labels, teacher, entropy)
        total = FeCLLoss(hard_negatives=mode, reduction="sum", chunk_size=6)(emb, labels, teacher, entropy)
        assert per.shape == (2, 20)
        assert per.sum().item() == pytest.approx(total.item(), rel=1e-10)
    per = FeCLLoss(hard_negatives="none", reduction="none")(emb, labels)
    assert per[1, 3].item() == 0.0


def test_small_temperature_is_stable_in_float32():
    emb, labels, teacher, entropy = _inputs(b=2, n=40, seed=8)
    loss = FeCLLoss(temperature=0.01, chunk_size=16)
    got, got_grad = _value_and_grad(lambda x: loss(x, labels, teacher, entropy), emb.float())
    ref, ref_grad = _value_and_grad(
        lambda x: dense_paper_fecl(x, labels, teacher, entropy, temperature=0.01), emb
    )  # float64: exp(100) is still finite there
    assert torch.isfinite(got) and torch.isfinite(got_grad).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad.double(), ref_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings(dtype):
    emb, labels, teacher, entropy = _inputs(b=2, n=32, dtype=torch.float32)
    x = emb.to(dtype).requires_grad_()
    out = FeCLLoss(chunk_size=8)(x, labels, teacher.to(dtype), entropy.to(dtype))
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    ref = FeCLLoss(chunk_size=8)(x.detach().float(), labels, teacher.to(dtype).float(), entropy.to(dtype).float())
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_no_grad_mode_gives_the_same_value(variant):
    emb, labels, teacher, entropy = _inputs(b=2, n=24, dtype=torch.float32)
    entropy = entropy if variant == "paper" else None
    emb.requires_grad_()
    loss = fecl_loss(variant, chunk_size=8)
    with torch.no_grad():
        value = loss(emb, labels, teacher, entropy)
    assert not value.requires_grad
    assert value.item() == pytest.approx(loss(emb, labels, teacher, entropy).item(), rel=1e-6)


def test_teacher_and_entropy_receive_no_gradient():
    emb, labels, teacher, entropy = _inputs(b=2, n=16, dtype=torch.float32)
    teacher.requires_grad_()
    entropy.requires_grad_()
    emb.requires_grad_()
    FeCLLoss(chunk_size=4)(emb, labels, teacher, entropy).backward()
    assert emb.grad is not None and teacher.grad is None and entropy.grad is None


def test_released_teacher_term_is_not_a_paper_mode():
    # the released code's teacher term lives in variant="reference" only
    with pytest.raises(ValueError, match=r"hard_negatives must be one of \('denominator', 'none'\), got 'auxiliary'"):
        FeCLLoss(hard_negatives="auxiliary")


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("variant, mode", [("paper", "denominator"), ("paper", "none"), ("reference", "none")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_materialises_b_n_n(variant, mode, reduction):
    b, n, d, chunk = 2, 256, 8, 32
    emb, labels, teacher, entropy = _inputs(b=b, n=n, d=d, dtype=torch.float32)
    entropy = entropy if variant == "paper" else None
    emb.requires_grad_()
    loss = fecl_loss(variant, hard_negatives=mode, chunk_size=chunk, reduction=reduction)
    with _LargestTensor() as probe:
        out = loss(emb, labels, teacher, entropy)
        out.sum().backward()
    assert probe.largest <= b * chunk * n, (probe.largest, probe.op)
    assert probe.largest < b * n * n


def test_probe_sees_a_dense_backward():
    emb, labels, teacher, entropy = _inputs(b=2, n=64, d=8, dtype=torch.float32)
    emb.requires_grad_()
    out = dense_paper_fecl(emb, labels, teacher, entropy)
    with _LargestTensor() as probe:
        out.backward()
    assert probe.largest >= 2 * 64 * 64


def test_embedding_maps_are_pooled_like_the_helpers():
    torch.manual_seed(0)
    emb_map = torch.randn(2, 8, 8, 8, 8)
    teacher_map = torch.randn(2, 8, 8, 8, 8)
    label = (torch.rand(2, 1, 16, 16, 16) > 0.7).float()
    probs = torch.rand(2, 2, 16, 16, 16).softmax(1)
    loss = FeCLLoss(grid_size=4, chunk_size=16)
    got = loss(emb_map, label, teacher_map, student_probs=probs)
    ref = loss(
        patchify_embeddings(emb_map, 4),
        patchify_labels(label, 4),
        patchify_embeddings(teacher_map, 4),
        patch_entropy(probs, 4),
    )
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_patch_helpers_share_one_ordering():
    b, g = 1, 4
    # a map whose channels encode the voxel's (x, y, z) patch index; one labelled patch; one uncertain patch
    coords = torch.stack(torch.meshgrid(*[torch.arange(8.0) // 2] * 3, indexing="ij"))
    emb = patchify_embeddings(coords[None], grid_size=g)
    assert emb.shape == (b, g**3, 3)
    label = torch.zeros(b, 8, 8, 8)
    label[0, 2:4, 4:6, 6:8] = 1  # patch (1, 2, 3)
    lab = patchify_labels(label, grid_size=g)
    probs = torch.zeros(b, 2, 8, 8, 8)
    probs[:, 0] = 1.0
    probs[0, :, 2:4, 4:6, 6:8] = 0.5  # the same patch is maximally uncertain
    ent = patch_entropy(probs, grid_size=g)
    idx = int(lab[0].argmax())
    assert lab[0].sum() == 1 and int(ent[0].argmax()) == idx
    assert emb[0, idx].tolist() == [1.0, 2.0, 3.0]
    assert idx == 1 * g * g + 2 * g + 3
    assert ent[0, idx].item() == pytest.approx(1.0) and ent[0].sum().item() == pytest.approx(1.0, abs=1e-4)


def test_patchify_labels_threshold_channel_and_one_hot():
    label = torch.zeros(1, 1, 4, 4, 4)
    label[0, 0, :2, :2, :1] = 1  # 2 of the 8 voxels of patch 0: mean 0.25
    label[0, 0, 2:, 2:, 2:] = 1  # all of patch 7
    assert patchify_labels(label, grid_size=2).tolist() == [[0, 0, 0, 0, 0, 0, 0, 1]]
    assert patchify_labels(label, grid_size=2, threshold=0.2).tolist() == [[1, 0, 0, 0, 0, 0, 0, 1]]
    assert torch.equal(patchify_labels(label[:, 0], grid_size=2), patchify_labels(label, grid_size=2))
    one_hot = torch.cat([1 - label, label, torch.zeros_like(label)], dim=1)
    assert patchify_labels(one_hot, grid_size=2).tolist() == [[0, 0, 0, 0, 0, 0, 0, 1]]


def test_patch_entropy_gambling_temperature():
    p = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 2, 2).contiguous()
    for temp in (1.0, 0.5, 2.0):
        q = p[0, :, 0, 0, 0] ** (1.0 / temp)
        q = q / q.sum()
        expected = -(q * q.log()).sum() / math.log(3)
        got = patch_entropy(p, grid_size=1, gambling_temperature=temp)
        assert got.shape == (1, 1)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert patch_entropy(torch.full((1, 2, 2, 2, 2), 0.5), grid_size=2).min().item() == pytest.approx(1.0)


BAD_INPUTS = [
    # (description, kwargs builder, message regex)
    (
        "embeddings rank",
        lambda e, lab, t, h: dict(embeddings=e[0], labels=lab),
        r"embeddings of shape \(B, N, D\).*got \(8, 4\)",
    ),
    (
        "labels shape",
        lambda e, lab, t, h: dict(embeddings=e, labels=lab[:, :5]),
        r"labels of shape \(B, N\) = \(2, 8\).*got \(2, 5\)",
    ),
    (
        "labels dtype",
        lambda e, lab, t, h: dict(embeddings=e, labels=lab.float()),
        r"integer patch labels.*torch.float32",
    ),
    (
        "embeddings dtype",
        lambda e, lab, t, h: dict(embeddings=e.long(), labels=lab),
        r"floating embeddings, got dtype torch.int64",
    ),
    (
        "teacher shape",
        lambda e, lab, t, h: dict(embeddings=e, labels=lab, teacher_embeddings=t[:, :, :3]),
        r"teacher_embeddings must have the shape of embeddings \(2, 8, 4\), got \(2, 8, 3\)",
    ),
    (
        "entropy shape",
        lambda e, lab, t, h: dict(embeddings=e, labels=lab, patch_entropy=h[:1]),
        r"patch_entropy of shape \(B, N\) = \(2, 8\), got \(1, 8\)",
    ),
    (
        "entropy range",
        lambda e, lab, t, h: dict(embeddings=e, labels=lab, patch_entropy=h * 3),
        r"patch_entropy normalised to \[0, 1\]",
    ),
    (
        "label volume values",
        lambda e, lab, t, h: dict(embeddings=torch.randn(2, 4, 4, 4, 4), labels=torch.full((2, 1, 4, 4, 4), 2.0)),
        r"binary label with values in \[0, 1\], got values in \[2.0, 2.0\]",
    ),
    (
        "label volume rank",
        lambda e, lab, t, h: dict(embeddings=torch.randn(2, 4, 4, 4, 4), labels=torch.zeros(2, 4, 4)),
        r"label of shape \(B, 1, \*spatial\).*got shape \(2, 4, 4\)",
    ),
]


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(case, variant):
    _, build, match = case
    e = torch.randn(2, 8, 4)
    lab = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        fecl_loss(variant)(**build(e, lab, torch.randn(2, 8, 4), torch.rand(2, 8)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hard_negatives="top"), "hard_negatives must be one of"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(gamma=-1.0), "gamma must be a finite number >= 0"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(top_k=2.5), "top_k must be a positive integer"),
        (dict(reduction="max"), "max"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeCLLoss(**kwargs)


def test_the_paper_class_has_no_variant_and_the_factory_chooses_the_class():
    with pytest.raises(TypeError):
        FeCLLoss(variant="reference")
    with pytest.raises(ValueError, match="fecl_variant must be one of"):
        fecl_loss("authors")
    ref = fecl_loss("reference", temperature=0.5, hard_negatives="denominator", top_k=8, use_entropy=True)
    assert isinstance(ref, FeCLReferenceLoss) and ref.temperature == 0.5 and ref.uses_teacher
    assert not ref.uses_entropy and not hasattr(ref, "top_k")
    with pytest.raises(TypeError, match="lambda_cross"):
        fecl_loss("paper", lambda_cross=1.0)
    assert isinstance(fecl_loss("paper", hard_negatives="none"), FeCLLoss)


def test_both_classes_prepare_the_same_patches():
    """Patch preparation (grid pooling, label threshold) is shared: same patches from the same maps."""
    torch.manual_seed(1)
    emb = torch.randn(2, 6, 8, 8, 8, dtype=torch.float64)
    label = (torch.rand(2, 1, 16, 16, 16) > 0.7).float()
    seen = {}
    for cls in (FeCLLoss, FeCLReferenceLoss):
        loss = cls(grid_size=4, reduction="none")
        loss._loss = lambda zn, ztn, labels, pos, ent, name=cls.__name__: (
            seen.setdefault(name, (zn, labels)) and zn[..., 0]
        )
        loss(emb, label)
    (za, la), (zb, lb) = seen["FeCLLoss"], seen["FeCLReferenceLoss"]
    assert torch.equal(za, zb) and torch.equal(la, lb) and za.shape == (2, 64, 6)
