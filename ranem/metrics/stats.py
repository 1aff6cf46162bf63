"""Timing, significance and the results table of the comparison chapter.

- ``explain_time``: seconds per image at batch size 1, *including* the forward pass that gives the
  label (as the Ra-NEM authors timed), after a warm-up call; plus the batched cost per image.
- ``compare_times``: the same, for several explainers measured round-robin (robust to a busy machine),
  at batch size 1 or per image of a larger batch.
- ``evaluate``: every metric of the comparison (faithfulness with its curves, Average Sensitivity,
  MPRT, time) for one explainer on one model, per image.
- ``wilcoxon``: two-sided paired Wilcoxon signed-rank test through ``scipy.stats.wilcoxon``.
- ``results_table``: mean +/- standard error of every metric for every method, with the
  Wilcoxon p-value of each method against a reference method (Ra-NEM, or per metric the best one).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.stats
import torch

from ranem import _checks

__all__ = ["explain_time", "compare_times", "evaluate", "wilcoxon", "WilcoxonResult", "results_table",
           "ResultsTable", "METRIC_DIRECTIONS"]

# +1: higher is better; -1: lower is better; 0: closer to zero is better (MPRT correlation).
METRIC_DIRECTIONS = {"faithfulness": 1, "insertion": 1, "deletion": -1, "sensitivity": -1, "randomisation": 0,
                     "time": -1, "pointing": 1, "mass_in_mask": 1}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def explain_time(explainer, model, x, repeats: int = 1, warmup: int = 1, batched: bool = True) -> dict:
    """Wall time of ``explainer`` on the images of ``x``.

    An explainer with the attribute ``predicts_label = True`` (Ra-NEM, NEMt) gets the label from its
    own forward pass and is called without one.

    Returns ``per_image`` (mean seconds per image at batch 1, label forward included, each image
    explained ``repeats`` times after ``warmup`` untimed calls), ``per_image_median`` and, when
    ``batched``, ``batched_per_image`` (one call on the whole batch, divided by B) and
    ``images_per_second`` at that batch size.
    """
    from ranem.metrics.robustness import _check_common
    x = _check_common(explainer, model, x)  # the package's dtype rule: x in the model's parameter dtype
    _checks.integer(repeats, "repeats")
    _checks.integer(warmup, "warmup", minimum=0)

    for _ in range(warmup):
        _timed_call(explainer, model, x[:1])
    times = [_timed_call(explainer, model, x[i:i + 1]) for i in range(x.shape[0]) for _ in range(repeats)]
    out = {"per_image": float(np.mean(times)), "per_image_median": float(np.median(times)), "images": x.shape[0]}
    if batched:
        seconds = _timed_call(explainer, model, x)
        out.update(batched_per_image=seconds / x.shape[0], images_per_second=x.shape[0] / seconds)
    return out


def _timed_call(explainer, model, batch) -> float:
    """Seconds of one explanation of ``batch``, the forward that gives the label included (a NEM,
    ``predicts_label = True``, gets it from its own forward and is called without one)."""
    start = time.perf_counter()
    if getattr(explainer, "predicts_label", False):
        explainer(model, batch, None)
    else:
        with torch.no_grad():
            label = model(batch).argmax(dim=1)
        explainer(model, batch, label)
    _sync(batch.device)
    return time.perf_counter() - start


def compare_times(explainers: dict, model, x, rounds: int = 3, warmup: int = 1, batch: int = 1) -> dict:
    """Median seconds per image (label forward included, as ``explain_time``) of several
    explainers, measured round-robin: every round times each explainer once on each batch of
    ``batch`` consecutive images of ``x`` in turn, so a busy machine slows all of them alike
    instead of whichever ran during a burst. ``batch=1`` (the default) is the cost at batch size 1
    that the comparison reports; a larger ``batch`` gives the cost per image when ``batch`` images
    are explained in one call (x must hold at least that many; images after the last whole batch
    are not timed). Returns ``{name: median seconds per image}``."""
    from ranem.baselines._common import model_input
    if not isinstance(explainers, dict) or not explainers or not all(callable(f) for f in explainers.values()):
        raise TypeError("explainers must be a non-empty dict {name: f(model, x, target=None)}")
    x = model_input(model, x)
    _checks.integer(rounds, "rounds")
    _checks.integer(warmup, "warmup", minimum=0)
    batch = _checks.integer(batch, "batch")
    if batch > x.shape[0]:
        raise ValueError(f"batch must be at most the number of images in x ({x.shape[0]}), got {batch}")
    batches = [x[i:i + batch] for i in range(0, x.shape[0] - batch + 1, batch)]
    times = {name: [] for name in explainers}
    for _ in range(warmup):  # untimed calls: first-call costs (allocations, lazy loading) stay out
        for fn in explainers.values():
            _timed_call(fn, model, batches[0])
    for _ in range(rounds):
        for part in batches:
            for name, fn in explainers.items():
                times[name].append(_timed_call(fn, model, part) / part.shape[0])
    return {name: float(np.median(t)) for name, t in times.items()}


def evaluate(explainer, model, x, target=None, *, steps: int | None = None, robust: int = 0,
             sensitivity_samples: int = 30, time_images: int = 0, explain_batch: int = 16, seed: int = 0,
             curve_batch: int = 256) -> dict:
    """Every metric of the comparison for one explainer on one model, per image.

    Returns a dict: ``attribution`` (B, H, W), ``explain_seconds`` (batched seconds per image),
    ``faithfulness`` (B,), ``insertion`` / ``deletion`` curves (B, steps + 1) (insertion on blur,
    deletion on zeros, ``steps`` points as ``ranem.metrics.faithfulness``); with ``robust`` > 0,
    ``sensitivity`` and ``randomisation`` (MPRT, fully randomised) on the first ``robust`` images;
    with ``time_images`` > 0, ``time`` = seconds per image at batch 1 (``explain_time``).
    ``explain_batch`` bounds how many images one explainer call receives (16: at 144 px, 64 made
    Grad-SHAP and IBA peak at 12 GB, 16 at under 4 GB; see benchmarks/memory.py). x is cast to the model's
    parameter dtype first; maps that are not finite (B, H, W) tensors raise a ValueError.
    """
    from ranem.baselines._common import resolve_target
    from ranem.metrics.curves import faithfulness
    from ranem.metrics.robustness import _check_common, _explain_in_batches, avg_sensitivity, mprt
    x = _check_common(explainer, model, x)
    _checks.integer(explain_batch, "explain_batch")
    _checks.integer(robust, "robust", minimum=0)
    _checks.integer(time_images, "time_images", minimum=0)
    target = resolve_target(model, x, target)
    out = {}
    start = time.perf_counter()
    maps = _explain_in_batches(explainer, model, x, target, explain_batch)
    _sync(x.device)
    out["explain_seconds"] = (time.perf_counter() - start) / x.shape[0]
    out["attribution"] = maps
    out["faithfulness"], out["insertion"], out["deletion"] = faithfulness(  # runs under inference mode
        model, x, maps, steps=steps, target=target, batch_size=curve_batch, return_curves=True)
    if robust:
        xr, tr = x[:robust], target[:robust]
        out["sensitivity"] = avg_sensitivity(explainer, model, xr, tr, samples=sensitivity_samples, seed=seed,
                                             batch_size=explain_batch)
        out["randomisation"] = mprt(explainer, model, xr, tr, seed=seed, batch_size=explain_batch)
    if time_images:
        out["time"] = explain_time(explainer, model, x[:time_images], batched=False)["per_image"]
    return out


@dataclass(frozen=True)
class WilcoxonResult:
    statistic: float
    pvalue: float
    n: int  # pairs used (NaN pairs dropped)


def _as_array(v, name: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().double().numpy()
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D array of numbers, got {type(v).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per image), got shape {arr.shape}")
    return arr


def wilcoxon(a, b) -> WilcoxonResult:
    """Two-sided paired Wilcoxon signed-rank test of ``a`` against ``b`` (one value per image).
    Pairs with a NaN are dropped; identical samples give p = 1."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got {a.shape[0]} and {b.shape[0]}")
    if np.isinf(a).any() or np.isinf(b).any():  # NaN marks a missing pair; inf has no rank difference
        raise ValueError("a and b must not contain inf (NaN pairs are dropped)")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size == 0:
        raise ValueError("a and b have no pair without NaN")
    if np.all(a == b):
        return WilcoxonResult(0.0, 1.0, int(a.size))
    res = scipy.stats.wilcoxon(a, b, alternative="two-sided")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), int(a.size))


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


