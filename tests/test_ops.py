"""Tests of ranem.ops: substrates, Gumbel noise, Gumbel-top-k, the masking operator omega, sample_k.

Each behaviour is checked against an independent computation: scipy convolutions, closed-form
Plackett-Luce probabilities, a per-row float64 Jacobian written out here, chi-square tests.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, stats

from ranem import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- substrates

def test_zeros_substrate():
    x = torch.randn(2, 3, 5, 7)
    r = ops.zeros(x)
    assert r.shape == x.shape and r.dtype == x.dtype and not r.any()


def test_gaussian_kernel_matches_closed_form():
    k = ops.gaussian_kernel(11, 5.0, dtype=torch.float64).numpy()
    i = np.arange(11) - 5
    expected = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * 25.0))
    np.testing.assert_allclose(k, expected / expected.sum(), rtol=1e-12)


@pytest.mark.parametrize("size,sigma", [(11, 5.0), (3, 1.0)])
def test_blur_equals_direct_convolution(size, sigma):
    x = torch.randn(2, 3, 16, 13, dtype=torch.float64, generator=_gen(1))
    # Hand-built kernel and scipy's convolution with zero padding, channel by channel.
    i = np.arange(size) - size // 2
    kernel = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    expected = np.stack([
        np.stack([ndimage.convolve(x[b, c].numpy(), kernel, mode="constant", cval=0.0) for c in range(3)])
        for b in range(2)
    ])
    got = ops.blur(x, kernel_size=size, sigma=sigma)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_noise_matches_per_image_per_channel_statistics():
    g = _gen(2)
    means = torch.tensor([[-1.0, 0.0, 2.0], [3.0, -2.0, 0.5]]).view(2, 3, 1, 1)
    stds = torch.tensor([[0.5, 1.0, 2.0], [0.1, 3.0, 1.5]]).view(2, 3, 1, 1)
    x = torch.randn(2, 3, 96, 96, generator=g) * stds + means
    r = ops.noise(x, generator=g)
    assert r.shape == x.shape and r.dtype == x.dtype
    # Sample mean within 4 standard errors of the image's channel mean, std within 3%.
    se = x.std(dim=(2, 3)) / 96
    assert ((r.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs() < 4 * se).all()
    torch.testing.assert_close(r.std(dim=(2, 3)) / x.std(dim=(2, 3)), torch.ones(2, 3), atol=0.03, rtol=0)
    # Independent per pixel: standardised noise is uncorrelated with the standardised image.
    def z(t):
        return ((t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)).flatten().numpy()
    assert abs(np.corrcoef(z(r), z(x))[0, 1]) < 0.02


def test_noise_is_reproducible_with_a_generator():
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(ops.noise(x, _gen(5)), ops.noise(x, _gen(5)))
    assert not torch.equal(ops.noise(x, _gen(5)), ops.noise(x, _gen(6)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(ops.SUBSTRATES))
def test_substrates_keep_shape_dtype_device(name, device):
    x = torch.randn(3, 2, 9, 11, device=device)
    r = ops.get_substrate(name)(x)
    assert r.shape == x.shape and r.dtype == x.dtype and r.device == x.device


def test_substrate_bad_input():
    for bad in (torch.randn(3, 8, 8), torch.zeros(1, 3, 4, 4, dtype=torch.long)):
        for f in ops.SUBSTRATES.values():
            with pytest.raises(ValueError, match="x must"):
                f(bad)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.blur(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="substrate must be"):
        ops.get_substrate("gray")
    assert ops.get_substrate(ops.blur) is ops.blur and ops.get_substrate("noise") is ops.noise


# ----------------------------------------------------------------------------- Gumbel noise

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gumbel_finite_in_every_dtype(dtype):
    g = ops.gumbel((1000, 100), generator=_gen(0), dtype=dtype)
    assert g.dtype == dtype and g.shape == (1000, 100)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gumbel_finite_at_the_extremes_of_u(monkeypatch, dtype):
    # Force the uniform draw to its worst cases, exactly 0 and exactly 1.
    real_rand = torch.rand

    def extreme_rand(shape, **kw):
        u = real_rand(shape, **kw)
        u.view(-1)[0::2] = 0.0
        u.view(-1)[1::2] = 1.0
        return u

    monkeypatch.setattr(torch, "rand", extreme_rand)
    g = ops.gumbel((64,), dtype=dtype)
    assert torch.isfinite(g).all()
    assert g.float().min() < -4 and g.float().max() > 15


def test_gumbel_distribution_kolmogorov_smirnov():
    g = ops.gumbel((200_000,), generator=_gen(3), dtype=torch.float64).numpy()
    assert stats.kstest(g, stats.gumbel_r.cdf).pvalue > 1e-3


def test_gumbel_like_tensor_and_reproducible():
    like = torch.zeros(4, 5, dtype=torch.float64)
    g = ops.gumbel(like, generator=_gen(1))
    assert g.shape == like.shape and g.dtype == torch.float64 and g.device == like.device
    torch.testing.assert_close(g, ops.gumbel(like, generator=_gen(1)))
    assert ops.gumbel(7).shape == (7,)
    with pytest.raises(TypeError, match="shape_or_like"):
        ops.gumbel("abc")
    with pytest.raises(ValueError, match="dtype"):
        ops.gumbel((2,), dtype=torch.int64)


# ----------------------------------------------------------------------------- Gumbel-top-k

def _plackett_luce(p, ordered):
    """Probability of drawing the ordered tuple without replacement from p."""
    prob, left = 1.0, 1.0
    for i in ordered:
        prob *= p[i] / left
        left -= p[i]
    return prob


@pytest.mark.parametrize("k", [1, 2, 4])
def test_gumbel_topk_matches_plackett_luce(k):
    d, n = 4, 100_000
    logits = torch.tensor([1.5, 0.2, -0.7, 0.9], dtype=torch.float64)
    p = torch.softmax(logits, 0).numpy()
    idx = ops.gumbel_topk(logits.expand(n, d), k, generator=_gen(11)).numpy()
    outcomes = list(itertools.permutations(range(d), k))
    code = {o: j for j, o in enumerate(outcomes)}
    observed = np.bincount([code[tuple(r)] for r in idx], minlength=len(outcomes))
    expected = np.array([_plackett_luce(p, o) for o in outcomes]) * n
    assert math.isclose(expected.sum(), n)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_gumbel_topk_shape_distinct_and_extreme_logits():
    logits = torch.zeros(3, 5, 10)
    idx = ops.gumbel_topk(logits, 4, generator=_gen(0))
    assert idx.shape == (3, 5, 4) and idx.dtype == torch.long
    assert all(len(set(r.tolist())) == 4 for r in idx.view(-1, 4))
    big = torch.full((2, 6), -1e4)
    big[:, [1, 4]] = 1e4
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        got = ops.gumbel_topk(big.to(dtype), 2, generator=_gen(1))
        assert sorted(got[0].tolist()) == [1, 4] and sorted(got[1].tolist()) == [1, 4]


def test_gumbel_topk_bad_input():
    with pytest.raises(ValueError, match="k must be in"):
        ops.gumbel_topk(torch.zeros(5), 0)
    with pytest.raises(ValueError, match="k must be in"):
        ops.gumbel_topk(torch.zeros(5), 6)
    with pytest.raises(ValueError, match="k must be an integer"):
        ops.gumbel_topk(torch.zeros(5), 2.0)
    with pytest.raises(ValueError, match="finite"):
        ops.gumbel_topk(torch.tensor([0.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="logits"):
        ops.gumbel_topk(torch.arange(5), 1)


# ----------------------------------------------------------------------------- omega

def _images(b=3, h=4, w=5, seed=0, dtype=torch.float32):
    g = _gen(seed)
    return torch.randn(b, 3, h, w, generator=g, dtype=dtype), torch.randn(b, h, w, generator=g, dtype=dtype)


def _assert_exact_k(mask, k):
    flat = mask.detach().reshape(mask.shape[0], -1)
    assert set(flat.unique().tolist()) <= {0.0, 1.0}
    assert flat.sum(1).long().tolist() == list(k)


@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("k", [1, 7, 20])
def test_omega_exact_k_scalar(k, noise):
    x, s = _images()
    x_m, m = ops.omega(x, s, k, "zeros", generator=_gen(1), noise=noise)
    assert m.shape == s.shape and x_m.shape == x.shape
    _assert_exact_k(m, [k] * 3)


def test_omega_exact_k_per_row_and_ties():
    x, _ = _images(b=4)
    for scores in (torch.randn(4, 4, 5), torch.zeros(4, 4, 5), torch.ones(4, 20)):
        k = torch.tensor([1, 20, 3, 11])
        _, m = ops.omega(x, scores, k, "blur", generator=_gen(2))
        _assert_exact_k(m, k.tolist())
        _, m = ops.omega(x, scores, k, "blur", noise=False)
        _assert_exact_k(m, k.tolist())


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), data=st.data())
def test_omega_exact_k_property(b, h, w, data):
    d = h * w
    k = data.draw(st.lists(st.integers(1, d), min_size=b, max_size=b))
    x = torch.randn(b, 2, h, w)
    s = torch.randn(b, h, w) * data.draw(st.sampled_from([0.0, 1.0, 1e4]))
    _, m = ops.omega(x, s, torch.tensor(k), "blur", generator=_gen(0))
    _assert_exact_k(m, k)


@pytest.mark.parametrize("ties", [False, True])
def test_partial_selection_matches_a_full_sort(ties):
    # The noisy path selects with one topk of min(k, d - k + 1) columns instead of sorting.
    g = _gen(8)
    d = 50
    values = torch.randint(0, 4, (40, d), generator=g).float() if ties else torch.randn(40, d, generator=g)
    k = torch.randint(1, d + 1, (40,), generator=g)
    k[:4] = torch.tensor([1, d, d // 2, d // 2 + 1])
    keep, at = ops._top_k_positions(values, k, stable=False)
    assert keep.sum(1).tolist() == k.tolist()
    kth = values.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    assert torch.equal(values.gather(1, at), kth)   # the threshold is the k-th largest value
    assert keep.gather(1, at).all()                 # and its pixel is kept
    # Every kept value is >= every dropped value.
    low_kept = torch.where(keep, values, torch.inf).amin(1)
    high_dropped = torch.where(keep, -torch.inf, values).amax(1)
    assert (low_kept >= high_dropped).all()
    if not ties:
        sorted_keep, sorted_at = ops._top_k_positions(values, k, stable=True)
        assert torch.equal(keep, sorted_keep) and torch.equal(at, sorted_at)


def test_omega_deterministic_is_top_k_and_composes_exactly():
    x, s = _images(b=2, h=6, w=6)
    r = torch.randn_like(x)
    x_m, m = ops.omega(x, s.reshape(2, 36), 10, r, noise=False)
    top = s.reshape(2, -1).topk(10, dim=1).indices
    expected = torch.zeros(2, 36).scatter(1, top, 1.0).view(2, 6, 6)
    assert torch.equal(m, expected)
    keep = m.bool().unsqueeze(1).expand_as(x)
    assert torch.equal(x_m[keep], x[keep]) and torch.equal(x_m[~keep], r[~keep])


def test_omega_noise_samples_plackett_luce_first_pixel():
    # With k = 1 the kept pixel is the first draw of Plackett-Luce: softmax(scores).
    n = 20_000
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    x = torch.zeros(n, 1, 2, 2)
    _, m = ops.omega(x, logits.view(1, 2, 2).expand(n, 2, 2), 1, "zeros", generator=_gen(4))
    observed = m.reshape(n, 4).sum(0).numpy()
    expected = torch.softmax(logits, 0).numpy() * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_omega_substrates_by_name_callable_and_tensor():
    x, s = _images()
    _, m = ops.omega(x, s, 5, "zeros", noise=False)
    for sub in ("blur", ops.blur, ops.blur(x)):
        x_m, _ = ops.omega(x, s, 5, sub, noise=False)
        torch.testing.assert_close(x_m, x * m.unsqueeze(1) + ops.blur(x) * (1 - m.unsqueeze(1)))


def test_omega_is_reproducible_with_a_generator():
    x, s = _images()
    a = ops.omega(x, s, 6, "noise", generator=_gen(9))
    b = ops.omega(x, s, 6, "noise", generator=_gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _reference_gradient(a, g, k, weights):
    """d/da of sum_i w_i M_i for M_i = sigmoid(s_i - s_(k)) with s = a - lse(a) + g, in float64.

    Written per row with an explicit Jacobian: ds_i/da_j = delta_ij - softmax(a)_j, and the
    threshold s_(k) is the k-th largest s (a function of a, as in Algorithm 1)."""
    out = np.zeros_like(a)
    for row in range(a.shape[0]):
        ar, gr, w = a[row], g[row], weights[row]
        p = np.exp(ar - ar.max()) / np.exp(ar - ar.max()).sum()
        s = ar - (ar.max() + np.log(np.exp(ar - ar.max()).sum())) + gr
        t = np.argsort(-s, kind="stable")[k[row] - 1]
        ds = np.eye(len(ar)) - p[None, :]  # ds_i / da_j
        z = s - s[t]
        sig = 1 / (1 + np.exp(-z))
        dz = ds - ds[t][None, :]
        out[row] = (w * sig * (1 - sig)) @ dz
    return out


@pytest.mark.parametrize("per_row", [False, True])
def test_omega_gradient_matches_independent_computation(per_row):
    b, h, w = 3, 3, 4
    a = torch.randn(b, h, w, dtype=torch.float64, generator=_gen(5)) * 2
    a.requires_grad_(True)
    k = torch.tensor([1, 6, 12]) if per_row else 5
    x = torch.randn(b, 2, h, w, dtype=torch.float64, generator=_gen(6))
    r = torch.randn_like(x)
    x_m, m = ops.omega(x, a, k, r, generator=_gen(7))
    up = torch.randn_like(x)
    (x_m * up).sum().backward()
    # Same noise as omega drew (the generator is used only for the Gumbel draw with a tensor R).
    g = ops.gumbel((b, h * w), generator=_gen(7), dtype=torch.float64).numpy()
    weights = ((x - r) * up).sum(1).reshape(b, -1).numpy()  # dL/dM, from x*M + R*(1-M)
    ks = k.tolist() if per_row else [k] * b
    expected = _reference_gradient(a.detach().reshape(b, -1).numpy(), g, ks, weights)
    np.testing.assert_allclose(a.grad.reshape(b, -1).numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_omega_finite_in_low_precision_and_extreme_scores(dtype, scale):
    x = torch.randn(2, 3, 8, 8).to(dtype)
    s = (torch.randn(2, 8, 8) * scale).to(dtype).requires_grad_(True)
    x_m, m = ops.omega(x, s, torch.tensor([1, 64]), "blur", generator=_gen(0))
    assert x_m.dtype == dtype and m.dtype == dtype
    _assert_exact_k(m.float(), [1, 64])
    x_m.float().sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(x_m).all()


def test_omega_gradient_nonzero_and_rows_sum_to_zero():
    x, s = _images(b=4, h=8, w=8)
    s.requires_grad_(True)
    x_m, _ = ops.omega(x, s, torch.tensor([3, 10, 32, 60]), "blur", generator=_gen(1))
    x_m.square().sum().backward()
    assert (s.grad.abs().sum(dim=(1, 2)) > 0).all()
    torch.testing.assert_close(s.grad.sum(dim=(1, 2)), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_omega_on_cuda_matches_cpu():
    x, s = _images(b=2, h=8, w=8)
    k = torch.tensor([5, 40])
    cpu = ops.omega(x, s, k, "blur", generator=_gen(3))
    gpu = ops.omega(x.cuda(), s.cuda(), k.cuda(), "blur", generator=_gen(3))
    assert gpu[1].device.type == "cuda"
    assert torch.equal(cpu[1], gpu[1].cpu())
    torch.testing.assert_close(cpu[0], gpu[0].cpu())


def test_omega_bad_input():
    x, s = _images(b=2, h=4, w=4)
    cases = [
        (dict(k=0), "k must be in"),
        (dict(k=17), "k must be in"),
        (dict(k=2.5), "k must be an integer"),
        (dict(k=True), "k must be an integer"),
        (dict(k=torch.tensor([1.0, 2.0])), "k must hold integers"),
        (dict(k=torch.tensor([1, 2, 3])), r"k must be an int or a \(2,\) tensor"),
        (dict(k=torch.tensor([0, 3])), "every k must be in"),
        (dict(k=torch.tensor([3, 17])), "every k must be in"),
        (dict(scores=torch.randn(2, 4, 5)), "scores must have shape"),
        (dict(scores=torch.randn(3, 16)), "scores must have shape"),
        (dict(scores=torch.full((2, 4, 4), float("nan"))), "finite"),
        (dict(scores=torch.full((2, 4, 4), float("inf"))), "finite"),
        (dict(scores=torch.ones(2, 4, 4, dtype=torch.long)), "floating-point"),
        (dict(x=torch.randn(3, 4, 4)), r"x must be a batch"),
        (dict(substrate=torch.zeros(2, 3, 4, 5)), "substrate tensor must be shaped like x"),
        (dict(substrate="grey"), "substrate must be"),
    ]
    for change, message in cases:
        args = dict(x=x, scores=s, k=3, substrate="zeros") | change
        with pytest.raises(ValueError, match=message):
            ops.omega(**args)
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        ops.omega(x, s.numpy(), 3, "zeros")


# ----------------------------------------------------------------------------- sample_k

@pytest.mark.parametrize("d", [4096, 4098])
def test_sample_k_stratified_one_per_bin(d):
    samples = 6
    k = ops.sample_k(d, samples, generator=_gen(0), batch=500)
    assert k.shape == (500, 6) and k.dtype == torch.long
    assert k.min() >= 1 and k.max() <= d
    # Bin i covers the positions [i d / S, (i + 1) d / S) of k - 1 (real-valued edges).
    i = torch.arange(samples)
    assert ((k - 1) >= torch.floor(i * d / samples)).all() and ((k - 1) < torch.ceil((i + 1) * d / samples)).all()
    if d % samples == 0:  # integer edges: every k falls in its own bin
        assert torch.equal(((k - 1) * samples) // d, i.expand(500, samples))
    assert not torch.equal(k[0], k[1])  # rows are independent


def test_sample_k_uniform_within_bins_and_over_range():
    d, n = 12, 60_000
    strat = ops.sample_k(d, 3, generator=_gen(1), batch=n // 3).flatten().numpy()
    unif = ops.sample_k(d, 3, stratified=False, generator=_gen(2), batch=n // 3).flatten().numpy()
    for draws in (strat, unif):
        counts = np.bincount(draws, minlength=d + 1)[1:]
        assert counts.sum() == n
        assert stats.chisquare(counts).pvalue > 1e-3


def test_sample_k_edges_reproducible_and_bad_input():
    assert ops.sample_k(1, 4).tolist() == [1, 1, 1, 1]
    assert ops.sample_k(5, 5, generator=_gen(0)).tolist() == [1, 2, 3, 4, 5]
    torch.testing.assert_close(ops.sample_k(100, 4, generator=_gen(3)), ops.sample_k(100, 4, generator=_gen(3)))
    assert ops.sample_k(100, 4).shape == (4,)
    for bad in (dict(d=0), dict(d=2.5), dict(samples=0), dict(batch=0), dict(batch=1.5)):
        args = dict(d=10, samples=3) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            ops.sample_k(**args)


# ----------------------------------------------------------------------------- L2X relaxation

def test_gumbel_softmax_k_is_a_soft_subset():
    logits = torch.randn(2, 50)
    soft = ops.gumbel_softmax_k(logits, 5, tau=0.1, generator=_gen(0))
    assert soft.shape == (2, 50)
    assert (soft >= 0).all() and (soft <= 1).all()
    # Element-wise max of 5 near-one-hot vectors: total mass between 1 and 5.
    assert ((soft.sum(1) > 0.99) & (soft.sum(1) < 5.01)).all()
    # k = 1 is a single Gumbel-softmax sample.
    one = ops.gumbel_softmax_k(logits, 1, tau=0.1, generator=_gen(0))
    torch.testing.assert_close(one.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="tau"):
        ops.gumbel_softmax_k(logits, 2, tau=0)
