"""Run-to-run spread, and whether a difference between two settings exceeds it.

The paper's Tables 8 and 9 report one number per run. To say whether a change (another number of
samples per image, another seed) moves faithfulness by more than noise, a chapter needs the spread
of the numbers it compares:

- ``spread(values)``: mean, sample standard deviation, standard error, extremes of a few runs
  (seeds) or of many images;
- ``compare_spread(a, b, z=2)``: the difference of two means against the standard error of that
  difference, and whether it exceeds ``z`` of them (two error bars of independent estimates);
- ``pooled(results, metrics)``: one method's results on several classifiers as one sample (the
  paper's Table 1 pools its four models): per-image values concatenated, single numbers averaged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Spread", "spread", "Comparison", "compare_spread", "pooled"]


@dataclass(frozen=True)
class Spread:
    """Summary of one sample: ``n`` values, their ``mean``, ``std`` (ddof 1), ``sem`` = std / sqrt(n),
    ``low`` and ``high`` (min and max). ``std`` and ``sem`` are NaN for a single value."""

    n: int
    mean: float
    std: float
    sem: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sem:.3f} (sd {self.std:.3f}, n = {self.n}, range {self.low:.3f}-{self.high:.3f})"


def _values(values, name: str = "values") -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        raise ValueError(f"{name} holds no number that is not NaN")
    if np.isinf(arr).any():
        raise ValueError(f"{name} must be finite")
    return arr


def spread(values) -> Spread:
    """Mean, standard deviation (ddof 1), standard error and range of ``values`` (NaN dropped)."""
    arr = _values(values)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return Spread(int(arr.size), float(arr.mean()), std, std / math.sqrt(arr.size), float(arr.min()), float(arr.max()))


@dataclass(frozen=True)
class Comparison:
    """``difference`` = mean of b - mean of a; ``error`` = sqrt(sem_a^2 + sem_b^2), its standard
    error for independent samples; ``ratio`` = difference / error; ``exceeds``: ``abs(ratio) > z``."""

    difference: float
    error: float
    ratio: float
    z: float
    exceeds: bool

    def __str__(self) -> str:
        verdict = "exceeds" if self.exceeds else "does not exceed"
        return (f"difference {self.difference:+.3f}, {abs(self.ratio):.1f} standard errors "
                f"({verdict} {self.z:g})")


def compare_spread(a, b, z: float = 2.0) -> Comparison:
    """Does the mean of ``b`` differ from the mean of ``a`` by more than ``z`` standard errors of
    the difference? ``a`` and ``b``: values (per seed or per image) or ``Spread`` summaries.
    With a single value on either side the error is that of the other side alone; with a single
    value on both sides it is NaN and nothing exceeds it."""
    if not (isinstance(z, (int, float)) and z > 0):
        raise ValueError(f"z must be a positive number, got {z!r}")
    sa = a if isinstance(a, Spread) else spread(a)
    sb = b if isinstance(b, Spread) else spread(b)
    parts = [s.sem ** 2 for s in (sa, sb) if not math.isnan(s.sem)]
    error = math.sqrt(sum(parts)) if parts else float("nan")
    diff = sb.mean - sa.mean
    ratio = diff / error if error > 0 else (float("nan") if math.isnan(error) or diff == 0 else math.copysign(math.inf, diff))
    exceeds = bool(not math.isnan(ratio) and abs(ratio) > z)
    return Comparison(diff, error, ratio, float(z), exceeds)


def pooled(results, metrics) -> dict:
    """``{metric: values}`` of one method pooled over several runs (one per classifier):
    ``results`` is a list of ``evaluate``-style dicts; a metric held per image (a 1-D array or
    tensor) is concatenated over the runs, a single number (time) is averaged. The result feeds
    ``results_table`` like one run's."""
    results = list(results)
    if not results or not all(isinstance(r, dict) for r in results):
        raise ValueError("results must be a non-empty list of dicts {metric: values}")
    out = {}
    for metric in metrics:
        parts = [r[metric] for r in results]
        arrays = [np.atleast_1d(p.detach().cpu().double().numpy() if isinstance(p, torch.Tensor)
                                else np.asarray(p, dtype=np.float64)) for p in parts]
        if any(a.ndim != 1 for a in arrays):
            raise ValueError(f"{metric}: expected one value per image (1-D) or a single number in every run")
        if all(np.ndim(p) == 0 or (isinstance(p, torch.Tensor) and p.ndim == 0) for p in parts):
            out[metric] = float(np.mean([a[0] for a in arrays]))
        else:
            out[metric] = np.concatenate(arrays)
    return out
