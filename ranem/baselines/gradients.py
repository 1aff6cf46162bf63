"""Gradient-family baselines through Captum: Saliency, Integrated Gradients, Grad-SHAP.

Settings follow what the Ra-NEM authors ran (their published code), so that our numbers can be
held against the paper's:

- Saliency: Captum's default ``abs=True`` (absolute input gradient), then the mean over channels.
- Integrated Gradients: zero baseline (the all-zero *normalised* image, i.e. the dataset mean),
  Captum's default Gauss-Legendre rule with ``steps`` points (50 in the paper), mean over channels,
  then ``clamp(min=0)``: only positive evidence ranks high, all negative evidence ties at 0.
- Grad-SHAP: zero baseline, ``samples`` = 5 noisy copies (Captum's default) with ``stdev`` 0.1,
  mean over channels, ``clamp(min=0)``.

Grad-SHAP is random (Captum draws from the global torch and NumPy generators); ``seed`` makes it
repeatable without disturbing the caller's random state.

Images are cast to the model's parameter dtype first (the rule of ``ranem.baselines._common``);
a map that comes out NaN or inf (non-finite model outputs) raises a ValueError.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, Saliency

from ranem.baselines._common import check_maps, check_number, check_positive_int, checked_forward, frozen
from ranem.baselines._common import model_input, resolve_target

__all__ = ["saliency", "integrated_gradients", "gradient_shap"]


@contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Run a block with torch's and NumPy's global generators seeded, then restore both."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _prepare(model, x, target):
    """(x in the model's dtype, the (B,) target)."""
    x = model_input(model, x)
    return x, resolve_target(model, x, target)


def saliency(model, x, target=None) -> torch.Tensor:
    """|d logit_target / d x| averaged over channels (Simonyan et al., 2014). One backward pass."""
    x, target = _prepare(model, x, target)
    with frozen(model), torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        attr = Saliency(checked_forward(model, target)).attribute(inputs, target=target, abs=True)
    return check_maps(attr.mean(dim=1).detach(), x, "saliency")


def integrated_gradients(model, x, target=None, steps: int = 50, internal_batch_size: int = 256) -> torch.Tensor:
    """Path integral of gradients from the zero baseline to x (Sundararajan et al., 2017),
    channel mean, negative evidence clamped to 0. Costs ``steps`` forward+backward passes per
    image, in chunks of ``internal_batch_size`` inputs to bound memory."""
    check_positive_int(steps, "steps")
    check_positive_int(internal_batch_size, "internal_batch_size")
    x, target = _prepare(model, x, target)
    with frozen(model), torch.enable_grad():
        attr = IntegratedGradients(checked_forward(model, target)).attribute(
            x.detach().clone(), baselines=torch.zeros_like(x[:1]), target=target, n_steps=steps,
            internal_batch_size=max(internal_batch_size, x.shape[0]))
    return check_maps(attr.mean(dim=1).clamp(min=0).detach(), x, "integrated_gradients")


def gradient_shap(model, x, target=None, samples: int = 5, stdev: float = 0.1, seed: int | None = 0) -> torch.Tensor:
    """Expected gradients times (x - baseline) over noisy points between a zero baseline and x
    (Lundberg and Lee, 2017), channel mean, clamped at 0. ``samples`` forward+backward per image."""
    check_positive_int(samples, "samples")
    stdev = check_number(stdev, "stdev", low=0)
    if seed is not None:
        check_positive_int(seed, "seed", minimum=0)
    x, target = _prepare(model, x, target)
    with frozen(model), torch.enable_grad(), _seeded(seed, x.device):
        attr = GradientShap(checked_forward(model, target)).attribute(
            x.detach().clone(), baselines=torch.zeros_like(x[:1]), target=target, n_samples=samples,
            stdevs=stdev)
    return check_maps(attr.mean(dim=1).clamp(min=0).detach(), x, "gradient_shap")
