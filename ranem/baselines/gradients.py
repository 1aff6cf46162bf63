"""Gradient-family baselines: Saliency, Integrated Gradients (through Captum), Grad-SHAP (ours).

Settings follow what the Ra-NEM authors ran (their published code), so that our numbers can be
held against the paper's:

- Saliency: Captum's default ``abs=True`` (absolute input gradient), then the mean over channels.
- Integrated Gradients: zero baseline (the all-zero *normalised* image, i.e. the dataset mean),
  Captum's default Gauss-Legendre rule with ``steps`` points (50 in the paper), mean over channels,
  then ``clamp(min=0)``: only positive evidence ranks high, all negative evidence ties at 0.
- Grad-SHAP: Captum's estimator (``GradientShap``) with a zero baseline, ``samples`` = 5 noisy
  copies with ``stdev`` 0.1, mean over channels, ``clamp(min=0)``; computed here in batches, with
  each image's noise and interpolation points drawn from its own seeded generator, so the result
  does not depend on ``batch_size`` nor disturb the caller's random state.

Images are cast to the model's parameter dtype first (the rule of ``ranem.baselines._common``);
a map that comes out NaN or inf (non-finite model outputs) raises a ValueError.
"""
from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, Saliency

from ranem import _checks
from ranem.baselines._common import check_maps, checked_forward, chunked, frozen, image_generators, model_input, pick
from ranem.baselines._common import progress_bar, resolve_target

__all__ = ["saliency", "integrated_gradients", "gradient_shap"]


def _prepare(model, x, target, batch_size=None):
    """(x in the model's dtype, the (B,) target)."""
    x = model_input(model, x)
    return x, resolve_target(model, x, target, batch_size)


def saliency(model, x, target=None, batch_size: int | None = None) -> torch.Tensor:
    """``|d logit_target / d x|`` averaged over channels (Simonyan et al., 2014). One backward pass;
    ``batch_size`` images at a time (None: all)."""
    x, target = _prepare(model, x, target, batch_size)

    def run(xb, tb, offset):
        with frozen(model), torch.enable_grad():
            inputs = xb.detach().clone().requires_grad_(True)
            return Saliency(checked_forward(model, tb)).attribute(inputs, target=tb, abs=True).mean(dim=1).detach()
    return check_maps(chunked(run, x, target, batch_size), x, "saliency")


def integrated_gradients(model, x, target=None, steps: int = 50, internal_batch_size: int = 32,
                         batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """Path integral of gradients from the zero baseline to x (Sundararajan et al., 2017),
    channel mean, negative evidence clamped to 0. Costs ``steps`` forward+backward passes per
    image, in chunks of ``internal_batch_size`` inputs (at least the images of one call: Captum needs
    a whole path step per chunk) and ``batch_size`` images per call (None: all); ``progress`` ticks
    once per chunk of images. 32 inputs: at 144 px on EfficientNet-Lite0, 256 peaked at 10 GB
    (benchmarks/memory.py), with no gain in speed on a CPU."""
    _checks.integer(steps, "steps")
    _checks.integer(internal_batch_size, "internal_batch_size")
    x, target = _prepare(model, x, target, batch_size)
    chunk = batch_size if batch_size is not None else x.shape[0]
    bar = progress_bar(progress, -(-x.shape[0] // _checks.integer(chunk, "batch_size")), "Integrated Gradients")

    def run(xb, tb, offset):
        with frozen(model), torch.enable_grad():
            attr = IntegratedGradients(checked_forward(model, tb)).attribute(
                xb.detach().clone(), baselines=torch.zeros_like(xb[:1]), target=tb, n_steps=steps,
                internal_batch_size=max(internal_batch_size, xb.shape[0]))
        bar.update()
        return attr.mean(dim=1).clamp(min=0).detach()
    with bar:
        maps = chunked(run, x, target, batch_size)
    return check_maps(maps, x, "integrated_gradients")


def _shap_draws(xb: torch.Tensor, samples: int, stdev: float, seed: int, offset: int):
    """Each image's noisy copies x + N(0, stdev^2) (b, S, C, H, W) and interpolation points
    alpha ~ U(0, 1) (b, S), from the image's own generator (CPU draws: same on every device)."""
    noise, alpha = [], []
    for g in image_generators(seed, offset, xb.shape[0], "cpu"):
        noise.append(torch.randn((samples,) + tuple(xb.shape[1:]), generator=g))
        alpha.append(torch.rand(samples, generator=g))
    noisy = xb[:, None] + (torch.stack(noise) * stdev).to(device=xb.device, dtype=xb.dtype)
    return noisy, torch.stack(alpha).to(device=xb.device, dtype=xb.dtype)


def gradient_shap(model, x, target=None, samples: int = 5, stdev: float = 0.1, seed: int | None = 0,
                  batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """Expected gradients times (x - baseline) over noisy points between a zero baseline and x
    (Lundberg and Lee, 2017), channel mean, clamped at 0. ``samples`` forward+backward per image;
    ``batch_size`` images (``batch_size * samples`` model inputs) per pass, None: all.

    With baseline b = 0, noisy copies x~_s = x + e_s and alpha_s ~ U(0, 1), the map of image x is
    mean_s grad f_target(alpha_s x~_s) * x~_s, Captum's ``GradientShap`` estimator; ``seed=None``
    draws a fresh seed from torch's global generator."""
    _checks.integer(samples, "samples")
    stdev = _checks.number(stdev, "stdev", low=0)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    _checks.integer(seed, "seed", minimum=0)
    x, target = _prepare(model, x, target, batch_size)
    chunk = batch_size if batch_size is not None else x.shape[0]
    bar = progress_bar(progress, -(-x.shape[0] // _checks.integer(chunk, "batch_size")), "Grad-SHAP")

    def run(xb, tb, offset):
        noisy, alpha = _shap_draws(xb, samples, stdev, seed, offset)
        with frozen(model), torch.enable_grad():
            points = (alpha[:, :, None, None, None] * noisy).flatten(0, 1).requires_grad_(True)
            scores = pick(checked_forward(model, tb)(points), tb.repeat_interleave(samples))
            grads, = torch.autograd.grad(scores.sum(), points)
        bar.update()
        attr = (grads.view_as(noisy) * noisy).mean(dim=1)  # (b, C, H, W), the mean over the samples
        return attr.mean(dim=1).clamp(min=0).detach()
    with bar:
        maps = chunked(run, x, target, batch_size)
    return check_maps(maps, x, "gradient_shap")
