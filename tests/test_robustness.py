"""Average Sensitivity, MPRT and Spearman against scipy and slow reference loops."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ranem.baselines import saliency
from ranem.metrics import avg_sensitivity, mprt, normalise_maps, randomised_copy, rank_average, spearman

torch.set_num_threads(1)


def small_cnn(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


@pytest.fixture(scope="module")
def model():
    return small_cnn()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ Spearman
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 10_000), st.integers(2, 6))
def test_spearman_equals_scipy_with_ties(n, b, seed, levels):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, levels, size=(b, n)).astype(np.float32)  # few levels: many ties
    c = rng.normal(size=(b, n)).astype(np.float32)
    got = spearman(torch.from_numpy(a), torch.from_numpy(c)).numpy()
    for i in range(b):
        if np.all(a[i] == a[i, 0]):
            assert np.isnan(got[i])  # scipy: undefined for a constant row
        else:
            assert got[i] == pytest.approx(scipy.stats.spearmanr(a[i], c[i]).statistic, abs=1e-5)


def test_rank_average_equals_scipy_rankdata():
    v = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0]])
    np.testing.assert_allclose(rank_average(v)[0].numpy(), scipy.stats.rankdata(v[0].numpy()))


def test_spearman_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.full((1, 4), float("nan")), torch.zeros(1, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        spearman([1, 2], torch.zeros(2))


# ------------------------------------------------------------------ Average Sensitivity
def test_avg_sensitivity_equals_a_slow_reference(model, images):
    samples, radius, seed = 4, 0.2, 7
    got = avg_sensitivity(saliency, model, images, samples=samples, radius=radius, seed=seed)
    u = (torch.rand((samples,) + tuple(images.shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1) * radius
    expected = torch.zeros(images.shape[0])
    for i in range(images.shape[0]):
        label = model(images[i:i + 1]).argmax(1)
        base = saliency(model, images[i:i + 1], label).flatten()
        base = (base - base.min()) / (base.max() - base.min())
        for s in range(samples):
            noisy = images[i:i + 1] + u[s, i]
            e = saliency(model, noisy, model(noisy).argmax(1)).flatten()  # label re-predicted
            e = (e - e.min()) / (e.max() - e.min())
            expected[i] += (base - e).norm() / base.norm() / samples
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_avg_sensitivity_is_zero_for_a_constant_explainer(model, images):
    def constant(m, x, target=None):
        return torch.ones(x.shape[0], *x.shape[-2:])

    assert torch.equal(avg_sensitivity(constant, model, images, samples=3), torch.zeros(3))
    # An explainer that does not depend on its input at all is also perfectly robust.
    def fixed(m, x, target=None):
        return torch.arange(100.0).view(1, 10, 10).expand(x.shape[0], 10, 10)

    assert torch.equal(avg_sensitivity(fixed, model, images, samples=3), torch.zeros(3))


def test_avg_sensitivity_grows_with_the_noise(model, images):
    small = avg_sensitivity(saliency, model, images, samples=3, radius=0.01).mean()
    large = avg_sensitivity(saliency, model, images, samples=3, radius=1.0).mean()
    assert 0 < small < large


def test_avg_sensitivity_bad_inputs(model, images):
    with pytest.raises(ValueError, match="radius"):
        avg_sensitivity(saliency, model, images, radius=-1)
    with pytest.raises(ValueError, match="samples"):
        avg_sensitivity(saliency, model, images, samples=0)
    with pytest.raises(ValueError, match="normalise"):
        avg_sensitivity(saliency, model, images, normalise="zscore")
    with pytest.raises(TypeError, match="explainer"):
        avg_sensitivity("saliency", model, images)


def test_normalise_maps():
    maps = torch.tensor([[[1.0, 3.0], [2.0, -1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    torch.testing.assert_close(normalise_maps(maps, "minmax")[0], torch.tensor([0.5, 1.0, 0.75, 0.0]))
    assert torch.equal(normalise_maps(maps, "minmax")[1], torch.zeros(4))
    torch.testing.assert_close(normalise_maps(maps, "max")[0], torch.tensor([1 / 3, 1.0, 2 / 3, -1 / 3]))


# ------------------------------------------------------------------ MPRT
def test_mprt_is_one_for_an_explainer_that_ignores_the_model(model, images):
    def edges(m, x, target=None):
        return x.diff(dim=-1, prepend=x[..., :1]).abs().sum(1)

    torch.testing.assert_close(mprt(edges, model, images), torch.ones(3))


def test_mprt_saliency_on_a_randomised_network_is_low(images):
    model = small_cnn(seed=3)
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    corr = mprt(saliency, model, x)
    assert corr.shape == (6,)
    assert float(corr.mean()) < 0.5


def test_mprt_per_layer_cascade_ends_at_the_fully_randomised_model(model, images):
    last, names, per_layer = mprt(saliency, model, images, per_layer=True, seed=2)
    assert names == ["6", "2", "0"]  # top (output) layer first
    assert per_layer.shape == (3, 3)
    torch.testing.assert_close(last, per_layer[-1])
    torch.testing.assert_close(last, mprt(saliency, model, images, seed=2))


def test_randomised_copy_leaves_the_model_and_the_global_rng_alone(model):
    before = [p.clone() for p in model.parameters()]
    torch.manual_seed(11)
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    clone = randomised_copy(model, seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters()))
    top_only = randomised_copy(model, seed=0, layers=1)
    assert torch.equal(top_only[0].weight, model[0].weight) and not torch.equal(top_only[6].weight, model[6].weight)


def test_mprt_bad_inputs(model, images):
    with pytest.raises(ValueError, match="reset_parameters"):
        mprt(lambda m, x, t=None: x.sum(1), nn.Sequential(nn.Flatten(), nn.Softmax(dim=1)).eval(), images)
    with pytest.raises(ValueError, match="B, C, H, W"):
        mprt(saliency, model, images[0])


def test_avg_sensitivity_is_nan_when_the_clean_map_is_constant_but_noisy_ones_are_not(model, images):
    def flat_on_clean(m, x, target=None):  # zeros on the clean images, a real map on noisy ones
        return torch.zeros(x.shape[0], *x.shape[-2:]) if torch.equal(x, images) else x.mean(1)

    out = avg_sensitivity(flat_on_clean, model, images, samples=2)
    assert bool(torch.isnan(out).all())
