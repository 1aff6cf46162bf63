"""The book's cached evaluations: every metric of one explainer on one classifier's images, computed once.

``get_evaluation(method, model, x, settings, **options)`` is ``ranem.metrics.evaluate`` of the
registered explainer ``method`` behind a cache, ``config.cache_dir()/evaluations/<classifier key>-
<method>-<digest>.safetensors``: chapters that score the same method on the same classifier and
images with the same options (chapters 6, 8, 10 and 11 pass ``book_protocol``) compute it once. The
digest covers everything the result depends on, the package's code included
(``ranem.cache.code_digest``), so any change of code recomputes it. One process computes an entry
while others wait for it (``ranem.cache.training_lock``).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import safetensors.torch
import torch

from ranem import _checks, config
from ranem.cache import CacheError, atomic_write, code_digest, read_safetensors, tensors_sha256, training_lock

__all__ = ["book_protocol", "get_evaluation"]


def book_protocol(settings=None, seed: int = 0) -> dict:
    """The book's evaluation options for ``get_evaluation``: curves of ``settings.curve_steps`` steps;
    Average Sensitivity (``settings.sensitivity_samples`` samples) and MPRT on the first
    ``settings.n_robust`` images. Chapters that pass these share their cached entries."""
    s = settings if settings is not None else config.settings()
    return dict(steps=s.curve_steps, robust=s.n_robust, sensitivity_samples=s.sensitivity_samples,
                seed=_checks.integer(seed, "seed", minimum=0))


def get_evaluation(method: str, model, x, settings=None, **options) -> dict:
    """``ranem.metrics.evaluate(get_explainer(method, settings=settings), model, x, **options)``,
    cached under ``config.cache_dir()/evaluations``: loaded when the same method (with the cost
    options of ``settings``), the same classifier (its cache key), the same images (their bytes), the
    same options and the same package code were evaluated before. The result also holds
    ``seconds``, the wall-clock time the evaluation took when it was computed. Batch-1 timing
    (``time_images``) is a measurement of this machine now, so it is refused: time separately."""
    from ranem.baselines import canonical_name, get_explainer
    from ranem.metrics import evaluate
    if options.get("time_images"):
        raise ValueError("get_evaluation caches results, not timings: drop time_images and time with "
                         "ranem.metrics.explain_time or compare_times")
    info = getattr(model, "ranem_info", None) or {}
    if "key" not in info:
        raise ValueError("model must be one of the book's classifiers (from get_classifier, which records its "
                         "cache key); evaluate another model with ranem.metrics.evaluate")
    s = settings if settings is not None else config.settings()
    name = canonical_name(method)
    options_id = {k: tensors_sha256({k: v}) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    spec = {"method": name, "classifier": info["key"], "images": tensors_sha256({"x": x}),
            "settings": s.as_dict(), "options": options_id, "code": code_digest()}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = config.cache_dir() / "evaluations" / f"{info['key']}-{name}-{digest}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        with training_lock(path.with_suffix(".lock")):
            if not path.is_file():
                start = time.perf_counter()
                result = evaluate(get_explainer(name, settings=s), model, x, **options)
                result["seconds"] = time.perf_counter() - start
                _save_evaluation(path, result)
    return _load_evaluation(path, x.device)


def _save_evaluation(path: Path, result: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.items() if isinstance(v, torch.Tensor)}
    numbers = {k: float(v) for k, v in result.items() if not isinstance(v, torch.Tensor)}
    meta = {"numbers": json.dumps(numbers), "sha256": tensors_sha256(tensors)}
    atomic_write(path, lambda p: safetensors.torch.save_file(tensors, p, metadata=meta))


def _load_evaluation(path: Path, device) -> dict:
    rebuild = f"delete {path} to compute it again"
    tensors, meta = read_safetensors(path, rebuild)
    if tensors_sha256(tensors) != meta.get("sha256"):
        raise CacheError(f"{path} does not match the SHA-256 recorded when it was written; {rebuild}")
    return {**{k: v.to(device) for k, v in tensors.items()}, **json.loads(meta["numbers"])}
