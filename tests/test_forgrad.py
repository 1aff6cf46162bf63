"""FORgrad: the batched Fourier low-pass equals a per-image NumPy reference; the wrappers filter the
gradient maps; the cutoff is checked; the variants are registered but outside the comparison."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from ranem import baselines, config
from ranem.baselines import COMPARED, DISPLAY_NAMES, FAMILIES, forgrad
from ranem.baselines.forgrad import CUTOFF, low_pass
from test_baselines import images, tiny  # noqa: F401 (fixtures: a tiny CNN and three 12 x 12 images)

torch.set_num_threads(1)


def reference_low_pass(maps: np.ndarray, cutoff: float) -> np.ndarray:
    """One image at a time, full complex FFT, the mask built bin by bin from the definition: bin
    (k, l) is the signed frequency (k / H, l / W) cycles per pixel, its radius the hypotenuse of
    the two as fractions of Nyquist (1/2), over sqrt(2)."""
    out = np.empty_like(maps)
    for i, m in enumerate(maps):
        h, w = m.shape
        keep = np.zeros((h, w))
        for k in range(h):
            for l in range(w):
                fy, fx = (k if k <= h // 2 else k - h) / h, (l if l <= w // 2 else l - w) / w
                keep[k, l] = np.hypot(fy / 0.5, fx / 0.5) / np.sqrt(2) <= cutoff
        out[i] = np.fft.ifft2(np.fft.fft2(m) * keep).real
    return out


def random_maps(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 15, 20), (2, 9, 7), (1, 1, 5)])
@pytest.mark.parametrize("cutoff", [0.05, CUTOFF, 0.3, 0.7071, 1.0])
def test_low_pass_equals_a_per_image_numpy_reference(shape, cutoff):
    maps = random_maps(*shape)
    expected = reference_low_pass(maps.numpy(), cutoff)
    np.testing.assert_allclose(low_pass(maps, cutoff).numpy(), expected, atol=1e-10)
    got32 = low_pass(maps.float(), cutoff)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-5)


def test_a_low_frequency_cosine_passes_and_a_checkerboard_is_removed():
    h = w = 32
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # One cycle over the rows: radius (2 / 32) / sqrt(2) ~ 0.044, inside a 0.1 cutoff.
    smooth = 1.5 + torch.cos(2 * math.pi * y / h) + 0.5 * torch.sin(2 * math.pi * x / w)
    checker = (-1.0) ** (x + y)  # Nyquist on both axes: radius 1, the grid's highest frequency
    maps = torch.stack([smooth, smooth + checker, checker])
    out = low_pass(maps, 0.1)
    torch.testing.assert_close(out[0], smooth)
    torch.testing.assert_close(out[1], smooth)
    torch.testing.assert_close(out[2], torch.zeros(h, w, dtype=torch.float64))
    torch.testing.assert_close(low_pass(checker[None], 0.999)[0], torch.zeros(h, w, dtype=torch.float64))


def test_the_full_band_returns_the_map_and_the_mean_is_always_kept():
    maps = random_maps(4, 12, 17, seed=3)
    torch.testing.assert_close(low_pass(maps, 1.0), maps)
    tiny_band = low_pass(maps, 1e-6)  # only the DC term survives: each map's mean, everywhere
    torch.testing.assert_close(tiny_band, maps.mean(dim=(1, 2), keepdim=True).expand_as(maps))


def test_filtering_a_batch_equals_filtering_each_map():
    maps = random_maps(5, 14, 11, seed=4, dtype=torch.float32)
    one_by_one = torch.cat([low_pass(maps[i:i + 1], 0.2) for i in range(len(maps))])
    torch.testing.assert_close(low_pass(maps, 0.2), one_by_one)


def test_half_precision_maps_come_back_in_half_precision():
    maps = random_maps(2, 8, 8, seed=5, dtype=torch.float32)
    out = low_pass(maps.half(), 0.3)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), low_pass(maps, 0.3), atol=2e-3, rtol=0)


@pytest.mark.parametrize("cutoff, error, message", [
    (0, ValueError, r"cutoff must be a finite number > 0 and <= 1, got 0"),
    (-0.2, ValueError, r"cutoff must be a finite number > 0"),
    (1.5, ValueError, r"cutoff must be a finite number > 0 and <= 1, got 1.5"),
    (float("nan"), ValueError, r"cutoff must be a finite number"),
    ("0.5", TypeError, r"cutoff must be a real number, got str"),
    (None, TypeError, r"cutoff must be a real number, got NoneType"),
    (True, TypeError, r"cutoff must be a real number, got bool"),
])
def test_bad_cutoffs_are_refused_by_name(cutoff, error, message, tiny, images):
    with pytest.raises(error, match=message):
        low_pass(random_maps(1, 4, 4), cutoff)
    with pytest.raises(error, match=message):  # before any gradient is computed
        baselines.forgrad_saliency(tiny, images, cutoff=cutoff)


def test_bad_maps_are_refused_by_name():
    with pytest.raises(ValueError, match=r"maps must be a batch of maps, a 3-D tensor \(B, H, W\), got shape \(4, 4\)"):
        low_pass(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="maps must be a floating-point tensor"):
        low_pass(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="maps must be a torch.Tensor"):
        low_pass(np.zeros((1, 4, 4)))


@pytest.mark.parametrize("name, options", [
    ("saliency", {}), ("integrated_gradients", dict(steps=4)), ("gradient_shap", dict(samples=2)),
])
def test_each_wrapper_is_its_gradient_map_low_passed(name, options, tiny, images):
    plain = getattr(baselines, name)(tiny, images, target=1, **options)
    filtered = getattr(baselines, f"forgrad_{name}")(tiny, images, target=1, cutoff=0.25, **options)
    torch.testing.assert_close(filtered, low_pass(plain, 0.25))
    assert filtered.shape == plain.shape and not torch.allclose(filtered, plain)
    default = getattr(baselines, f"forgrad_{name}")(tiny, images, target=1, **options)
    torch.testing.assert_close(default, low_pass(plain, CUTOFF))


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "gradient_shap"])
def test_each_wrapper_has_its_methods_signature_plus_cutoff(name):
    plain = inspect.signature(getattr(baselines, name)).parameters
    wrapped = dict(inspect.signature(getattr(forgrad, f"forgrad_{name}")).parameters)
    assert wrapped.pop("cutoff").default == CUTOFF
    assert [(p.name, p.default) for p in wrapped.values()] == [(p.name, p.default) for p in plain.values()]


def test_the_variants_are_registered_but_outside_the_books_comparison():
    names = ["forgrad_saliency", "forgrad_integrated_gradients", "forgrad_gradient_shap"]
    assert [DISPLAY_NAMES[n] for n in names] == ["FORgrad Saliency", "FORgrad Integrated Gradients",
                                                  "FORgrad Grad-SHAP"]
    assert all(FAMILIES[n] == "gradient" for n in names) and not set(names) & set(COMPARED)
    s = config.settings("quick")
    assert baselines.get_explainer("forgrad_ig", settings=s).keywords == {"steps": s.ig_steps}
