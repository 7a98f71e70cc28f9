"""dual_cce co-training losses (CPS / EFS, KL uncertainty, prototype contrastive, subnet consistency) against naive
per-voxel float64 implementations written straight from the paper's equations, plus validation and reductions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dycon_monai.losses import (
    CrossPseudoSupervisionLoss,
    KLUncertaintyLoss,
    PrototypeContrastiveLoss,
    SubnetConsistencyLoss,
    prototype_weight,
)

SHAPE = (2, 2, 6, 6, 4)


def _logits(seed: int, shape=SHAPE, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)


def _voxels(x: torch.Tensor):
    """Every (b, *spatial) index of a (B, C, *spatial) tensor."""
    return itertools.product(range(x.shape[0]), *(range(s) for s in x.shape[2:]))


def _vec(x: torch.Tensor, v) -> torch.Tensor:
    """The class / feature vector of voxel v = (b, *spatial)."""
    return x[(v[0], slice(None), *v[1:])]


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def _entropy(p: torch.Tensor) -> float:
    """Eq. 9 with log base C (log_2 for C = 2)."""
    c = p.numel()
    return float(-sum(float(pc) * math.log(float(pc), c) for pc in p))


# ---------------------------------------------------------------- naive references


def _naive_cps(a, b, threshold=None, percentile=None, mode="both"):
    vox = list(_voxels(a))
    ent_a = {v: _entropy(_softmax(_vec(a, v).detach())) for v in vox}
    ent_b = {v: _entropy(_softmax(_vec(b, v).detach())) for v in vox}
    if percentile is not None:
        tau_a = float(np.percentile(list(ent_a.values()), percentile))
        tau_b = float(np.percentile(list(ent_b.values()), percentile))
    else:
        tau_a = tau_b = threshold
    total, count, per_voxel = 0.0, 0, {}
    for v in vox:
        if threshold is not None or percentile is not None:
            hi_a, hi_b = ent_a[v] > tau_a, ent_b[v] > tau_b
            if (hi_a and hi_b) if mode == "both" else (hi_a or hi_b):
                per_voxel[v] = 0.0
                continue
        pa, pb = _softmax(_vec(a, v)), _softmax(_vec(b, v))
        ya, yb = int(torch.argmax(pa.detach())), int(torch.argmax(pb.detach()))
        term = -torch.log(pa[yb]) - torch.log(pb[ya])
        per_voxel[v] = float(term.detach())
        total = total + term
        count += 1
    return total, count, per_voxel


def _naive_kl(a, b, temperature):
    terms = []
    for v in _voxels(a):
        pa = _softmax(_vec(a, v))
        zb = _vec(b, v).detach()
        q, pb = _softmax(zb / temperature), _softmax(zb)
        lp = -(q * torch.log(pa)).sum()
        kl = sum(pb[c] * math.log(float(pb[c])) - pb[c] * torch.log(pa[c]) for c in range(pa.numel()))
        terms.append(torch.exp(-kl) * lp + kl)
    return terms


def _naive_consistency(a, b, mode, threshold=None, eps=1e-8):
    total, msum = 0.0, 0.0
    for v in _voxels(a):
        pa, pb = _softmax(_vec(a, v)), _softmax(_vec(b, v))
        if mode == "mse":
            d = sum((pa[c] - pb[c]) ** 2 for c in range(pa.numel())) / pa.numel()
        else:
            d = sum(pb[c] * (torch.log(pb[c]) - torch.log(pa[c])) for c in range(pa.numel()))
        m = 1.0
        if threshold is not None:
            ca, cb = float(pa.detach().max()), float(pb.detach().max())
            ya, yb = int(pa.argmax()), int(pb.argmax())
            m = float((yb != 0 and cb >= threshold) or (ya != 0 and ca >= threshold))
        total = total + m * d
        msum += m
    n = math.prod(a.shape[:1] + a.shape[2:])
    return total, (total / n if threshold is None else total / (msum + eps)), msum


def _naive_prototype(fa, fb, a, b, gamma, distance="euclidean", term="add", detach=False, eps=1e-12, temp=1.0):
    def dist(x, y):
        if distance == "cosine":
            return (
                1 - (x * y).sum() / torch.clamp(torch.sqrt((x * x).sum()) * torch.sqrt((y * y).sum()), min=eps)
            ) / temp
        sq = sum((x[k] - y[k]) ** 2 for k in range(x.numel()))
        return (torch.sqrt(sq + eps) if distance == "euclidean" else sq) / temp

    vox = list(_voxels(a))
    pa = {v: _softmax(_vec(a, v).detach()) for v in vox}
    pb = {v: _softmax(_vec(b, v).detach()) for v in vox}
    ha, hb = {v: _entropy(pa[v]) for v in vox}, {v: _entropy(pb[v]) for v in vox}
    tau_a, tau_b = np.percentile(list(ha.values()), gamma), np.percentile(list(hb.values()), gamma)
    rel, fg = {}, {}
    for v in vox:  # Eq. 16 and Eq. 18
        rel[v] = int(pa[v].argmax()) == int(pb[v].argmax()) and ha[v] < tau_a and hb[v] < tau_b
        fg[v] = int(pa[v].argmax()) == 1
    out_sum, out_mean = 0.0, 0.0
    for f in (fa, fb):
        protos = {}
        for cls in (True, False):  # Eq. 19
            members = [_vec(f, v) for v in vox if rel[v] and fg[v] == cls]
            if members:
                p = sum(members) / len(members)
                protos[cls] = p.detach() if detach else p
        pull, count = 0.0, 0
        for v in vox:  # Eq. 20, the two sums over S^u_f and S^u_b
            if not rel[v] and fg[v] in protos:
                pull = pull + dist(_vec(f, v), protos[fg[v]])
                count += 1
        extra = 0.0
        if term != "none" and len(protos) == 2:
            extra = (1 if term == "add" else -1) * dist(protos[True], protos[False])
        out_sum = out_sum + pull + extra
        out_mean = out_mean + pull / max(count, 1) + extra
    return out_sum, out_mean, rel


def _grads(value, *inputs):
    return torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)


# ---------------------------------------------------------------- CrossPseudoSupervisionLoss


def test_cps_plain_matches_naive_value_and_gradient():
    a, b = _logits(0), _logits(1)
    got = CrossPseudoSupervisionLoss()(a, b)
    total, count, _ = _naive_cps(a, b)
    assert count == 2 * 6 * 6 * 4
    expected = total / count
    assert_close(got, expected)
    for g, e in zip(_grads(got, a, b), _grads(expected, a, b)):
        assert_close(g, e)


@pytest.mark.parametrize("mode", ["both", "either"])
def test_efs_fixed_threshold_matches_naive(mode):
    a, b = _logits(2), _logits(3)
    loss = CrossPseudoSupervisionLoss(entropy_threshold=0.5, filter_mode=mode)
    got = loss(a, b)
    total, count, per_voxel = _naive_cps(a, b, threshold=0.5, mode=mode)
    assert 0 < count < 288  # some voxels are ignored, some count
    assert_close(got, total / count)
    for g, e in zip(_grads(got, a, b), _grads(total / count, a, b)):
        assert_close(g, e)
    got_map = CrossPseudoSupervisionLoss(entropy_threshold=0.5, filter_mode=mode, reduction="none")(a, b)
    assert got_map.shape == (2, 6, 6, 4)
    expected_map = torch.tensor([per_voxel[v] for v in _voxels(a)], dtype=torch.float64).reshape(2, 6, 6, 4)
    assert_close(got_map.detach(), expected_map)
    assert_close(CrossPseudoSupervisionLoss(entropy_threshold=0.5, filter_mode=mode, reduction="sum")(a, b), total)


@pytest.mark.parametrize("gamma", [30.0, 70.0])
def test_efs_percentile_matches_naive(gamma):
    a, b = _logits(4), _logits(5)
    got = CrossPseudoSupervisionLoss(entropy_percentile=gamma)(a, b)
    total, count, _ = _naive_cps(a, b, percentile=gamma)
    assert 0 < count < 288
    assert_close(got, total / count)


def test_efs_three_classes_uses_base_c_entropy():
    a, b = _logits(6, shape=(2, 3, 4, 3, 2)), _logits(7, shape=(2, 3, 4, 3, 2))
    total, count, _ = _naive_cps(a, b, threshold=0.6)
    assert 0 < count < 48
    assert_close(CrossPseudoSupervisionLoss(entropy_threshold=0.6)(a, b), total / count)


def test_cps_float32_input_gives_float32():
    a, b = _logits(8).detach().float(), _logits(9).detach().float()
    got = CrossPseudoSupervisionLoss()(a, b)
    assert got.dtype == torch.float32
    total, count, _ = _naive_cps(a.double(), b.double())
    assert_close(got.double(), total / count, rtol=1e-5, atol=1e-6)


def test_cps_all_ignored_is_zero_with_zero_gradient():
    a, b = _logits(10), _logits(11)
    got = CrossPseudoSupervisionLoss(entropy_threshold=0.0)(a, b)  # every entropy is > 0
    assert got.item() == 0.0
    ga, gb = _grads(got, a, b)
    assert torch.count_nonzero(ga) == 0 and torch.count_nonzero(gb) == 0


def test_cps_pseudo_labels_are_detached():
    # the gradient on b must come only from CE(b, argmax a): nothing flows back through b's own pseudo-label
    a, b = _logits(12), _logits(13)
    (gb,) = _grads(CrossPseudoSupervisionLoss(reduction="sum")(a, b), b)
    (expected,) = _grads(F.cross_entropy(b, a.detach().argmax(1), reduction="sum"), b)
    assert_close(gb, expected)
    (ga,) = _grads(CrossPseudoSupervisionLoss(reduction="sum")(a, b), a)
    (expected_a,) = _grads(F.cross_entropy(a, b.detach().argmax(1), reduction="sum"), a)
    assert_close(ga, expected_a)


def test_cps_constructor_validation():
    with pytest.raises(ValueError, match="entropy_threshold"):
        CrossPseudoSupervisionLoss(entropy_threshold=1.5)
    with pytest.raises(ValueError, match="not both"):
        CrossPseudoSupervisionLoss(entropy_threshold=0.5, entropy_percentile=50)
    with pytest.raises(ValueError, match="entropy_percentile"):
        CrossPseudoSupervisionLoss(entropy_percentile=120)
    with pytest.raises(ValueError, match="filter_mode"):
        CrossPseudoSupervisionLoss(filter_mode="and")


# ---------------------------------------------------------------- KLUncertaintyLoss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_kl_uncertainty_matches_naive_value_and_gradient(temperature):
    a, b = _logits(20), _logits(21)
    got = KLUncertaintyLoss(temperature=temperature)(a, b)
    terms = _naive_kl(a, b, temperature)
    expected = sum(terms) / len(terms)
    assert_close(got, expected)
    assert_close(_grads(got, a)[0], _grads(expected, a)[0])
    assert_close(KLUncertaintyLoss(temperature, reduction="sum")(a, b), sum(terms))
    got_map = KLUncertaintyLoss(temperature, reduction="none")(a, b)
    assert got_map.shape == (2, 6, 6, 4)
    assert_close(got_map.detach(), torch.stack([t.detach() for t in terms]).reshape(2, 6, 6, 4))


def test_kl_uncertainty_identical_inputs_at_t1_is_entropy():
    a = _logits(22).detach()
    p = a.softmax(1)
    entropy = -(p * p.log()).sum(1).mean()  # D_KL = 0, weight 1, CE(p, p) = H(p)
    assert_close(KLUncertaintyLoss(temperature=1.0)(a, a.clone()), entropy)


def test_kl_uncertainty_pseudo_label_network_gets_no_gradient():
    a, b = _logits(23), _logits(24)
    KLUncertaintyLoss()(a, b).backward()
    assert b.grad is None
    assert a.grad is not None and torch.count_nonzero(a.grad) > 0


def test_kl_uncertainty_temperature_validation():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            KLUncertaintyLoss(temperature=bad)


# ---------------------------------------------------------------- SubnetConsistencyLoss


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_consistency_matches_naive_value_and_gradient(mode):
    a, b = _logits(30), _logits(31)
    got = SubnetConsistencyLoss(mode=mode)(a, b)
    total, expected, _ = _naive_consistency(a, b, mode)
    assert_close(got, expected)
    for g, e in zip(_grads(got, a, b), _grads(expected, a, b)):
        assert g is not None
        assert_close(g, e)  # both subnets are trained: gradient reaches both
    assert_close(SubnetConsistencyLoss(mode=mode, reduction="sum")(a, b), total)
    assert SubnetConsistencyLoss(mode=mode, reduction="none")(a, b).shape == (2, 6, 6, 4)


def test_consistency_mse_is_torch_mse():
    a, b = _logits(32).detach(), _logits(33).detach()
    assert_close(SubnetConsistencyLoss()(a, b), F.mse_loss(a.softmax(1), b.softmax(1)))


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_consistency_confidence_mask_matches_naive(mode):
    a, b = _logits(34), _logits(35)
    got = SubnetConsistencyLoss(mode=mode, threshold=0.6)(a, b)
    total, expected, msum = _naive_consistency(a, b, mode, threshold=0.6)
    assert 0 < msum < 288
    assert_close(got, expected)
    for g, e in zip(_grads(got, a, b), _grads(expected, a, b)):
        assert_close(g, e)
    assert_close(SubnetConsistencyLoss(mode=mode, threshold=0.6, reduction="sum")(a, b), total)


def test_consistency_constructor_validation():
    with pytest.raises(ValueError, match="mode"):
        SubnetConsistencyLoss(mode="l1")
    with pytest.raises(ValueError, match="threshold"):
        SubnetConsistencyLoss(threshold=2.0)
    with pytest.raises(ValueError, match="eps"):
        SubnetConsistencyLoss(eps=0.0)


# ---------------------------------------------------------------- PrototypeContrastiveLoss


def _features(seed: int, d: int = 3, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((shape[0], d, *shape[2:]), generator=g, dtype=torch.float64).requires_grad_(True)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("term", ["add", "subtract", "none"])
def test_prototype_matches_naive_value_and_gradient(distance, term):
    a, b = _logits(40), _logits(41)
    fa, fb = _features(42, d=3), _features(43, d=4)  # heterogeneous subnets: different embedding widths
    exp_sum, exp_mean, rel = _naive_prototype(fa, fb, a, b, 70.0, distance=distance, term=term)
    assert 0 < sum(rel.values()) < 288
    for reduction, expected in (("sum", exp_sum), ("mean", exp_mean)):
        loss = PrototypeContrastiveLoss(gamma=70.0, distance=distance, prototype_term=term, reduction=reduction)
        got = loss(fa, fb, a, b)
        assert_close(got, expected)
        for g, e in zip(_grads(got, fa, fb), _grads(expected, fa, fb)):
            assert_close(g, e)


@pytest.mark.parametrize("gamma", [30.0, 90.0])
def test_prototype_detached_prototypes_and_temperature_match_naive(gamma):
    a, b = _logits(44), _logits(45)
    fa, fb = _features(46), _features(47)
    _, expected, _ = _naive_prototype(fa, fb, a, b, gamma, detach=True, temp=0.3)
    got = PrototypeContrastiveLoss(gamma=gamma, temperature=0.3, detach_prototypes=True)(fa, fb, a, b)
    assert_close(got, expected)
    for g, e in zip(_grads(got, fa, fb), _grads(expected, fa, fb)):
        assert_close(g, e)


def test_prototype_missing_foreground_skips_its_terms():
    a, b = _logits(48), _logits(49)
    with torch.no_grad():  # class 0 wins everywhere for both nets: no foreground prototype exists
        a[:, 0] += 20.0
        b[:, 0] += 20.0
    fa, fb = _features(50), _features(51)
    exp_sum, exp_mean, _ = _naive_prototype(fa, fb, a, b, 50.0)
    assert_close(PrototypeContrastiveLoss(gamma=50.0, reduction="sum")(fa, fb, a, b), exp_sum)
    assert_close(PrototypeContrastiveLoss(gamma=50.0)(fa, fb, a, b), exp_mean)


def test_prototype_none_reduction_and_no_gradient_into_logits():
    a, b = _logits(52), _logits(53)
    fa, fb = _features(54), _features(55)
    loss_map = PrototypeContrastiveLoss(gamma=70.0, prototype_term="none", reduction="none")(fa, fb, a, b)
    assert loss_map.shape == (2, 6, 6, 4)
    exp_sum, _, rel = _naive_prototype(fa, fb, a, b, 70.0, term="none")
    assert_close(loss_map.sum(), exp_sum)
    reliable = torch.tensor([rel[v] for v in _voxels(a)]).reshape(2, 6, 6, 4)
    assert torch.count_nonzero(loss_map[reliable]) == 0
    PrototypeContrastiveLoss(gamma=70.0)(fa, fb, a, b).backward()
    assert a.grad is None and b.grad is None
    assert fa.grad is not None and fb.grad is not None


def test_prototype_feature_validation():
    a, b = _logits(56).detach(), _logits(57).detach()
    loss = PrototypeContrastiveLoss()
    with pytest.raises(ValueError, match=r"features_a .*\(2, 3, 3, 3, 2\)"):
        loss(torch.randn(2, 3, 3, 3, 2), torch.randn(2, 3, 6, 6, 4), a, b)
    with pytest.raises(ValueError, match=r"features_b .*\(1, 3, 6, 6, 4\)"):
        loss(torch.randn(2, 3, 6, 6, 4), torch.randn(1, 3, 6, 6, 4), a, b)
    with pytest.raises(ValueError, match="features_a"):
        loss(torch.ones(2, 3, 6, 6, 4, dtype=torch.long), torch.randn(2, 3, 6, 6, 4), a, b)
    for kwargs, name in (
        ({"gamma": 101}, "gamma"),
        ({"temperature": 0}, "temperature"),
        ({"distance": "l1"}, "distance"),
        ({"prototype_term": "push"}, "prototype_term"),
        ({"eps": 0}, "eps"),
    ):
        with pytest.raises(ValueError, match=name):
            PrototypeContrastiveLoss(**kwargs)


def test_prototype_weight_formula():
    assert prototype_weight(0, 6000) == pytest.approx(0.1 * math.exp(4.0))
    assert prototype_weight(6000, 6000) == pytest.approx(0.1)
    assert prototype_weight(1500, 6000) == pytest.approx(0.1 * math.exp(4.0 * 0.75**2))
    assert prototype_weight(9000, 6000) == pytest.approx(0.1)  # clamped to t_max
    assert prototype_weight(0, 6000, exponent=-4.0) == pytest.approx(0.1 * math.exp(-4.0))
    with pytest.raises(ValueError, match="max_iterations"):
        prototype_weight(0, 0)


# ---------------------------------------------------------------- shared input validation


def _call(name: str, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
    if name == "cps":
        return CrossPseudoSupervisionLoss(reduction=reduction)(x, y)
    if name == "kl":
        return KLUncertaintyLoss(reduction=reduction)(x, y)
    if name == "cr":
        return SubnetConsistencyLoss(reduction=reduction)(x, y)
    feats = torch.randn(x.shape[:1] + (3,) + x.shape[2:]) if x.ndim >= 3 else torch.randn(2, 3, 4)
    return PrototypeContrastiveLoss(reduction=reduction)(feats, feats, x, y)


ALL = ["cps", "kl", "cr", "proto"]


@pytest.mark.parametrize("name", ALL)
def test_mismatched_shapes_raise(name):
    with pytest.raises(ValueError, match=r"logits_a and logits_b .*\(2, 2, 6, 6, 4\).*\(2, 2, 6, 6, 3\)"):
        _call(name, torch.randn(2, 2, 6, 6, 4), torch.randn(2, 2, 6, 6, 3))


@pytest.mark.parametrize("name", ALL)
def test_wrong_ndim_raises(name):
    with pytest.raises(ValueError, match=r"logits_a of shape \(B, C, \*spatial\).*\(2, 2\)"):
        _call(name, torch.randn(2, 2), torch.randn(2, 2))


@pytest.mark.parametrize("name", ALL)
def test_single_channel_raises(name):
    with pytest.raises(ValueError, match=r"at least 2 channels.*\(2, 1, 6, 6, 4\)"):
        _call(name, torch.randn(2, 1, 6, 6, 4), torch.randn(2, 1, 6, 6, 4))


@pytest.mark.parametrize("name", ALL)
def test_integer_logits_raise(name):
    with pytest.raises(ValueError, match="floating-point logits_b"):
        _call(name, torch.randn(2, 2, 6, 6, 4), torch.ones(2, 2, 6, 6, 4, dtype=torch.long))


@pytest.mark.parametrize("name", ALL)
def test_bad_reduction_raises(name):
    with pytest.raises(ValueError, match="reduction"):
        _call(name, torch.randn(2, 2, 6, 6, 4), torch.randn(2, 2, 6, 6, 4), reduction="avg")


@pytest.mark.parametrize("name", ALL)
def test_reduction_modes_are_consistent(name):
    x, y = _logits(60).detach(), _logits(61).detach()
    torch.manual_seed(0)
    none = _call(name, x, y, "none")
    torch.manual_seed(0)
    total = _call(name, x, y, "sum")
    assert none.shape == (2, 6, 6, 4)
    assert total.ndim == 0 and _call(name, x, y, "mean").ndim == 0
    if name != "proto":  # the prototype map omits d(c_f, c_b)
        assert_close(none.sum(), total)
