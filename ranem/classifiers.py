"""Classifiers to explain: build any timm model (pretrained from the hub or a local file, or
randomly initialised), predict with it in batches, and train it.

The book's own classifiers, trained once and cached, come from ``ranem.zoo.get_classifier``; every
classifier made there carries ``model.ranem_info`` (classes, the ``mean``/``std`` its inputs need,
its validation accuracy), which ``predict`` and ``accuracy`` read.
"""
from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ranem import _checks

# The recipe calibrated on 2 cores (resnet10t, 64 px: 78% in 6 epochs); crop_pad adds random translations.
RECIPE = dict(lr=2e-3, weight_decay=0.05, label_smoothing=0.1, crop_pad=4, seed=0)

__all__ = ["RECIPE", "create_classifier", "train_classifier", "accuracy", "predict"]


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------
def create_classifier(name: str, num_classes: int | None = None, pretrained: bool = False,
                      weights: str | os.PathLike | None = None, **timm_kwargs) -> nn.Module:
    """A timm model by name.

    - ``weights=PATH``: ImageNet weights from a local file (.safetensors, or a .pth/.bin state dict
      loaded with ``weights_only``); the head keeps the file's classes (1000 for ImageNet-1k).
    - ``pretrained=True``: the same from the hub (needs a network; offline, pass ``weights=``).
    - otherwise: random initialisation with ``num_classes`` outputs (default 10).

    With weights, an explicit ``num_classes`` replaces the head by a new random one (timm's rule).
    """
    _checks.timm_name(name)
    if num_classes is not None:
        _checks.integer(num_classes, "num_classes")
    head = {} if num_classes is None else {"num_classes": num_classes}
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(weights)!r}: no such file")
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                     **head, **timm_kwargs)
        except RuntimeError as err:  # shape or key mismatch: the file belongs to another model
            raise ValueError(f"weights={str(path)!r} do not fit the timm model {name!r}: {err}") from err
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **head, **timm_kwargs)
        except (TypeError, ValueError):
            raise
        except Exception as err:  # network, hub or missing-weights errors all mean the same here
            raise RuntimeError(
                f"could not fetch pretrained weights for {name!r} ({type(err).__name__}: {err}). "
                "Offline? Download the weights file elsewhere and pass weights=PATH instead."
            ) from err
    return timm.create_model(name, num_classes=10 if num_classes is None else num_classes, **timm_kwargs)


# --------------------------------------------------------------------------------------------
# Batched inference
# --------------------------------------------------------------------------------------------
def _check_batch(images, labels=None, nonempty: bool = False) -> None:
    """Images (uint8 or float, finite) and, when given, one label per image."""
    _checks.image_batch(images, "images", uint8=True, nonempty=nonempty, finite=True)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be a 1-D tensor with one label per image ({images.shape[0]})")


