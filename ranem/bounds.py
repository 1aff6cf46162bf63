"""How many curve points does a Monte-Carlo AUC need? The bounds of the paper's Appendix A.

The Monte-Carlo AUC is the mean of n values drawn *without replacement* from the finite population
C = {c(1), ..., c(d)} of curve points; its target is the population mean mu (the exact AUC in the
form of eq. 2). Three bounds on ``P(|estimate - mu| > t)``, each also inverted into the smallest n that
makes the bound at most delta:

- ``serfling``: Serfling (1974), Corollary 1.1, applied to both tails (the paper's Theorem A.1):
  ``2 exp(-2 n t^2 / ((1 - f*) r^2))`` with ``f* = (n-1)/d`` and ``r = b - a`` the population's range.
  Serfling's exponent has ``r**2``; the paper prints ``r``. The two agree only for r = 1, and the
  printed form is not invariant to rescaling the scores (it is too optimistic when r > 1 and too
  pessimistic when r < 1). ``paper_form=True`` gives the printed form, for comparison only.
- ``variance``: Chebyshev's inequality with the variance of the mean of a sample without
  replacement (Serfling's eq. 1.4; the paper's Corollary A.2): ``(1 - f) s^2 / (n t^2)`` with
  ``f = (n-1)/(d-1)`` and ``s^2`` the population variance (divisor d). Chebyshev already bounds
  both tails; the paper's extra factor 2 (``paper_form=True``) is valid but loose.
- ``hoeffding``: Hoeffding (1963), ``2 exp(-2 n t^2 / r^2)``; it holds without replacement too
  (his Theorem 4) but ignores that the population is finite, so it never reaches 0 at n = d.

All functions take scalars or NumPy arrays (broadcast) and return floats / arrays; probability
bounds are clipped to [0, 1].
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "serfling_bound",
    "variance_bound",
    "hoeffding_bound",
    "n_needed",
    "population_stats",
    "BOUNDS",
]

BOUNDS = ("serfling", "variance", "hoeffding")


# ----------------------------------------------------------------------------- validation
def _array(value, name: str, low=None, low_inclusive=True, integer=False) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None:
        bad = arr < low if low_inclusive else arr <= low
        if np.any(bad):
            raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value!r}")
    if integer and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return arr


def _sizes(n, d):
    n = _array(n, "n", low=1, integer=True)
    d = _array(d, "d", low=1, integer=True)
    if np.any(n > d):
        raise ValueError(f"n must be at most d (sampling without replacement), got n={n!r}, d={d!r}")
    return n, d


def _out(arr):
    return float(arr) if np.ndim(arr) == 0 else arr


# ----------------------------------------------------------------------------- bounds
def serfling_bound(t, n, d, value_range=1.0, paper_form: bool = False):
    """Two-sided Serfling bound on ``P(|mean of n of d without replacement - mu| > t)``.

    ``value_range`` = b - a, the population's max minus min (at most 1 for probability scores).
    """
    t = _array(t, "t", low=0, low_inclusive=False)
    n, d = _sizes(n, d)
    r = _array(value_range, "value_range", low=0, low_inclusive=False)
    scale = r if paper_form else r**2
    f_star = (n - 1) / d
    return _out(np.minimum(1.0, 2.0 * np.exp(-2.0 * n * t**2 / ((1.0 - f_star) * scale))))


def variance_bound(t, n, d, variance, paper_form: bool = False):
    """Chebyshev bound with the finite-population variance: (1 - f) s^2 / (n t^2), f = (n-1)/(d-1).

    ``variance`` = s^2, the population variance with divisor d. ``paper_form`` doubles it.
    """
    t = _array(t, "t", low=0, low_inclusive=False)
    n, d = _sizes(n, d)
    s2 = _array(variance, "variance", low=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(d > 1, (n - 1) / np.maximum(d - 1, 1), 1.0)  # d = 1: the one value is the mean
    bound = (2.0 if paper_form else 1.0) * (1.0 - f) * s2 / (n * t**2)
    return _out(np.minimum(1.0, bound))


def hoeffding_bound(t, n, value_range=1.0):
    """Two-sided Hoeffding bound 2 exp(-2 n t^2 / r^2); needs no population size."""
    t = _array(t, "t", low=0, low_inclusive=False)
    n = _array(n, "n", low=1, integer=True)
    r = _array(value_range, "value_range", low=0, low_inclusive=False)
    return _out(np.minimum(1.0, 2.0 * np.exp(-2.0 * n * t**2 / r**2)))


def n_needed(t, delta, d=None, value_range=1.0, bound: str = "serfling", variance=None,
             paper_form: bool = False):
    """Smallest n with bound(t, n) <= delta, i.e. error at most t with confidence 1 - delta.

    Closed forms (L = ln(2/delta), r = value_range):
    serfling  n >= L r^2 (d+1) / (2 t^2 d + L r^2)     (r instead of r^2 with ``paper_form``)
    variance  n >= d s^2 / (delta t^2 (d-1) + s^2)     (2 s^2 with ``paper_form``)
    hoeffding n >= L r^2 / (2 t^2)
    The finite-population bounds never ask for more than d (n = d gives the exact mean);
    Hoeffding knows no d, so its answer may exceed the population, which is the point of it.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    t = _array(t, "t", low=0, low_inclusive=False)
    delta = _array(delta, "delta", low=0, low_inclusive=False)
    if np.any(delta >= 1):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    r = _array(value_range, "value_range", low=0, low_inclusive=False)
    if bound == "hoeffding":
        return _ceil(np.log(2.0 / delta) * r**2 / (2.0 * t**2))
    if d is None:
        raise ValueError(f"bound={bound!r} needs the population size d")
    d = _array(d, "d", low=1, integer=True)
    if bound == "serfling":
        log_term = np.log(2.0 / delta) * (r if paper_form else r**2)
        n = log_term * (d + 1) / (2.0 * t**2 * d + log_term)
    else:
        if variance is None:
            raise ValueError("bound='variance' needs the population variance (variance=s^2)")
        s2 = (2.0 if paper_form else 1.0) * _array(variance, "variance", low=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(s2 > 0, d * s2 / (delta * t**2 * (d - 1) + s2), 1.0)
    return _ceil(np.minimum(n, d))


def _ceil(n):
    # A tiny relative slack keeps exact integers (e.g. 8.000000000001 from rounding) from rounding up.
    out = np.maximum(1, np.ceil(n * (1 - 1e-12))).astype(np.int64)
    return int(out) if np.ndim(out) == 0 else out


def population_stats(values):
    """(range b - a, variance s^2 with divisor d) of populations along the last axis.

    For a curve (B, d+1) from ``ranem.metrics`` pass ``curve[:, 1:]``, the points the Monte-Carlo
    estimate draws from. Accepts arrays or tensors; returns NumPy.
    """
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"values must have at least one element along the last axis, got shape {arr.shape}")
    return _out(arr.max(-1) - arr.min(-1)), _out(arr.var(-1))
