"""Insertion/deletion curves, AUC, faithfulness and the Monte-Carlo AUC against independent computations."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ranem import metrics
from ranem.metrics import (auc, deletion_curve, faithfulness, insertion_curve, masked_images, mc_auc,
                           mc_estimate, pixel_counts, sample_points)


def tiny_cnn(classes=5, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, classes))
    for p in net.parameters():  # larger weights: scores that move along the curve
        p.data.mul_(3)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def gaussian_blur_reference(img):
    """11x11 Gaussian, sigma 5, zero padding, per channel: written out with explicit sums."""
    offs = np.arange(-5, 6)
    g = np.exp(-offs**2 / 50.0)
    k = np.outer(g, g) / np.outer(g, g).sum()
    c, h, w = img.shape
    padded = np.zeros((c, h + 10, w + 10))
    padded[:, 5:5 + h, 5:5 + w] = img
    out = np.zeros_like(img, dtype=np.float64)
    for dy in range(11):
        for dx in range(11):
            out += k[dy, dx] * padded[:, dy:dy + h, dx:dx + w]
    return torch.tensor(out, dtype=torch.float32)


def reference_curve(model, x, attribution, kind, counts, target=None):
    """One forward per point per image; ranking by Python's sort on (-value, pixel index)."""
    b, c, h, w = x.shape
    rows = []
    for i in range(b):
        img = x[i]
        with torch.no_grad():
            probs = model(img[None]).softmax(1)[0]
        cls = int(probs.argmax()) if target is None else int(target[i])
        values = attribution[i].flatten().tolist()
        order = sorted(range(h * w), key=lambda p: (-values[p], p))
        sub = gaussian_blur_reference(img.double().numpy()) if kind == "insertion" else torch.zeros_like(img)
        row = []
        for k in counts:
            chosen = torch.zeros(h * w, dtype=torch.bool)
            chosen[order[:k]] = True
            chosen = chosen.view(1, h, w)
            masked = torch.where(chosen, img, sub) if kind == "insertion" else torch.where(chosen, sub, img)
            with torch.no_grad():
                row.append(float(model(masked[None]).softmax(1)[0, cls]))
        rows.append(row)
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 9, 7, generator=g)
    # Rounded values: many ties, which the stable sort must break by pixel index.
    attribution = (torch.randn(3, 9, 7, generator=g) * 2).round()
    return x, attribution


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kwargs, counts", [
    ({}, [min(i * 7, 63) for i in range(10)]),                     # default: W pixels per step
    ({"pixels_per_step": 10}, [min(i * 10, 63) for i in range(8)]),  # last step partial
    ({"steps": 4}, [0, 15, 31, 47, 63]),                            # evenly spread, floor(i*d/steps)
])
def test_curves_match_reference_loop(model, batch, kwargs, counts):
    x, a = batch
    ref_ins = reference_curve(model, x, a, "insertion", counts)
    ref_del = reference_curve(model, x, a, "deletion", counts)
    for batch_size in (7, 256):  # chunks that split an image's steps and cross images; one chunk for all
        ins = insertion_curve(model, x, a, batch_size=batch_size, **kwargs)
        dele = deletion_curve(model, x, a, batch_size=batch_size, **kwargs)
        torch.testing.assert_close(ins, ref_ins, atol=1e-5, rtol=0)
        torch.testing.assert_close(dele, ref_del, atol=1e-5, rtol=0)


def test_target_and_faithfulness_match_reference(model, batch):
    x, a = batch
    target = torch.tensor([4, 0, 2])
    counts = [min(i * 7, 63) for i in range(10)]
    faith, ins, dele = faithfulness(model, x, a, target=target, batch_size=8, return_curves=True)
    ref_ins = reference_curve(model, x, a, "insertion", counts, target)
    ref_del = reference_curve(model, x, a, "deletion", counts, target)
    torch.testing.assert_close(ins, ref_ins, atol=1e-5, rtol=0)
    torch.testing.assert_close(dele, ref_del, atol=1e-5, rtol=0)
    expected = [np.trapezoid(ref_ins[i], dx=1 / 9) - np.trapezoid(ref_del[i], dx=1 / 9) for i in range(3)]
    torch.testing.assert_close(faith, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics.faithfulness(model, x, a, target=target), faith)


def test_curve_endpoints_and_substrates(model, batch):
    x, a = batch
    probs = model(x).softmax(1).detach()
    top = probs.max(1).values
    ins = insertion_curve(model, x, a, substrate="zeros")
    dele = deletion_curve(model, x, a)
    torch.testing.assert_close(ins[:, -1], top, atol=1e-6, rtol=0)
    torch.testing.assert_close(dele[:, 0], top, atol=1e-6, rtol=0)
    # Insertion from zeros starts where deletion to zeros ends: the all-zero image.
    torch.testing.assert_close(ins[:, 0], dele[:, -1], atol=1e-6, rtol=0)
    # A callable substrate is used as given.
    const = insertion_curve(model, x, a, substrate=lambda t, generator=None: torch.full_like(t, 0.5))
    torch.testing.assert_close(const[:, 0], model(torch.full_like(x, 0.5)).softmax(1).detach().gather(
        1, probs.argmax(1, keepdim=True))[:, 0], atol=1e-6, rtol=0)