def _prepare(images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """uint8 -> [0, 1]; then normalise when mean/std are given. One batch at a time, so the
    whole dataset can stay in memory as uint8 (4x smaller than float)."""
    from ranem.data import normalize
    x = images.to(device, non_blocking=True)
    if mean is not None:
        return normalize(x, mean, std)  # uint8 is scaled there without a range check
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256, mean=None, std=None) -> torch.Tensor:
    """Logits over the model's classes, (N, num_classes), on the CPU, batched and without gradients.

    ``images`` are given to the model as they are, except that uint8 images (and any images when
    ``mean``/``std`` are passed) are scaled to [0, 1] and normalised with ``mean``/``std``, which
    default to ``model.ranem_info``'s. An ImageNet head is cut down to the classes' columns
    (``ranem_info['label_index']``).
    """
    _check_batch(images)
    info = getattr(model, "ranem_info", {})
    if images.dtype == torch.uint8 and mean is None:
        if "mean" not in info:
            raise ValueError("uint8 images need mean/std (the model has no ranem_info to take them from)")
        mean, std = info["mean"], info["std"]
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(_prepare(images[i:i + batch_size], mean, std, device)).float().cpu()
                     for i in range(0, images.shape[0], batch_size)])
    model.train(was_training)
    index = info.get("label_index")
    if index is not None and out.shape[1] != len(index):
        out = out[:, torch.as_tensor(index)]
    return out


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             mean=None, std=None) -> float:
    """Top-1 accuracy in [0, 1] (see ``predict`` for how images are fed)."""
    _check_batch(images, labels, nonempty=True)
    preds = predict(model, images, batch_size, mean, std).argmax(1)
    return (preds == labels.cpu()).float().mean().item()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random translations (reflect-pad by ``pad``, crop back),
    each drawn per image but applied to the whole batch at once."""
    b, _, h, w = x.shape
    if flip:
        flipped = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flipped.view(b, 1, 1, 1).to(x.device), x.flip(3), x)
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    return x


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings (1-D tensors and ViT tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_classifier(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                     val_images: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
                     epochs: int = 1, batch_size: int = 64, *, lr: float = RECIPE["lr"],
                     weight_decay: float = RECIPE["weight_decay"],
                     label_smoothing: float = RECIPE["label_smoothing"], crop_pad: int = RECIPE["crop_pad"],
                     flip: bool = True, grad_clip: float | None = None, stop_at: float | None = None,
                     mean=None, std=None, seed: int = RECIPE["seed"], device=None, progress: bool = True) -> dict:
    """Train ``model`` in place: AdamW + one-cycle, label smoothing, flips and random translations
    (optionally gradient-norm clipping at ``grad_clip``). With ``stop_at``, training ends after the
    first epoch whose validation accuracy reaches it (the one-cycle schedule still spans ``epochs``):
    the budget for a classifier that only has to be good enough, not as good as it can get.

    Images are uint8 or float in [0, 1], (N, C, H, W), kept where they are (CPU memory); each
    batch is moved, scaled, normalised with ``mean``/``std`` (default: ImageNet's) and augmented
    on the fly. Returns a history: per-epoch loss / train and val accuracy / seconds, and totals.
    """
    from ranem.data import IMAGENET_MEAN, IMAGENET_STD

    _check_batch(train_images, train_labels)
    if (val_images is None) != (val_labels is None):
        raise ValueError("pass both val_images and val_labels, or neither")
    if val_images is not None:
        _check_batch(val_images, val_labels)
    epochs, batch_size = _checks.integer(epochs, "epochs"), _checks.integer(batch_size, "batch_size")
    if stop_at is not None:
        stop_at = _checks.probability(stop_at, "stop_at")
        if val_images is None:
            raise ValueError("stop_at needs val_images and val_labels to measure the accuracy it stops at")
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    device = torch.device(device) if device is not None else next(model.parameters()).device
    channels_last = device.type == "cpu"  # measured faster for convolutions on CPU
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = train_images.shape[0]
    batch_size = min(batch_size, n)
    steps = n // batch_size  # drop the ragged last batch: BatchNorm dislikes tiny batches
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = {"epochs": []}
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps, desc="train classifier", disable=not progress, leave=False)
    for epoch in range(epochs):
        model.train()
        t0, loss_sum, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(n, generator=gen)
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = _augment(_prepare(train_images[idx], mean, std, device), crop_pad, flip, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        record = {"epoch": epoch + 1, "loss": loss_sum / steps, "train_accuracy": correct / (steps * batch_size)}
        if val_images is not None:
            record["val_accuracy"] = accuracy(model, val_images, val_labels, mean=mean, std=std)
        record["seconds"] = time.perf_counter() - t0
        history["epochs"].append(record)
        bar.write(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in record.items() if k != "epoch"))
        if stop_at is not None and record["val_accuracy"] >= stop_at:
            break
    bar.close()
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    history["train_seconds"] = time.perf_counter() - start
    history["val_accuracy"] = history["epochs"][-1].get("val_accuracy")
    return history


# --------------------------------------------------------------------------------------------
# Old import paths
# --------------------------------------------------------------------------------------------
# The book's cache of classifiers moved to ranem.zoo (and the wheel loader lives in
# ranem.pretrained); this keeps ``from ranem.classifiers import get_classifier`` and the like
# working. Resolved on first use, so this module imports neither of them (no import cycle).
_MOVED = {"get_classifier": "ranem.zoo", "classifier_spec": "ranem.zoo", "cache_key": "ranem.zoo",
          "CACHE_VERSION": "ranem.zoo", "DATASETS": "ranem.zoo", "RECIPES": "ranem.zoo",
          "WHEEL_ARCHITECTURES": "ranem.zoo", "SYNTHETIC_TRAIN_SEED": "ranem.zoo", "SYNTHETIC_VAL_SEED": "ranem.zoo",
          "KINDS": "ranem.zoo", "pretrained_classifier": "ranem.pretrained"}
_RENAMED = {"KINDS": "CLASSIFIER_KINDS"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), _RENAMED.get(name, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