@dataclass
class ResultsTable:
    """Mean, standard error and p-value per (method, metric); renders as text, Markdown or HTML."""

    methods: list
    metrics: list
    mean: dict = field(default_factory=dict)  # (method, metric) -> float
    sem: dict = field(default_factory=dict)
    pvalue: dict = field(default_factory=dict)  # (method, metric) -> p against the reference
    reference: dict = field(default_factory=dict)  # metric -> reference method

    def cell(self, method: str, metric: str) -> str:
        m = self.mean.get((method, metric), float("nan"))
        if math.isnan(m):
            return "n/a"
        digits = 4 if metric == "time" else 3
        text = f"{m:.{digits}f}"
        s = self.sem.get((method, metric), float("nan"))
        if not math.isnan(s):
            text += f" ± {s:.{digits}f}"
        if self.reference.get(metric) == method:
            return text + " (ref)"
        p = self.pvalue.get((method, metric))
        return text + (_stars(p) if p is not None else "")

    def _header(self) -> list:
        arrows = {1: "↑", -1: "↓", 0: "→0"}
        return ["method"] + [f"{k} {arrows[METRIC_DIRECTIONS.get(k, 1)]}" for k in self.metrics]

    def to_markdown(self) -> str:
        rows = ["| " + " | ".join(self._header()) + " |", "|" + "---|" * (len(self.metrics) + 1)]
        rows += ["| " + " | ".join([m] + [self.cell(m, k) for k in self.metrics]) + " |" for m in self.methods]
        return "\n".join(rows)

    def __str__(self) -> str:
        table = [self._header()] + [[m] + [self.cell(m, k) for k in self.metrics] for m in self.methods]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
        return "\n".join(lines) + "\n(mean ± standard error; * p<0.05, ** p<0.01, *** p<0.001: two-sided paired " \
            "Wilcoxon against the row marked ref)"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self._header())
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in [m] + [self.cell(m, k) for k in self.metrics])
                       + "</tr>" for m in self.methods)
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                "<p>mean ± standard error; * p&lt;0.05, ** p&lt;0.01, *** p&lt;0.001: two-sided paired "
                "Wilcoxon test against the row marked (ref)</p>")