def test_masked_images_are_what_the_curve_scores(model, batch):
    x, a = batch
    counts = pixel_counts(63, pixels_per_step=7)
    cls = model(x).argmax(1)
    for kind, curve in (("insertion", insertion_curve(model, x, a)), ("deletion", deletion_curve(model, x, a))):
        for i in (0, 3, 9):
            imgs = masked_images(x, a, int(counts[i]), kind=kind)
            scores = model(imgs).softmax(1).detach().gather(1, cls[:, None])[:, 0]
            torch.testing.assert_close(scores, curve[:, i], atol=1e-5, rtol=0)
    kept = masked_images(x, a, torch.tensor([0, 5, 63]), substrate="zeros")
    assert [(kept[i].abs().sum(0) > 0).sum().item() <= k for i, k in enumerate([0, 5, 63])] == [True] * 3


def test_all_channels_of_a_pixel_move_together(model):
    x = torch.randn(1, 3, 4, 4) + 5  # no zero values
    a = torch.arange(16.0).view(1, 4, 4)
    img = masked_images(x, a, 5, kind="deletion", substrate="zeros")
    zero = img == 0
    assert torch.equal(zero.all(1), zero.any(1)) and zero.all(1).sum() == 5
    assert zero[0, 0].flatten()[-5:].all()  # the 5 highest attributions are the last 5 pixels


# ----------------------------------------------------------------------------- AUC
def test_auc_of_known_curves():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(auc(t), torch.tensor(0.5))
    torch.testing.assert_close(auc(torch.full((2, 5), 0.3)), torch.full((2,), 0.3))
    torch.testing.assert_close(auc(t**2), torch.tensor(np.trapezoid(t.numpy()**2, t.numpy())))
    assert auc(np.array([0.0, 1.0])) == pytest.approx(0.5)
    assert isinstance(auc(np.array([0.0, 1.0, 0.0])), np.ndarray)
    torch.testing.assert_close(auc(t, rule="right"), t[1:].mean())
    # The two rules differ by (c_d - c_0) / (2 d).
    c = torch.rand(4, 17)
    torch.testing.assert_close(auc(c, "right") - auc(c), (c[:, -1] - c[:, 0]) / 32)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(2, 6), w=st.integers(2, 6), steps=st.integers(1, 12))
def test_auc_of_probability_curves_lies_in_unit_interval(seed, h, w, steps):
    g = torch.Generator().manual_seed(seed)
    x, a = torch.randn(2, 3, h, w, generator=g), torch.randn(2, h, w, generator=g)
    net = tiny_cnn(seed=seed % 7)
    faith, ins, dele = faithfulness(net, x, a, steps=steps, return_curves=True)
    assert ins.shape == dele.shape == (2, steps + 1)
    for curve in (ins, dele):
        assert ((auc(curve) >= 0) & (auc(curve) <= 1)).all()
    assert ((faith >= -1) & (faith <= 1)).all()


