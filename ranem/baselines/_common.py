"""Input checks, target resolution and small helpers shared by every baseline.

Every baseline has the signature ``explain(model, x, target=None, **options) -> (B, H, W)``:
``x`` is a batch of images already normalised for ``model``; ``target`` is a class index per image
(an int, a sequence or a (B,) tensor); ``None`` means the model's top-1 prediction on ``x``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ranem.ops import _check_images


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_images(x, name: str = "x") -> None:
    """The substrates' image check, plus: non-empty and finite (explainers differentiate through x)."""
    _check_images(x, name)
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_probability(value, name: str, open_left: bool = True) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and (0 < value <= 1 if open_left else 0 <= value <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {'(0' if open_left else '[0'}, 1], got {value!r}")
    return float(value)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Top-1 class of ``model`` on each image of ``x`` (B,), computed in chunks."""
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


def resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Class index per image as a (B,) long tensor on x's device; ``None`` -> top-1 prediction."""
    if target is None:
        return predict(model, x)
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, a sequence of ints or a (B,) integer tensor, got a bool")
    if isinstance(target, int):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    if not isinstance(target, torch.Tensor):
        try:
            target = torch.as_tensor(list(target))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"target must be None, an int, a sequence of ints or a (B,) tensor, "
                            f"got {target!r}") from None
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = target.reshape(-1) if target.ndim == 0 else target
    if target.ndim != 1 or target.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"target must have one class per image, shape ({x.shape[0]},), got {tuple(target.shape)}")
    if bool((target < 0).any()):
        raise ValueError("target must hold non-negative class indices")
    return target.to(device=x.device, dtype=torch.long).expand(x.shape[0]).contiguous()


def pick(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores[b, target[b]] for a (N, classes) tensor and a (N,) target."""
    if bool((target >= scores.shape[1]).any()):
        raise ValueError(f"target holds a class index >= the model's {scores.shape[1]} outputs")
    return scores.gather(1, target[:, None]).squeeze(1)


def checked_forward(model: nn.Module, target: torch.Tensor):
    """``model`` as a function that also checks, on every call, that it returns (N, classes)
    scores and that ``target`` indexes them (Captum would fail deep inside otherwise)."""
    top = int(target.max())

    def forward(inputs):
        out = model(inputs)
        if out.ndim != 2:
            raise ValueError(f"model must return (B, classes) scores, got shape {tuple(out.shape)}")
        if top >= out.shape[1]:
            raise ValueError(f"target holds a class index >= the model's {out.shape[1]} outputs")
        return out
    return forward


@contextmanager
def frozen(model: nn.Module):
    """Evaluation mode with parameter gradients off for the duration; both restored afterwards,
    so an explainer never changes the model it explains (nor trains its BatchNorm statistics)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def gaussian_blur(x: torch.Tensor, sigma: float, reflect: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) tensor, kernel radius ~2.5 sigma (at least 1)."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(2.5 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-offsets**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad = (radius, radius, radius, radius)
    x = nn.functional.pad(x, pad, mode="reflect" if reflect and min(x.shape[-2:]) > radius else "replicate")
    x = nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
