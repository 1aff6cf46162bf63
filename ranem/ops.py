"""Masking operators: substrates that replace removed pixels.

Every substrate has one signature, ``substrate(x, generator=None) -> R`` with ``R`` shaped like
``x`` (B, C, H, W); it works on any device and on whole batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_images(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def zeros(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Deletion substrate: every removed value becomes 0 (on the normalised tensor)."""
    _check_images(x)
    return torch.zeros_like(x)


def gaussian_kernel(kernel_size: int = 11, sigma: float = 5.0, device=None, dtype=None) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel of side ``kernel_size``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    offsets = torch.arange(kernel_size, device=device, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    return (k2 / k2.sum()).to(dtype or torch.float32)


def blur(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    kernel_size: int = 11,
    sigma: float = 5.0,
) -> torch.Tensor:
    """Insertion substrate: Gaussian blur of ``x`` (zero padding, each channel on its own),
    applied to the normalised tensor as RISE's reference implementation does."""
    _check_images(x)
    channels = x.shape[1]
    kernel = gaussian_kernel(kernel_size, sigma, device=x.device, dtype=x.dtype)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(x, weight, padding=kernel_size // 2, groups=channels)


def noise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random substrate: Gaussian noise with each image's per-channel mean and std."""
    _check_images(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None \
        else torch.randn_like(x)
    return eps * std + mean


SUBSTRATES = {"zeros": zeros, "blur": blur, "noise": noise}


def get_substrate(substrate):
    """A substrate function from a name in ``SUBSTRATES`` or a callable."""
    if callable(substrate):
        return substrate
    if substrate in SUBSTRATES:
        return SUBSTRATES[substrate]
    raise ValueError(f"substrate must be a callable or one of {sorted(SUBSTRATES)}, got {substrate!r}")