# ----------------------------------------------------------------------------- additive model
def additive_model(weights):
    """Logits (0, <w, x>): the class-1 probability is a monotone function of a sum over pixels."""
    d = weights.numel()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 2, bias=False))
    net[1].weight.data = torch.stack([torch.zeros(d), weights.flatten()])
    return net.eval()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_perfect_ranking_on_additive_model_attains_the_maximum(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 2, 3
    weights = torch.randn(1, h, w, generator=g)
    x = torch.randn(1, 1, h, w, generator=g)
    net = additive_model(weights)
    gain = (weights * x[0])  # what keeping each pixel adds to the logit (zeros substrate)
    perms = torch.tensor(list(itertools.permutations(range(h * w))), dtype=torch.float32)
    all_rankings = -perms.view(-1, h, w)  # every ranking of the 6 pixels: pixel p at position perms[r, p]
    xs = x.expand(len(perms), -1, -1, -1)
    kw = dict(pixels_per_step=1, substrate="zeros", target=1, batch_size=4096)
    ins_all = insertion_curve(net, xs, all_rankings, **kw)
    ins_best = insertion_curve(net, x, gain, **kw)
    assert auc(ins_best).item() >= auc(ins_all).max().item() - 1e-6
    # Nested optimal subsets: the perfect ranking is optimal at every size, point by point.
    assert (ins_best[0] >= ins_all.max(0).values - 1e-6).all()
    del_all = deletion_curve(net, xs, all_rankings, pixels_per_step=1, target=1, batch_size=4096)
    del_best = deletion_curve(net, x, gain, pixels_per_step=1, target=1)
    assert auc(del_best).item() <= auc(del_all).min().item() + 1e-6


# ----------------------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("scheme", ["uniform", "stratified"])
def test_mc_with_all_points_equals_exact_auc(model, batch, scheme):
    x, a = batch
    ins = insertion_curve(model, x, a, pixels_per_step=5)
    d = ins.shape[1] - 1
    torch.testing.assert_close(mc_estimate(ins, d, scheme=scheme), auc(ins, rule="right"))
    full = mc_auc(model, x, a, n=d, pixels_per_step=5, scheme=scheme)
    torch.testing.assert_close(full, auc(ins, rule="right"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scheme", ["uniform", "stratified"])
@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_mc_auc_evaluates_the_points_mc_estimate_draws(model, batch, scheme, kind):
    x, a = batch
    curve = (insertion_curve if kind == "insertion" else deletion_curve)(model, x, a)
    est = mc_auc(model, x, a, n=4, kind=kind, scheme=scheme, generator=torch.Generator().manual_seed(3))
    ref = mc_estimate(curve, 4, scheme=scheme, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(est, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", ["uniform", "stratified"])
def test_mc_estimate_is_unbiased(scheme):
    g = torch.Generator().manual_seed(0)
    curve = torch.rand(2, 24, generator=g).cumsum(1) / 24  # d = 23: bins of unequal size for n = 5
    est = mc_estimate(curve, 5, scheme=scheme, generator=g, repeats=20_000)
    se = est.std(0) / math.sqrt(20_000)
    assert ((est.mean(0) - auc(curve, rule="right")).abs() < 5 * se + 1e-7).all()


def test_sample_points_schemes():
    g = torch.Generator().manual_seed(0)
    idx, w = sample_points(10, 4, batch=500, generator=g)
    assert idx.min() >= 1 and idx.max() <= 10
    assert all(len(set(row)) == 4 for row in idx.tolist())  # without replacement
    torch.testing.assert_close(w, torch.full((500, 4), 0.25))
    idx, w = sample_points(10, 4, batch=500, scheme="stratified", generator=g)
    lo, hi = torch.tensor([1, 3, 6, 8]), torch.tensor([2, 5, 7, 10])  # bins from floor(j * 10 / 4)
    assert ((idx >= lo) & (idx <= hi)).all()
    torch.testing.assert_close(w[0], torch.tensor([0.2, 0.3, 0.2, 0.3]))
    # Stratified sampling has the smaller variance on a smooth curve.
    curve = torch.linspace(0, 1, 101)[None] ** 2
    var_u = mc_estimate(curve, 6, "uniform", g, repeats=4000).var()
    var_s = mc_estimate(curve, 6, "stratified", g, repeats=4000).var()
    assert var_s < var_u / 5


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(model, batch):
    x, a = batch
    with pytest.raises(ValueError, match="attribution must have shape"):
        insertion_curve(model, x, a[:, :-1])
    with pytest.raises(ValueError, match="attribution must have shape"):
        deletion_curve(model, x, a[:2])
    for bad in (float("nan"), float("inf")):
        a_bad = a.clone()
        a_bad[0, 0, 0] = bad
        with pytest.raises(ValueError, match="attribution must be finite"):
            insertion_curve(model, x, a_bad)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            deletion_curve(model, x, a, steps=steps)
    with pytest.raises(ValueError, match="disagree"):
        insertion_curve(model, x, a, steps=3, pixels_per_step=7)
    with pytest.raises(ValueError, match="4-D float"):
        insertion_curve(model, x[0], a)
    with pytest.raises(ValueError, match="4-D float"):
        insertion_curve(model, x.long(), a)
    with pytest.raises(TypeError, match="attribution"):
        insertion_curve(model, x, a.numpy())
    with pytest.raises(ValueError, match=r"model must return logits of shape \(batch, classes\)"):
        insertion_curve(lambda t: model(t)[:, :, None], x, a)
    with pytest.raises(ValueError, match=r"model must return logits"):
        deletion_curve(lambda t: model(t)[:1], x, a)
    with pytest.raises(ValueError, match="target"):
        insertion_curve(model, x, a, target=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must lie"):
        insertion_curve(model, x, a, target=99)
    with pytest.raises(ValueError, match="substrate"):
        insertion_curve(model, x, a, substrate="gray")
    with pytest.raises(ValueError, match="batch_size"):
        insertion_curve(model, x, a, batch_size=0)
    with pytest.raises(ValueError, match="at least 2 points"):
        auc(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="rule"):
        auc(torch.rand(3), rule="simpson")
    with pytest.raises(ValueError, match="n must be at most"):
        mc_auc(model, x, a, n=100)
    with pytest.raises(ValueError, match="scheme"):
        mc_estimate(torch.rand(2, 5), 2, scheme="sobol")
    with pytest.raises(ValueError, match="kind"):
        mc_auc(model, x, a, n=2, kind="both")


def test_runs_without_building_a_graph(batch):
    x, a = batch
    xg = x.clone().requires_grad_(True)
    curve = insertion_curve(tiny_cnn(), xg, a.clone().requires_grad_(True))
    assert not curve.requires_grad and xg.grad is None
    from ranem.metrics import curves
    assert all(getattr(metrics, name) is getattr(curves, name) for name in curves.__all__)
