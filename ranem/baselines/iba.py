"""IBA: the per-sample information bottleneck (Schulz et al., 2020) on the input, ours, batched.

The bottleneck replaces the input by a noisy mixture, Z = lambda * x + (1 - lambda) * eps, with
eps ~ N(mu, sigma^2) and lambda = smooth(sigmoid(alpha)) in [0, 1] per value. For each image we
optimise alpha to keep the target class while letting as little information through as possible:

    min_alpha  CE(model(Z), target) + beta * mean_i KL( P(Z_i | x) || N(mu_i, sigma_i^2) ).

With r = (x - mu) / sigma the KL per value is closed-form,
KL_i = ( (1 - lambda_i)^2 + (lambda_i r_i)^2 - 1 ) / 2 - log(1 - lambda_i), and the attribution of
a pixel is its KL summed over channels, in bits: how much information about that pixel the
model needed.

Input statistics (mu, sigma): by default *per sample*, each image's own per-channel mean and std
over its pixels (the same statistics as the ``noise`` substrate in ``ranem.ops``), so the method
needs no dataset. ``stats=(mean, std)`` takes statistics estimated elsewhere, for instance
per-pixel ones over a set of normalised images from ``input_statistics(images)``, as the IBA
authors estimate theirs (the Ra-NEM authors: on 10,000 images).

Settings of the IBA paper and of the Ra-NEM runs: beta = 10, 10 Adam steps with lr 1, 10 noise
draws per step (one batch of 10 B), alpha initialised to 5 (lambda ~ 0.993), lambda smoothed
with a Gaussian of sigma 1 pixel. Cost: steps * draws forward+backward passes per image, for
``batch_size`` images at a time (``batch_size * draws`` model inputs per pass; None: all). Each
image's noise comes from its own generator seeded by (``seed``, its index in the batch), so the
maps do not depend on ``batch_size``.
Note: the authors' code hooks the bottleneck after the last feature stage, while their paper
says it sits on the input; we follow the paper (input).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ranem import _checks
from ranem.baselines._common import check_maps, checked_forward, chunked, frozen, gaussian_blur, image_generators
from ranem.baselines._common import model_input, progress_bar, resolve_target

__all__ = ["iba", "input_statistics", "bottleneck_capacity"]


def input_statistics(images: torch.Tensor, min_std: float = 0.01):
    """Per-pixel mean and std (C, H, W) over a set of normalised images (N, C, H, W)."""
    _checks.image_batch(images, "images", nonempty=True, finite=True)
    min_std = _checks.number(min_std, "min_std", low=0, low_open=True)
    if images.shape[0] < 2:
        raise ValueError(f"images must hold at least 2 images to estimate a std, got {images.shape[0]}")
    return images.mean(dim=0), images.std(dim=0).clamp(min=min_std)


def _sample_statistics(x: torch.Tensor, min_std: float):
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True).clamp(min=min_std)


def bottleneck_capacity(lam: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """KL( N(lam r, (1 - lam)^2) || N(0, 1) ) per value, in nats."""
    _checks.float_tensor(lam, "lam")
    _checks.float_tensor(r, "r")
    var = (1 - lam).pow(2).clamp(min=1e-12)
    return 0.5 * (var + (lam * r).pow(2) - 1 - var.log())


def _check_stats(stats, x):
    if not (isinstance(stats, (tuple, list)) and len(stats) == 2):
        raise TypeError("stats must be None or a pair (mean, std) of tensors broadcastable to x")
    mean, std = (torch.as_tensor(s, device=x.device, dtype=x.dtype) for s in stats)
    try:
        torch.broadcast_shapes(mean.shape, x.shape)
        torch.broadcast_shapes(std.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"stats must broadcast to x's shape {tuple(x.shape)}, got {tuple(mean.shape)} "
                         f"and {tuple(std.shape)}") from None
    _checks.finite(mean, "stats' mean")
    _checks.finite(std, "stats' std")
    if bool((std <= 0).any()):
        raise ValueError("stats: every std must be > 0")
    return mean, std


def iba(model, x, target=None, beta: float = 10.0, steps: int = 10, draws: int = 10, lr: float = 1.0,
        sigma: float = 1.0, initial_alpha: float = 5.0, stats=None, min_std: float = 0.01,
        seed: int = 0, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """Per-sample input bottleneck attribution (B, H, W) in bits, for ``target`` (default: top-1).
    Every real option must be finite; x is cast to the model's dtype first. ``progress`` shows a
    bar over the optimisation steps."""
    x = model_input(model, x)
    _checks.integer(steps, "steps")
    _checks.integer(draws, "draws")
    _checks.integer(seed, "seed", minimum=0)
    options = dict(beta=_checks.number(beta, "beta", low=0), lr=_checks.number(lr, "lr", low=0, low_open=True),
                   sigma=_checks.number(sigma, "sigma", low=0),
                   initial_alpha=_checks.number(initial_alpha, "initial_alpha"), steps=steps, draws=draws, seed=seed)
    min_std = _checks.number(min_std, "min_std", low=0, low_open=True)
    target = resolve_target(model, x, target, batch_size)
    x = x.detach()
    if stats is None and x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"per-sample statistics need at least 2 pixels per image, got {tuple(x.shape[2:])}; "
                         "pass stats=(mean, std)")
    mean, std = _sample_statistics(x, min_std) if stats is None else _check_stats(stats, x)
    mean, std = mean.expand_as(x), std.expand_as(x)
    chunks = -(-x.shape[0] // _checks.integer(batch_size or x.shape[0], "batch_size"))
    with progress_bar(progress, steps * chunks, "IBA") as bar:
        def run(xb, tb, offset):
            rows = slice(offset, offset + xb.shape[0])
            return _optimise(model, xb, tb, mean[rows], std[rows], offset=offset, bar=bar, **options)
        maps = chunked(run, x, target, batch_size)
    return check_maps(maps, x, "iba")


def _optimise(model, x, target, mean, std, *, beta, steps, draws, lr, sigma, initial_alpha, seed, offset, bar):
    """IBA on one chunk of images: Adam on alpha, then the bottleneck's capacity in bits (B, H, W)."""
    r = (x - mean) / std
    alpha = torch.full_like(x, initial_alpha, dtype=torch.float32).requires_grad_(True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    generators = image_generators(seed, offset, x.shape[0], x.device)
    labels = target.repeat_interleave(draws)
    forward = checked_forward(model, target)

    def lam_of(a):
        return gaussian_blur(torch.sigmoid(a), sigma, reflect=True).to(x.dtype)

    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            lam = lam_of(alpha)
            unit = torch.stack([torch.randn((draws,) + tuple(x.shape[1:]), generator=g, device=x.device,
                                            dtype=x.dtype) for g in generators])
            eps = unit * std[:, None] + mean[:, None]
            z = lam[:, None] * x[:, None] + (1 - lam[:, None]) * eps
            ce = F.cross_entropy(forward(z.flatten(0, 1)).float(), labels, reduction="none").view(-1, draws).mean(1)
            info = bottleneck_capacity(lam.float(), r.float()).flatten(1).mean(1)
            loss = (ce + beta * info).sum()  # images are independent: each alpha sees its own term only
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.update()
    with torch.no_grad():
        capacity = bottleneck_capacity(lam_of(alpha).float(), r.float())
    return (capacity.sum(dim=1) / math.log(2)).to(x.dtype)