def _best(means: dict, direction: int) -> str:
    valid = {k: v for k, v in means.items() if not math.isnan(v)}
    if not valid:
        return ""
    key = {1: lambda k: -valid[k], -1: lambda k: valid[k], 0: lambda k: abs(valid[k])}[direction]
    return min(valid, key=key)


def results_table(results: dict, metrics=None, reference: str | None = "best") -> ResultsTable:
    """Build the results table from ``results[method][metric]`` = per-image values (array/tensor) or
    a single number. ``reference``: a method name (e.g. "Ra-NEM"), "best" (per metric the method
    with the best mean) or None (no tests). Per-image metrics of the same length are tested
    against the reference with ``wilcoxon``; single numbers (e.g. time) are only reported."""
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict {method: {metric: values}}")
    methods = list(results)
    if metrics is None:
        metrics = list(dict.fromkeys(k for r in results.values() for k in r))
    if reference not in (None, "best") and reference not in results:
        raise ValueError(f"reference must be None, 'best' or one of the methods {methods}, got {reference!r}")
    table = ResultsTable(methods=methods, metrics=list(metrics))
    values = {}
    for method in methods:
        for metric in metrics:
            v = results[method].get(metric)
            arr = np.array([np.nan]) if v is None else np.atleast_1d(_as_array(np.ravel(
                v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=float)), metric))
            values[method, metric] = arr
            finite = arr[~np.isnan(arr)]
            table.mean[method, metric] = float(finite.mean()) if finite.size else float("nan")
            table.sem[method, metric] = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 \
                else float("nan")
    for metric in metrics:
        direction = METRIC_DIRECTIONS.get(metric, 1)
        ref = _best({m: table.mean[m, metric] for m in methods}, direction) if reference == "best" else reference
        if not ref:
            continue
        table.reference[metric] = ref
        for method in methods:
            a, b = values[method, metric], values[ref, metric]
            if method == ref or a.size < 2 or a.shape != b.shape:
                continue
            if not np.any(~np.isnan(a) & ~np.isnan(b)):  # e.g. MPRT of constant maps: nothing to test
                continue
            if direction == 0:
                a, b = np.abs(a), np.abs(b)
            table.pvalue[method, metric] = wilcoxon(a, b).pvalue
    return table
