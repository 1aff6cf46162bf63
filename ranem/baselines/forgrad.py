"""FORgrad: gradient attributions low-pass filtered in the Fourier domain (Muzellec et al., 2024).

Gradient maps carry high-frequency noise (the paper traces much of it to aliasing in the
network's downsampling); removing it makes them more faithful. ``low_pass`` applies an ideal
(0/1) circular low-pass filter to a batch of maps, and ``forgrad_saliency``,
``forgrad_integrated_gradients`` and ``forgrad_gradient_shap`` are the three gradient baselines
of ``ranem.baselines.gradients`` followed by it.

The cutoff. A map of H x W pixels has DFT frequencies f_y = k_y / H and f_x = k_x / W cycles
per pixel, each in [-1/2, 1/2] (1/2 is the Nyquist frequency). Scaled to the Nyquist frequency,
u = 2 f_y and v = 2 f_x lie in [-1, 1], and the frequency's radius is

    r = sqrt(u^2 + v^2) / sqrt(2)  in [0, 1],

a fraction of the largest radius the grid has (its corner, Nyquist on both axes; a
checkerboard). The filter keeps every frequency with r <= ``cutoff`` and zeroes the others:
``cutoff`` = 1 keeps the whole spectrum (the map comes back unchanged), a smaller one keeps a disc
of radius ``cutoff`` x sqrt(2) x Nyquist, and the mean of each map (r = 0) is always kept. Being a
fraction, one cutoff means the same relative smoothing at every image size.

What the paper does. It chooses the cutoff ``sigma`` per architecture and per method, the one that
maximises faithfulness on validation images. Its reference implementation (Xplique's ``forgrad``)
uses the same ideal circular mask with the radius ``sigma`` counted in DFT bins, 15 by default at
224 px. sigma bins on an N x N image is ``cutoff = sigma / (sqrt(2) * N / 2)``, so ``CUTOFF`` =
15 / (112 sqrt 2) ~ 0.095 is that default; tune it per model as the paper does. That
implementation also takes absolute values, of the map and of the filtered map. Here the map is
filtered as it comes (the three gradient maps are >= 0 already) and returned signed: an ideal
filter rings, so a non-negative map can dip slightly below 0, which only ranks those pixels lowest.
"""
from __future__ import annotations

import math

import torch

from ranem import _checks
from ranem.baselines.gradients import gradient_shap, integrated_gradients, saliency

__all__ = ["CUTOFF", "low_pass", "forgrad_saliency", "forgrad_integrated_gradients", "forgrad_gradient_shap"]

CUTOFF = 15 / math.hypot(112, 112)  # the reference default, 15 DFT bins at 224 px, as a fraction


def _cutoff(cutoff) -> float:
    return _checks.probability(cutoff, "cutoff")  # in (0, 1]: 0 would keep nothing, not even the mean


def _kept(height: int, width: int, cutoff: float, device) -> torch.Tensor:
    """The (H, W // 2 + 1) 0/1 mask of the frequencies rfft2 returns with radius <= cutoff."""
    u = 2 * torch.fft.fftfreq(height, dtype=torch.float64, device=device)[:, None]
    v = 2 * torch.fft.rfftfreq(width, dtype=torch.float64, device=device)[None, :]
    # Squared radii in float64, against 2 cutoff^2: the corner (u = v = 1) is then exactly 2, kept at cutoff 1.
    return (u ** 2 + v ** 2 <= 2 * cutoff ** 2).to(torch.float64)


def low_pass(maps: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """``maps`` (B, H, W) with every frequency of radius > ``cutoff`` removed (the module docstring
    defines the radius: a fraction in (0, 1] of the grid's largest, 1 keeping everything). One
    rfft2/irfft2 over the whole batch; same shape, dtype and device as ``maps``."""
    _checks.float_tensor(maps, "maps")
    if maps.ndim != 3:
        raise ValueError(f"maps must be a batch of maps, a 3-D tensor (B, H, W), got shape {tuple(maps.shape)}")
    cutoff = _cutoff(cutoff)
    # torch.fft has no half-precision kernels on every device: filter in float32 at least.
    work = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    spectrum = torch.fft.rfft2(work)
    mask = _kept(*maps.shape[-2:], cutoff, maps.device).to(work.dtype)
    # s= gives irfft2 the true width back (an odd width is ambiguous from W // 2 + 1 columns).
    return torch.fft.irfft2(spectrum * mask, s=maps.shape[-2:]).to(maps.dtype)


def forgrad_saliency(model, x, target=None, batch_size: int | None = None, cutoff: float = CUTOFF) -> torch.Tensor:
    """``saliency`` low-pass filtered at ``cutoff`` (see ``low_pass``)."""
    cutoff = _cutoff(cutoff)  # before the backward passes, not after them
    return low_pass(saliency(model, x, target, batch_size=batch_size), cutoff)


def forgrad_integrated_gradients(model, x, target=None, steps: int = 50, internal_batch_size: int = 32,
                                 batch_size: int | None = None, progress: bool = False,
                                 cutoff: float = CUTOFF) -> torch.Tensor:
    """``integrated_gradients`` low-pass filtered at ``cutoff`` (see ``low_pass``)."""
    cutoff = _cutoff(cutoff)
    return low_pass(integrated_gradients(model, x, target, steps=steps, internal_batch_size=internal_batch_size,
                                         batch_size=batch_size, progress=progress), cutoff)


def forgrad_gradient_shap(model, x, target=None, samples: int = 5, stdev: float = 0.1, seed: int | None = 0,
                          batch_size: int | None = None, progress: bool = False,
                          cutoff: float = CUTOFF) -> torch.Tensor:
    """``gradient_shap`` low-pass filtered at ``cutoff`` (see ``low_pass``)."""
    cutoff = _cutoff(cutoff)
    return low_pass(gradient_shap(model, x, target, samples=samples, stdev=stdev, seed=seed, batch_size=batch_size,
                                  progress=progress), cutoff)
