"""Normalisation of images for timm classifiers."""
from __future__ import annotations

from typing import Sequence

import torch

from ranem import _checks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

def _channel_stats(values: Sequence[float], channels: int, name: str, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device).flatten()
    if t.numel() != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {t.numel()}")
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"std must be > 0 in every channel, got {t.tolist()}")
    return t.view(channels, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 images, or floats in [0, 1], shaped (..., C, H, W) -> float32 ``(x - mean) / std``."""
    if _checks.tensor(images, "images").ndim < 3:
        raise ValueError(f"images must be shaped (..., C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        # A second normalisation is the classic silent bug: refuse values outside [0, 1]. NaN
        # compares False with both bounds, so finiteness is checked on its own.
        if not bool(torch.isfinite(images).all()):
            raise ValueError("float images must be finite (no NaN or inf) and lie in [0, 1]")
        if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise ValueError("float images must lie in [0, 1] (are they normalised already?)")
        x = images.float()
    else:
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    c = x.shape[-3]
    return (x - _channel_stats(mean, c, "mean", x)) / _channel_stats(std, c, "std", x)


def denormalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, clamp: bool = True) -> torch.Tensor:
    """Inverse of ``normalize`` for display: float32 in [0, 1] (clamped unless ``clamp=False``)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError("images must be a floating-point torch.Tensor (a normalised batch)")
    if images.ndim < 3:
        raise ValueError(f"images must be shaped (..., C, H, W), got {tuple(images.shape)}")
    c = images.shape[-3]
    x = images.float() * _channel_stats(std, c, "std", images) + _channel_stats(mean, c, "mean", images)
    return x.clamp_(0.0, 1.0) if clamp else x


def model_statistics(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a classifier's inputs are normalised with: ``model.ranem_info`` (the package's
    classifiers), else timm's ``pretrained_cfg``, else ImageNet's; the rule ``ranem.nem.NEM`` uses."""
    info = getattr(model, "ranem_info", None) or {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = info.get("mean") or cfg.get("mean") or IMAGENET_MEAN
    std = info.get("std") or cfg.get("std") or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def knows_statistics(model) -> bool:
    """Whether ``model`` says how its inputs are normalised (else ``model_statistics`` guesses ImageNet)."""
    info = getattr(model, "ranem_info", None) or {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return bool((info.get("mean") and info.get("std")) or (cfg.get("mean") and cfg.get("std")))


def normalise_uint8(x, mean: Sequence[float], std: Sequence[float]):
    """uint8 images (B, C, H, W) scaled to [0, 1] and normalised with (mean, std); anything else is
    returned as it is (float images are taken as normalised already, as ``ranem.train`` does)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        return normalize(x, mean, std)
    return x
