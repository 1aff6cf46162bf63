"""What every baseline shares: the model's input, target resolution, chunking and small helpers.

Every baseline has the signature ``explain(model, x, target=None, **options) -> (B, H, W)``:
``x`` is a batch of images already normalised for ``model``; ``target`` is a class index per image
(an int, a sequence or a (B,) tensor); ``None`` means the model's top-1 prediction on ``x``.

The dtype rule of every public function that runs a model on images (baselines and metrics):
images in another floating dtype than the model's parameters (float16, bfloat16, float64 images
with a float32 model) are cast to the parameters' dtype on entry (``model_input``), so the model
never sees a dtype it cannot combine with its weights; maps come back in that dtype.

uint8 images are accepted too: scaled to [0, 1] and normalised with the model's statistics
(``ranem.data.transforms.model_statistics``: ``ranem_info``, else timm's ``pretrained_cfg``), as
``ranem.train`` does with its data; float images are taken as normalised already.

``batch_size`` (every explainer has one): at most that many images are explained at once, the
batch is cut into chunks and the maps concatenated (``chunked``); the result equals the unchunked
call's, so it only bounds memory. The argument checks themselves live in ``ranem._checks``.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from ranem import _checks
from ranem.data.transforms import knows_statistics, model_statistics, normalise_uint8

log = logging.getLogger("ranem.baselines")


def _model_tensor(model: nn.Module):
    """The model's first floating parameter (or buffer): where its dtype and device are read."""
    for t in model.parameters():
        if t.is_floating_point():
            return t
    for t in model.buffers():
        if t.is_floating_point():
            return t
    return None


def model_input(model, x, name: str = "x") -> torch.Tensor:
    """Check ``model`` and the images ``x`` (a non-empty, finite batch: explainers differentiate
    through x) and return x in the model's parameter dtype (the package's dtype rule); uint8 images
    are normalised with the model's statistics first. x on another device than the model is
    refused: moving it silently would hide a copy per call."""
    _checks.module(model)
    x = as_normalised(model, x)
    _checks.image_batch(x, name, nonempty=True, finite=True)
    ref = _model_tensor(model)
    if ref is None:
        return x
    if ref.device != x.device:
        raise ValueError(f"{name} is on {x.device} but the model's parameters are on {ref.device}; "
                         f"move one of them (x.to(device) or model.to(device))")
    return x if x.dtype == ref.dtype else x.to(ref.dtype)


def as_normalised(model, x):
    """uint8 images normalised with ``model``'s statistics; anything else unchanged (checked later)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        if not knows_statistics(model):
            log.warning("%s has no ranem_info or pretrained_cfg mean/std: uint8 images are normalised with "
                        "ImageNet's statistics; pass normalised float images if that is wrong", type(model).__name__)
        x = normalise_uint8(x, *model_statistics(model))
    return x


def chunked(fn, x: torch.Tensor, target: torch.Tensor, batch_size: int | None, **kwargs) -> torch.Tensor:
    """``fn(x, target, offset=..., **kwargs)`` on chunks of at most ``batch_size`` images, maps
    concatenated; ``offset`` is the chunk's first image index (random methods key their per-image
    noise on it, so chunking does not change their draws). ``None`` means one chunk."""
    if batch_size is None:
        batch_size = x.shape[0]
    _checks.integer(batch_size, "batch_size")
    if x.shape[0] <= batch_size:
        return fn(x, target, offset=0, **kwargs)
    return torch.cat([fn(x[i:i + batch_size], target[i:i + batch_size], offset=i, **kwargs)
                      for i in range(0, x.shape[0], batch_size)])


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar (notebooks get a widget) when ``enabled``, else one that draws nothing."""
    return tqdm(total=total, desc=desc, disable=not _checks.flag(enabled, "progress"), leave=False)


def image_generators(seed: int, offset: int, n: int, device) -> list[torch.Generator]:
    """One generator per image, seeded from (seed, image index): the draws an image gets do not
    depend on how the batch around it is chunked."""
    # Knuth's multiplicative constant spreads the (seed, index) pairs over distinct 63-bit seeds.
    return [torch.Generator(device=device).manual_seed((seed * 2654435761 + offset + i + 1) % (2**63 - 1))
            for i in range(n)]


def check_maps(maps, x: torch.Tensor, method: str) -> torch.Tensor:
    """An explainer's result: a (B, H, W) tensor matching x, finite. A non-finite map comes from
    non-finite model outputs (overflow) or a diverged optimisation; it is refused, never returned."""
    b, _, h, w = x.shape
    _checks.shaped(maps, f"the maps of {method}", (b, h, w), "B, H, W", "x")
    if maps.is_floating_point() and not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{method} produced NaN or inf attributions: the model's outputs on these images are "
                         f"not finite, or the method's options make it diverge")
    return maps


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Top-1 class of ``model`` on each image of ``x`` (B,), computed in chunks."""
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


def resolve_target(model: nn.Module, x: torch.Tensor, target, batch_size: int | None = None) -> torch.Tensor:
    """Class index per image as a (B,) long tensor on x's device; ``None`` -> top-1 prediction
    (``batch_size`` images per forward, default 256)."""
    if target is None:
        return predict(model, x, 256 if batch_size is None else _checks.integer(batch_size, "batch_size"))
    return _checks.class_indices(target, x.shape[0], x.device)


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
    if sigma <= 0 or 2 * sigma**2 < torch.finfo(x.dtype).tiny:
        return x  # a tinier sigma is the identity anyway, but its kernel would compute 0 / 0
    radius = max(1, int(round(2.5 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-offsets**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad = (radius, radius, radius, radius)
    x = nn.functional.pad(x, pad, mode="reflect" if reflect and min(x.shape[-2:]) > radius else "replicate")
    x = nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
