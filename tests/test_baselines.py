"""Baselines: equal to Captum / closed forms / slow reference loops; registry; hooks; bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from captum.attr import GradientShap, IntegratedGradients, Saliency
from torch import nn

from ranem import baselines
from ranem.baselines import DISPLAY_NAMES, EXPLAINERS, explain, get_explainer
from ranem.baselines.extremal import area_loss
from ranem.baselines.gradcam import cam_from_gradients
from ranem.baselines.iba import bottleneck_capacity

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """conv -> ReLU -> global average pool -> linear: Grad-CAM++ has a closed form on it."""

    def __init__(self, classes=3, channels=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny():
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def timm_models():
    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=5).eval()
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8, depth=2).eval()
    return {"cnn": cnn, "vit": vit}


# ------------------------------------------------------------------ gradient family vs Captum
def test_gradient_methods_equal_direct_captum_calls(tiny, images):
    target = tiny(images).argmax(1)
    x = images.clone().requires_grad_(True)
    ref_sal = Saliency(tiny).attribute(x, target=target).mean(1)
    ref_ig = IntegratedGradients(tiny).attribute(images, baselines=torch.zeros_like(images[:1]), target=target,
                                                 n_steps=16).mean(1).clamp(min=0)
    torch.testing.assert_close(baselines.saliency(tiny, images), ref_sal)
    torch.testing.assert_close(baselines.integrated_gradients(tiny, images, steps=16), ref_ig)


def test_gradient_shap_is_captums_estimator_exactly_where_randomness_drops_out(images):
    # A linear model has one gradient everywhere, so with stdev 0 Grad-SHAP is W[target] * x whatever
    # the interpolation points drawn: ours, Captum's and the closed form must agree exactly.
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 4)).eval()
    target = linear(images).argmax(1)
    closed = (linear[1].weight[target].view_as(images) * images).mean(1).clamp(min=0).detach()
    ref = GradientShap(linear).attribute(images, baselines=torch.zeros_like(images[:1]), target=target,
                                         n_samples=3, stdevs=0.0).mean(1).clamp(min=0)
    ours = baselines.gradient_shap(linear, images, samples=3, stdev=0.0)
    torch.testing.assert_close(ref, closed)
    torch.testing.assert_close(ours, closed)


def test_gradient_shap_agrees_with_captum_in_expectation(tiny, images):
    # Our noise comes from one generator per image (so chunking cannot change it) and Captum's from
    # the global generators: with many samples both estimate the same expected map, and they differ
    # by no more than two of our own runs with different seeds do.
    target = tiny(images).argmax(1)
    torch.manual_seed(0)
    np.random.seed(0)
    ref = GradientShap(tiny).attribute(images, baselines=torch.zeros_like(images[:1]), target=target,
                                       n_samples=1000, stdevs=0.1).mean(1).clamp(min=0)
    ours = baselines.gradient_shap(tiny, images, samples=1000, seed=1)
    other = baselines.gradient_shap(tiny, images, samples=1000, seed=2)
    scale = ref.abs().max()
    assert (ours - ref).abs().max() < 0.06 * scale
    assert (ours - ref).abs().mean() < 2 * (ours - other).abs().mean() + 1e-3 * scale


def test_gradient_shap_is_repeatable_and_keeps_global_rng(tiny, images):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = baselines.gradient_shap(tiny, images, seed=3)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is untouched
    torch.testing.assert_close(a, baselines.gradient_shap(tiny, images, seed=3))


def test_ig_internal_batch_size_does_not_change_the_result(tiny, images):
    a = baselines.integrated_gradients(tiny, images, steps=10, internal_batch_size=4)
    b = baselines.integrated_gradients(tiny, images, steps=10, internal_batch_size=1000)
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ Grad-CAM++
def test_grad_cam_pp_equals_hand_derived_closed_form(tiny, images):
    target = torch.tensor([0, 1, 2])
    cam = baselines.grad_cam_pp(tiny, images, target, layer=tiny.features)
    with torch.no_grad():
        act = tiny.features(images)  # (B, K, h, w)
    hw = act.shape[-2] * act.shape[-1]
    # logit_c = sum_k W[c, k] mean_ij A_kij + b  =>  g = W[c, k] / hw, constant over i, j.
    g = tiny.fc.weight[target].detach() / hw  # (B, K)
    total = act.sum(dim=(2, 3))
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + total * g**3 + 1e-7), torch.zeros_like(g))
    weights = hw * alpha * g.clamp(min=0)
    expected = (weights[:, :, None, None] * act).sum(1).clamp(min=0)
    torch.testing.assert_close(cam, expected)


def test_cam_from_gradients_zero_gradient_gives_zero_map():
    act = torch.rand(2, 3, 4, 4)
    assert torch.equal(cam_from_gradients(act, torch.zeros_like(act)), torch.zeros(2, 4, 4))


def test_grad_cam_pp_hooks_always_removed(tiny, images):
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = TinyCNN()

        def forward(self, x):
            if getattr(self, "armed", False):
                self.body.features(x)
                raise RuntimeError("boom")
            return self.body(x)

    model = Exploding().eval()
    target = torch.zeros(3, dtype=torch.long)
    baselines.grad_cam_pp(model, images, target, layer="body.features")
    assert len(model.body.features._forward_hooks) == 0
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        baselines.grad_cam_pp(model, images, target, layer="body.features")
    assert len(model.body.features._forward_hooks) == 0


def test_grad_cam_pp_finds_layers_of_timm_models(timm_models):
    assert baselines.find_target_layer(timm_models["cnn"]) is timm_models["cnn"].layer4
    assert baselines.find_target_layer(timm_models["vit"]) is timm_models["vit"].blocks[-1].norm1
    with pytest.raises(ValueError, match="layer="):
        baselines.find_target_layer(TinyCNN())


# ------------------------------------------------------------------ RISE
@pytest.mark.parametrize("p", [0.5, 0.2])
def test_rise_masks_have_the_configured_density(p):
    gen = torch.Generator().manual_seed(0)
    masks = baselines.rise_masks(1500, (40, 40), grid=7, p=p, generator=gen)
    assert masks.shape == (1500, 40, 40)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - p) < 0.02
    # The random shift: the masks are not all aligned on the same cell grid.
    assert float(masks[:, 0, 0].std()) > 0.1


def test_rise_equals_an_unbatched_reference(tiny, images):
    n, p = 30, 0.5
    got = baselines.rise(tiny, images, masks=n, p=p, batch_size=7, seed=4)
    masks = baselines.rise_masks(n, images.shape[-2:], grid=7, p=p, generator=torch.Generator().manual_seed(4))
    target = tiny(images).argmax(1)
    expected = torch.zeros(images.shape[0], *images.shape[-2:])
    with torch.no_grad():
        for i in range(images.shape[0]):
            for m in masks:
                prob = tiny((images[i] * m)[None]).softmax(1)[0, target[i]]
                expected[i] += prob * m
    torch.testing.assert_close(got, expected / masks.sum(0))  # default: each pixel's realised coverage
    original = baselines.rise(tiny, images, masks=n, p=p, batch_size=5, seed=4, normalise="p")
    torch.testing.assert_close(original, expected / (n * p))  # RISE's N p
    # The memory bound changes nothing.
    torch.testing.assert_close(got, baselines.rise(tiny, images, masks=n, p=p, batch_size=1000, seed=4))


def test_rise_coverage_normalisation_removes_the_shared_mask_pattern(images):
    class Constant(nn.Module):  # ignores its input: every pixel is equally (un)important
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 1.0]]).expand(x.shape[0], 3) + 0 * self.w

    flat = baselines.rise(Constant(), images, masks=40)
    torch.testing.assert_close(flat, torch.full_like(flat, float(flat[0, 0, 0])))
    raw = baselines.rise(Constant(), images, masks=40, normalise="p")
    assert float(raw[0].std()) > 0.01  # with N p the map is the masks' uneven coverage


# ------------------------------------------------------------------ Smooth Pixel Mask
def test_area_loss_closed_form():
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.5, 0.0, 0.25]])
    # Reference for area 0.5: (0, 0, 1, 1); second row sorted = (0, 0.25, 0.5, 1).
    expected = torch.tensor([0.0, (0.25**2 + 0.5**2) / 4])
    torch.testing.assert_close(area_loss(mask, 0.5), expected)


def test_smooth_pixel_mask_respects_the_area(tiny):
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    mask = baselines.smooth_pixel_mask(tiny, x, area=0.1, iterations=150, grid=12)
    assert mask.shape == (2, 24, 24)
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert torch.allclose(mask.mean(dim=(1, 2)), torch.full((2,), 0.1), atol=0.03)
    assert torch.allclose((mask > 0.5).float().mean(dim=(1, 2)), torch.full((2,), 0.1), atol=0.05)


# ------------------------------------------------------------------ IBA
def test_bottleneck_capacity_equals_gaussian_kl():
    lam = torch.rand(50) * 0.98 + 0.01
    r = torch.randn(50)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(lam * r, 1 - lam),
                                                 torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(bottleneck_capacity(lam, r), expected)


def test_iba_maps_and_statistics(tiny, images):
    a = baselines.iba(tiny, images, steps=3, draws=2)
    assert a.shape == (3, 12, 12) and bool((a >= 0).all()) and bool(torch.isfinite(a).all())
    mean, std = baselines.input_statistics(images)
    torch.testing.assert_close(mean, images.mean(0))
    b = baselines.iba(tiny, images, steps=3, draws=2, stats=(mean, std))
    assert b.shape == a.shape
    torch.testing.assert_close(baselines.iba(tiny, images, steps=3, draws=2, seed=1),
                               baselines.iba(tiny, images, steps=3, draws=2, seed=1))
    with pytest.raises(ValueError, match="std"):
        baselines.iba(tiny, images, stats=(mean, torch.zeros_like(std)))
    with pytest.raises(TypeError, match="stats"):
        baselines.iba(tiny, images, stats=mean)


# ------------------------------------------------------------------ registry, interface, errors
FAST = {"integrated_gradients": dict(steps=4), "gradient_shap": dict(samples=2), "rise": dict(masks=16),
        "smooth_pixel_mask": dict(iterations=3), "iba": dict(steps=2, draws=2),
        "forgrad_integrated_gradients": dict(steps=4), "forgrad_gradient_shap": dict(samples=2)}


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("name", [n for n in EXPLAINERS if n not in ("ranem", "nemt", "ranem_insdel")])
def test_every_registered_baseline_runs_on_timm_models(timm_models, name, kind):
    model = timm_models[kind]
    x = torch.randn(2, 3, 32, 32)
    maps = explain(name, model, x, **FAST.get(name, {}))
    assert maps.shape == (2, 32, 32) and maps.dtype == x.dtype
    assert bool(torch.isfinite(maps).all())
    # The model is left as it was found: eval mode, parameter flags untouched, no gradient kept.
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_explainers_leave_the_model_as_they_found_it(tiny, images):
    model = TinyCNN().train()
    baselines.saliency(model, images)
    baselines.rise(model, images, masks=4)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_registry_names_aliases_and_settings():
    from ranem import config
    s = config.settings("quick")
    assert get_explainer("IG") is EXPLAINERS["integrated_gradients"]
    assert get_explainer("Grad-CAM++") is EXPLAINERS["grad_cam_pp"]
    assert get_explainer("Ra-NEM") is EXPLAINERS["ranem"]
    assert get_explainer("ranem_insdel") is EXPLAINERS["ranem_insdel"]
    assert "ours" in DISPLAY_NAMES["ranem_insdel"]  # our extension, never shown as the paper's method
    assert get_explainer("rise", settings=s).keywords["masks"] == s.rise_masks
    assert get_explainer("rise", settings=s, masks=3).keywords["masks"] == 3
    with pytest.raises(ValueError, match="unknown explainer"):
        get_explainer("lime")


def test_nem_explainers_attach_the_trained_decoder_to_the_model_given():
    from ranem.baselines.nems import attach
    from ranem.metrics import randomised_copy
    from ranem.nem import RaNEM
    torch.manual_seed(0)
    clf = timm.create_model("resnet10t", num_classes=4).eval()
    clf.ranem_info = {"image_size": 32}
    net = RaNEM(clf)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(explain("ranem", clf, x, nem=net), net.explain(x))
    rand = randomised_copy(clf, seed=1)
    twin = attach(net, rand)
    assert twin.classifier is rand and attach(net, rand) is twin
    for a, b in zip(twin.decoder.state_dict().values(), net.decoder.state_dict().values()):
        assert torch.equal(a, b)
    assert explain("ranem", rand, x, nem=net).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="no trained ranem"):
        explain("ranem", TinyCNN(), x)


@pytest.mark.parametrize("name", ["saliency", "grad_cam_pp", "rise", "iba"])
def test_bad_inputs_fail_early_with_clear_errors(tiny, images, name):
    fn = get_explainer(name, **({"layer": "features"} if name == "grad_cam_pp" else {}))
    with pytest.raises(ValueError, match="B, C, H, W"):
        fn(tiny, images[0])
    with pytest.raises(ValueError, match="finite"):
        fn(tiny, images.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="one class per image"):
        fn(tiny, images, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        fn(tiny, images, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=">= the model's"):
        fn(tiny, images, 7)
    with pytest.raises(TypeError, match="nn.Module"):
        fn(lambda t: t, images)


def test_bad_options_fail_early(tiny, images):
    with pytest.raises(ValueError, match="masks"):
        baselines.rise(tiny, images, masks=0)
    with pytest.raises(ValueError, match="p must be"):
        baselines.rise(tiny, images, p=1.5)
    with pytest.raises(ValueError, match="steps"):
        baselines.integrated_gradients(tiny, images, steps=0)
    with pytest.raises(ValueError, match="area"):
        baselines.smooth_pixel_mask(tiny, images, area=0)
    with pytest.raises(ValueError, match="not a submodule"):
        baselines.grad_cam_pp(tiny, images, layer="nope")
