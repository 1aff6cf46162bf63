"""Smooth Pixel Mask: extremal perturbation with smooth masks (Fong et al., 2019), ours, batched.

For each image we look for the mask m in [0, 1]^(H x W) with a fixed area a (10 % by default)
that best *preserves* the target class when everything outside it is blurred away:

    m* = argmax_m  R(m * x + (1 - m) * blur(x))   subject to  area(m) = a.

- Smoothness comes from the parametrisation: parameters theta in [0, 1] on a coarse
  ``grid`` x ``grid`` lattice, Gaussian-smoothed (``sigma`` cells) and bilinearly upsampled to the
  image, so no mask can hold single-pixel structure.
- The area is enforced as Fong et al. do, by a ranking loss on the *sorted* mask values: the
  sorted vector must equal the reference r = (0, ..., 0, 1, ..., 1) with a fraction a of ones,
  lambda * mean((sort(m) - r)^2). Its weight lambda grows geometrically over the iterations, so the
  reward shapes the mask first and the constraint tightens at the end.
- Reward R: the contrastive reward the Ra-NEM authors used, logit of the target minus the
  largest other logit. Blur: the insertion substrate of ``ranem.ops`` (11 x 11, sigma 5).
- Optimiser: Adam on theta (clamped to [0, 1] after every step). All B images are optimised
  together in one batch: their losses add up and each theta only sees its own image's gradient.

Cost: ``iterations`` forward+backward passes per image (TorchRay's default is 800; the run modes
use fewer, see ``Settings.mask_iterations``). The result is a *set-of-features* explanation:
mostly 0 or 1, so it ranks poorly inside and outside the chosen region.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ranem import _checks
from ranem.baselines._common import check_maps, chunked, frozen, gaussian_blur, model_input, pick, progress_bar
from ranem.baselines._common import resolve_target
from ranem.ops import blur

__all__ = ["smooth_pixel_mask", "smooth_mask_from_params", "area_loss"]


def smooth_mask_from_params(theta: torch.Tensor, size, sigma: float = 1.0) -> torch.Tensor:
    """Mask (B, H, W) from coarse parameters theta (B, 1, g, g): Gaussian smoothing, upsampling."""
    _checks.image_batch(theta, "theta", nonempty=True, finite=True)
    if theta.shape[1] != 1:
        raise ValueError(f"theta must have one channel (B, 1, g, g), got shape {tuple(theta.shape)}")
    size = _checks.size_pair(size)
    sigma = _checks.number(sigma, "sigma", low=0)
    smooth = gaussian_blur(theta, sigma)
    return F.interpolate(smooth, size=size, mode="bilinear", align_corners=False)[:, 0]


def area_loss(mask: torch.Tensor, area: float) -> torch.Tensor:
    """Per-image mean squared distance (B,) between sorted mask values and the reference vector
    with a fraction ``area`` of ones (sorted ascending: zeros first)."""
    if _checks.float_tensor(mask, "mask").ndim < 2:
        raise ValueError(f"mask must be a (B, H, W) tensor, got shape {tuple(mask.shape)}")
    _checks.probability(area, "area", open_left=False)
    flat = mask.flatten(1)
    d = flat.shape[1]
    ones = int(round(area * d))
    ref = torch.zeros(d, device=mask.device, dtype=mask.dtype)
    if ones:
        ref[d - ones:] = 1
    return (flat.sort(dim=1).values - ref).pow(2).mean(dim=1)


def _contrastive(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    own = pick(logits, target)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - others.max(dim=1).values


def smooth_pixel_mask(model, x, target=None, area: float = 0.1, iterations: int = 300, grid: int = 32,
                      sigma: float = 1.0, lr: float = 0.05, weight_start: float = 10.0, weight_end: float = 300.0,
                      progress: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """Smooth preservation mask (B, H, W) with area ``area`` for ``target`` (default: top-1).
    Every real option must be finite; x is cast to the model's dtype first. ``batch_size`` images
    are optimised together (None: all; the masks do not depend on it)."""
    x = model_input(model, x)
    options = dict(area=_checks.probability(area, "area"), iterations=_checks.integer(iterations, "iterations"),
                   grid=_checks.integer(grid, "grid"), sigma=_checks.number(sigma, "sigma", low=0),
                   lr=_checks.number(lr, "lr", low=0, low_open=True))
    weight_start = _checks.number(weight_start, "weight_start", low=0, low_open=True)
    weight_end = _checks.number(weight_end, "weight_end", low=weight_start)
    target = resolve_target(model, x, target, batch_size)
    chunks = -(-x.shape[0] // _checks.integer(batch_size or x.shape[0], "batch_size"))
    with progress_bar(progress, iterations * chunks, "Smooth Pixel Mask") as bar:
        maps = chunked(lambda xb, tb, offset: _optimise(model, xb.detach(), tb, weight_start=weight_start,
                                                         weight_end=weight_end, bar=bar, **options),
                       x, target, batch_size)
    return check_maps(maps, x, "smooth_pixel_mask")


def _optimise(model, x, target, *, area, iterations, grid, sigma, lr, weight_start, weight_end, bar):
    """The extremal-perturbation optimisation for one chunk of images: their masks (B, H, W)."""
    b, _, h, w = x.shape
    substrate = blur(x)
    theta = torch.full((b, 1, min(grid, h), min(grid, w)), 0.5, device=x.device, dtype=torch.float32,
                       requires_grad=True)
    optimiser = torch.optim.Adam([theta], lr=lr)
    growth = (weight_end / weight_start) ** (1 / max(1, iterations - 1))
    with frozen(model), torch.enable_grad():
        for t in range(iterations):
            mask = smooth_mask_from_params(theta, (h, w), sigma)
            m = mask[:, None].to(x.dtype)
            reward = _contrastive(model(m * x + (1 - m) * substrate).float(), target)
            loss = (-reward + weight_start * growth**t * area_loss(mask, area)).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                theta.clamp_(0, 1)
            bar.update()
    with torch.no_grad():
        return smooth_mask_from_params(theta, (h, w), sigma).to(x.dtype)
