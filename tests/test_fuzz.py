"""Fuzz of the public API of ranem.ops, ranem.metrics and the baselines (issue 14).

Every call gets inputs drawn by hypothesis, valid ones and broken ones alike: NaN/inf values, wrong
ndim, integer or low-precision dtypes, empty batches, mismatched batch sizes, k out of range,
unknown names and devices, NaN/inf options, explainers that return garbage. A call passes when it

- raises a TypeError or ValueError (a clear refusal; its message must not be empty), or
- returns a result of the expected shape without NaN or inf (where NaN is documented, as for the
  Spearman correlation of a constant map, only there),

and, when its input was broken in a way the function must notice (a NaN image for a metric), it did
refuse. Anything else fails the test: a deep crash (RuntimeError, IndexError...), a wrong shape, a
silent NaN or a silent answer to a broken input.

Budget: about 2,700 calls in 15-20 s on 2 busy cores, well under 40 s (tiny tensors, small
max_examples, no deadline). Runs are
derandomised so that the suite is repeatable; RANEM_FUZZ_RANDOM=1 explores fresh examples,
RANEM_FUZZ_SCALE=10 ten times as many, and ``pytest -s`` prints the tally (calls, clear errors,
results).
"""
from __future__ import annotations

import collections
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ranem import ops
from ranem import metrics
from ranem.baselines import (find_target_layer, grad_cam_pp, gradient_shap, input_statistics, integrated_gradients,
                             iba, rise, rise_masks, saliency, smooth_pixel_mask)
from ranem.baselines.extremal import area_loss, smooth_mask_from_params
from ranem.baselines.iba import bottleneck_capacity

torch.set_num_threads(1)

TALLY = collections.Counter()


def fuzz(examples: int):
    scale = float(os.environ.get("RANEM_FUZZ_SCALE", 1))  # e.g. 10 for a deeper search
    return settings(max_examples=max(1, int(examples * scale)), deadline=None, database=None,
                    derandomize=not os.environ.get("RANEM_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- the call checker
class SilentWrongAnswer(AssertionError):
    pass


def _check_value(out, shape, nan_rows):
    if shape is not None:
        assert isinstance(out, torch.Tensor), f"expected a tensor, got {type(out).__name__}"
        assert tuple(out.shape) == tuple(shape), f"wrong shape {tuple(out.shape)}, expected {tuple(shape)}"
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        bad = ~torch.isfinite(out)
        if nan_rows is not None and bad.any():  # NaN is documented for these rows only
            bad = bad & ~nan_rows.view(-1, *([1] * (out.ndim - 1))).expand_as(out)
        assert not bad.any(), f"silent NaN/inf in the output: {out}"


def call(fn, *args, shape=None, must_fail=False, valid=False, nan_rows=None, **kwargs):
    """Call fn and judge the outcome (see the module docstring); return the result or None.
    ``must_fail``: the input is broken and fn must refuse it; ``valid``: it is fine and fn must
    answer it (so that refusing everything cannot pass)."""
    TALLY["calls"] += 1
    try:
        out = fn(*args, **kwargs)
    except (TypeError, ValueError) as err:
        TALLY["clear errors"] += 1
        assert str(err).strip(), f"{fn.__name__} raised {type(err).__name__} without a message"
        assert not valid, f"{fn.__name__} refused a valid input: {err}"
        return None
    TALLY["results"] += 1
    if must_fail:
        TALLY["silent wrong answers"] += 1
        raise SilentWrongAnswer(f"{fn.__name__} answered a broken input instead of refusing it")
    shapes = shape if isinstance(out, tuple) and isinstance(shape, list) else [shape]
    outs = out if isinstance(out, tuple) and isinstance(shape, list) else (out,)
    for o, s in zip(outs, shapes):
        _check_value(o, s, nan_rows)
    return out


# ----------------------------------------------------------------------------- a tiny model
class Tiny(nn.Module):
    """Two convolutions, global average pool, linear head: three classes, any image size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


MODEL = Tiny().eval()
CLASSES = 3


# ----------------------------------------------------------------------------- strategies
DTYPES = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64]
BROKEN_IMAGES = ["nan", "inf", "int", "3d", "list"]
NUMBERS = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e30]))
# Broken values of options (no huge counts: those are valid, only slow or memory-hungry).
BAD_OPTIONS = st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, "a", None, True, 2.5])


@st.composite
def images(draw, max_b=3, max_side=7, broken=True):
    """(x, flaw): a batch of images and what is wrong with it ("" = nothing, "empty" = B 0)."""
    b = draw(st.integers(0 if broken else 1, max_b))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**16))
    x = (torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * scale).to(draw(st.sampled_from(DTYPES)))
    flaw = draw(st.sampled_from([""] * 8 + BROKEN_IMAGES)) if broken else ""
    if flaw in ("nan", "inf") and b:
        x = x.clone()
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float(flaw)
    elif flaw == "int":
        x = x.to(torch.int64)
    elif flaw == "3d":
        x = x[:, 0]
    elif flaw == "list":
        x = x.tolist()
    else:
        flaw = flaw if b else "empty"
    return x, ("empty" if not b else flaw if flaw in BROKEN_IMAGES else "")


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) and x.ndim == 4 else (1, 3, 4, 4)


@st.composite
def maps_for(draw, x, broken=True):
    """(attribution, flaw) for images x: (B, H, W) floats, sometimes broken."""
    b, _, h, w = _shape(x)
    a = torch.randn(b, h, w, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    kind = draw(st.sampled_from(["float"] * 6 + ["ties", "int", "bool"] + (["nan", "shape", "complex"] if broken else [])))
    if kind == "ties":
        a = a.round()
    elif kind == "int":
        a = (a * 3).long()
    elif kind == "bool":
        a = a > 0
    elif kind == "nan" and a.numel():
        a.view(-1)[0] = math.nan
    elif kind == "shape":
        a = a[:, :, :-1] if w > 1 else a[:, None]
    elif kind == "complex":
        a = a.to(torch.complex64)
    return a, kind if kind in ("nan", "shape", "complex") and a.numel() else ""


def targets():
    return st.one_of(st.none(), st.integers(-1, CLASSES + 1), st.sampled_from([[0], [1, 2, 0], 1.5, True, "cat"]))


def _target_ok(target, b) -> bool:
    if target is None:
        return True
    if isinstance(target, bool) or not isinstance(target, (int, list)):
        return False
    values = [target] if isinstance(target, int) else target
    return all(0 <= v < CLASSES for v in values) and len(values) in (1, b)


def _cast(x):
    return x.to(torch.float32)


# ============================================================================= ranem.ops
@fuzz(120)
@given(images(), st.sampled_from(sorted(ops.SUBSTRATES)))
def test_substrates(xf, name):
    x, flaw = xf
    call(ops.get_substrate(name), x, shape=_shape(x) if not flaw else None, valid=not flaw,
         must_fail=flaw in ("int", "3d", "list") or (flaw in ("nan", "inf") and name != "zeros"))


@fuzz(60)
@given(st.one_of(st.integers(-2, 9), BAD_OPTIONS), st.one_of(st.floats(0.01, 10), BAD_OPTIONS),
       st.sampled_from([None, "cpu", "cuda", "gpu7"]))
def test_gaussian_kernel(size, sigma, device):
    ok = isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % 2
    call(ops.gaussian_kernel, size, sigma, device=device, shape=(size, size) if ok else None)


@fuzz(80)
@given(st.one_of(st.lists(st.integers(-1, 4), max_size=3), st.integers(-1, 5), st.just("x")),
       st.sampled_from([None, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, "f"]),
       st.sampled_from([None, "cpu", "cuda:0", "tpu", 3]))
def test_gumbel(shape, dtype, device):
    expected = None
    if isinstance(shape, list) and all(s >= 0 for s in shape):
        expected = tuple(shape)
    elif isinstance(shape, int) and shape >= 0:
        expected = (shape,)
    call(ops.gumbel, shape, dtype=dtype, device=device, shape=expected)


def _logits(draw, shape):
    scale = draw(st.sampled_from([1.0, 1e4, 6e4, 1e38, 3e38]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))), dtype=torch.float64)
    # Finite in the drawn dtype: +-6e4 in half precision (the operator's documented range), else
    # up to the dtype's largest value, so that rows span more than the float32 range.
    top = 6e4 if dtype in (torch.float16, torch.bfloat16) else torch.finfo(dtype).max
    return (t * scale).clamp(-top, top).to(dtype)


@fuzz(80)
@given(st.data())
def test_gumbel_topk(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    logits = _logits(data.draw, shape)
    k = data.draw(st.one_of(st.integers(-1, shape[-1] + 1), st.sampled_from([2.5, math.nan, True, "2"])))
    ok = isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= shape[-1]
    out = call(ops.gumbel_topk, logits, k, shape=shape[:-1] + (k,) if ok else None, must_fail=not ok)
    if out is not None:
        assert (out.sort(-1).values.diff(dim=-1) != 0).all(), "indices must be distinct"


@fuzz(240)
@given(st.data())
def test_omega(data):
    x, flaw = data.draw(images(max_b=3, max_side=6))
    b, _, h, w = _shape(x)
    d = h * w
    scores = _logits(data.draw, (b, h, w))
    score_flaw = data.draw(st.sampled_from([""] * 6 + ["flat", "batch", "nan"]))
    if score_flaw == "flat":
        scores = scores.flatten(1)
        score_flaw = ""
    elif score_flaw == "batch":
        scores = scores[:1] if b > 1 else torch.cat([scores, scores])
    elif score_flaw == "nan" and scores.numel():
        scores = scores.clone()
        scores.view(-1)[0] = math.nan
    else:
        score_flaw = ""
    k = data.draw(st.one_of(st.integers(-1, d + 1), st.sampled_from([2.7, math.nan, "per-row", "per-row"])))
    if k == "per-row":
        k = torch.tensor(data.draw(st.lists(st.integers(0, d + 1), min_size=b, max_size=b)), dtype=torch.long)
    sub = data.draw(st.sampled_from(["zeros", "blur", "noise", "tensor", "tensor-batch-1", "callable-batch-1",
                                     "nan-tensor", "grey"]))
    substrate = {"tensor": torch.zeros(_shape(x)), "tensor-batch-1": torch.zeros((1,) + _shape(x)[1:]),
                 "callable-batch-1": lambda x_, g: torch.zeros((1,) + tuple(x_.shape[1:]), dtype=x_.dtype),
                 "nan-tensor": torch.full(_shape(x), math.nan)}.get(sub, sub)
    if isinstance(substrate, torch.Tensor) and isinstance(x, torch.Tensor) and x.is_floating_point():
        substrate = substrate.to(x.dtype)
    k_ok = (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= d) or \
        (isinstance(k, torch.Tensor) and bool(((k >= 1) & (k <= d)).all()))
    batch1 = sub in ("tensor-batch-1", "callable-batch-1") and b > 1
    broken = bool(flaw) or bool(score_flaw) or not k_ok or batch1 or sub in ("nan-tensor", "grey")
    noise = data.draw(st.booleans())
    out = call(ops.omega, x, scores, k, substrate, noise=noise, must_fail=broken, valid=not broken,
               shape=None if broken else [(b, 3, h, w), (b, h, w)])
    if out is not None:
        mask = out[1].float().flatten(1)
        want = k if isinstance(k, torch.Tensor) else torch.full((b,), k)
        assert torch.equal(mask.sum(1).long(), want), "exactly k pixels kept per row"


@fuzz(80)
@given(st.one_of(st.integers(-1, 50), BAD_OPTIONS), st.one_of(st.integers(-1, 6), BAD_OPTIONS), st.booleans(),
       st.one_of(st.none(), st.integers(-1, 3), st.just(1.5)), st.sampled_from([None, "cpu", "cuda", "nope"]))
def test_sample_k(d, samples, stratified, batch, device):
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (d, samples)) and \
        (batch is None or (isinstance(batch, int) and batch >= 1)) and device in (None, "cpu")
    expected = ((samples,) if batch is None else (batch, samples)) if ok else None
    out = call(ops.sample_k, d, samples, stratified=stratified, batch=batch, device=device, shape=expected)
    if out is not None:
        assert out.min() >= 1 and out.max() <= d


@fuzz(60)
@given(st.data())
def test_gumbel_softmax_k(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=2)))
    logits = _logits(data.draw, shape)
    k = data.draw(st.one_of(st.integers(0, shape[-1] + 1), st.just(1.5)))
    tau = data.draw(st.one_of(st.floats(1e-3, 5), BAD_OPTIONS, st.just(1e-320)))
    out = call(ops.gumbel_softmax_k, logits, k, tau=tau, shape=shape)
    if out is not None:
        assert (out >= 0).all() and (out <= 1 + 1e-3).all()


# ============================================================================= ranem.metrics: curves
def _expected_points(d, w, steps, pps):
    if steps is None and pps is None:
        pps = w
    if pps is not None:
        return math.ceil(d / pps) + 1
    return steps + 1


@fuzz(120)
@given(st.data())
def test_curves(data):
    x, flaw = data.draw(images(max_b=2, max_side=5))
    attribution, a_flaw = data.draw(maps_for(x))
    b, _, h, w = _shape(x)
    steps = data.draw(st.one_of(st.none(), st.integers(1, 6), st.sampled_from([0, 2.5])))
    pps = None if steps is not None else data.draw(st.one_of(st.none(), st.integers(1, 5), st.just(0)))
    substrate = data.draw(st.sampled_from(["blur", "zeros", "noise", "grey", None]))
    target = data.draw(targets())
    which = data.draw(st.sampled_from(["insertion", "deletion", "faithfulness", "faithfulness+curves", "mc"]))
    ok_counts = (steps is None or (isinstance(steps, int) and steps >= 1)) and (pps is None or pps >= 1)
    ok = not flaw and not a_flaw and ok_counts and _target_ok(target, b) and substrate in ("blur", "zeros", "noise")
    points = _expected_points(h * w, w, steps, pps) if ok else None
    kw = dict(steps=steps, pixels_per_step=pps, target=target, batch_size=data.draw(st.sampled_from([1, 7, 256])))
    gen = torch.Generator().manual_seed(0)
    must_fail = flaw in BROKEN_IMAGES + ["empty"] or bool(a_flaw)
    if which in ("insertion", "deletion"):
        fn = metrics.insertion_curve if which == "insertion" else metrics.deletion_curve
        call(fn, MODEL, x, attribution, substrate=substrate, generator=gen, shape=(b, points) if ok else None,
             must_fail=must_fail, valid=ok, **kw)
    elif which.startswith("faithfulness"):
        curves = which.endswith("curves")
        call(metrics.faithfulness, MODEL, x, attribution, insertion_substrate=substrate, generator=gen,
             return_curves=curves, shape=([(b,), (b, points), (b, points)] if curves else (b,)) if ok else None,
             must_fail=must_fail, valid=ok, **kw)
    else:
        n = data.draw(st.integers(0, 4))
        kind = data.draw(st.sampled_from(["insertion", "deletion", "x"]))
        ok = ok and 1 <= n <= (points or 0) - 1 and kind != "x"
        call(metrics.mc_auc, MODEL, x, attribution, n, kind=kind, substrate=substrate, generator=gen,
             scheme=data.draw(st.sampled_from(["uniform", "stratified"])), shape=(b,) if ok else None,
             must_fail=must_fail, valid=ok, **kw)


@fuzz(80)
@given(st.data())
def test_masked_images_and_pixel_counts(data):
    x, flaw = data.draw(images(max_b=2, max_side=5))
    attribution, a_flaw = data.draw(maps_for(x))
    b, _, h, w = _shape(x)
    d = h * w
    k = data.draw(st.one_of(st.integers(-1, d + 1), st.sampled_from([10**6, 2.7, math.nan, "row"])))
    if k == "row":
        k = torch.tensor(data.draw(st.lists(st.integers(-1, d + 1), min_size=b, max_size=b)))
    k_ok = (isinstance(k, int) and 0 <= k <= d) or (isinstance(k, torch.Tensor) and bool(((k >= 0) & (k <= d)).all()))
    ok = not flaw and not a_flaw and k_ok
    call(metrics.masked_images, x, attribution, k, kind=data.draw(st.sampled_from(["insertion", "deletion"])),
         shape=_shape(x) if ok else None, must_fail=bool(flaw) or bool(a_flaw) or not k_ok, valid=ok)
    num = data.draw(st.one_of(st.integers(-1, 30), BAD_OPTIONS))
    steps = data.draw(st.one_of(st.none(), st.integers(-1, 8)))
    pps = data.draw(st.one_of(st.none(), st.integers(-1, 8)))
    out = call(metrics.pixel_counts, num, steps, pps)
    if out is not None:
        assert out[0] == 0 and out[-1] == num and (out.diff() >= 0).all()


@fuzz(80)
@given(st.data())
def test_auc_mc_estimate_sample_points(data):
    b, p = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 6))
    curve = torch.rand(b, p, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    form = data.draw(st.sampled_from(["tensor", "numpy", "list", "nan", "string"]))
    if form == "nan" and curve.numel():
        curve[0, 0] = math.nan
    value = {"numpy": curve.numpy(), "list": curve.tolist(), "string": "curve"}.get(form, curve)
    broken = form == "string" or (form == "nan" and curve.numel())
    rule = data.draw(st.sampled_from(["trapezoid", "right", "simpson"]))
    out = call(metrics.auc, value, rule=rule, must_fail=bool(broken) or p < 2,
               shape=None if isinstance(value, (np.ndarray, list)) else (b,))
    if isinstance(out, np.ndarray):
        assert out.shape == (b,) and np.isfinite(out).all()
    n = data.draw(st.one_of(st.integers(0, 7), BAD_OPTIONS))
    repeats = data.draw(st.one_of(st.none(), st.integers(0, 3)))
    call(metrics.mc_estimate, value, n, scheme=data.draw(st.sampled_from(["uniform", "stratified", "x"])),
         repeats=repeats, generator=torch.Generator().manual_seed(0), must_fail=bool(broken) or p < 2,
         shape=None if repeats is None else (repeats, b) if repeats else None)
    d = data.draw(st.one_of(st.integers(-1, 10), BAD_OPTIONS))
    out = call(metrics.sample_points, d, n, batch=data.draw(st.integers(0, 3)),
               scheme=data.draw(st.sampled_from(["uniform", "stratified", "x"])),
               device=data.draw(st.sampled_from([None, "cpu", "cuda", "abc"])))
    if out is not None:
        idx, wts = out
        assert idx.shape == wts.shape and idx.min() >= 1 and idx.max() <= d
        torch.testing.assert_close(wts.sum(1).double(), torch.ones(idx.shape[0], dtype=torch.float64))


# ============================================================================= ranem.metrics: robustness
def _garbage_explainer(kind):
    """Explainers that return what an explainer must not: the metric has to refuse them."""
    def explain(model, x, target=None):
        b, _, h, w = x.shape
        return {"nan": torch.full((b, h, w), math.nan), "shape": torch.zeros(b + 1, h, w),
                "list": [[0.0]], "inf": torch.full((b, h, w), math.inf)}[kind]
    explain.__name__ = f"garbage_{kind}"
    return explain


def _constant_rows(maps):
    flat = maps.flatten(1)
    return (flat == flat[:, :1]).all(1)


EXPLAINER_CHOICES = ["saliency", "saliency", "nan", "shape", "list", "inf", "not callable"]


def _explainer(name):
    return saliency if name == "saliency" else 42 if name == "not callable" else _garbage_explainer(name)


@fuzz(60)
@given(st.data())
def test_avg_sensitivity(data):
    x, flaw = data.draw(images(max_b=2, max_side=5))
    name = data.draw(st.sampled_from(EXPLAINER_CHOICES))
    normalise = data.draw(st.sampled_from(["minmax", "max", None, "z"]))
    radius = data.draw(st.one_of(st.floats(0, 0.5), BAD_OPTIONS))
    target = data.draw(targets())
    samples = data.draw(st.integers(0, 2))
    b = _shape(x)[0]
    ok = not flaw and name == "saliency" and normalise != "z" and _target_ok(target, b) and isinstance(radius, float) \
        and math.isfinite(radius) and radius >= 0
    nan_rows = None
    if ok and normalise is not None:  # documented: a changed map over a constant clean one is NaN
        from ranem.baselines._common import resolve_target
        xc = _cast(x)
        nan_rows = _constant_rows(saliency(MODEL, xc, resolve_target(MODEL, xc, target)))
    call(metrics.avg_sensitivity, _explainer(name), MODEL, x, target=target, samples=samples,
         radius=radius, normalise=normalise, repredict=data.draw(st.booleans()), nan_rows=nan_rows,
         shape=(b,) if ok and samples else None, must_fail=bool(flaw) or name != "saliency",
         valid=ok and samples > 0)


@fuzz(50)
@given(st.data())
def test_mprt_and_randomised_copy(data):
    x, flaw = data.draw(images(max_b=2, max_side=5))
    name = data.draw(st.sampled_from(EXPLAINER_CHOICES))
    b = _shape(x)[0]
    seed = data.draw(st.one_of(st.integers(0, 3), st.just(-1)))
    per_layer = data.draw(st.booleans())
    ok = not flaw and name == "saliency" and seed >= 0 and _shape(x)[2] * _shape(x)[3] >= 2  # ranks need 2 pixels
    nan_rows = None
    if ok:  # documented: the Spearman correlation of a constant map is NaN (as scipy's)
        xc = _cast(x)
        original = saliency(MODEL, xc)
        nan_rows = _constant_rows(original) | _constant_rows(saliency(metrics.randomised_copy(MODEL, seed), xc))
        if per_layer:  # every layer of the cascade: its own randomised model
            nan_rows = None
    out = call(metrics.mprt, _explainer(name), MODEL, x, seed=seed, per_layer=per_layer,
               abs=data.draw(st.booleans()), nan_rows=nan_rows, must_fail=bool(flaw) or name != "saliency",
               shape=None if per_layer or not ok else (b,), valid=ok)
    if out is not None and per_layer:
        last, names, correlations = out
        assert last.shape == (b,) and correlations.shape == (len(names), b)
    layers = data.draw(st.one_of(st.none(), st.integers(-1, 5), st.just(1.5)))
    clone = call(metrics.randomised_copy, MODEL, seed=max(seed, 0), layers=layers,
                 must_fail=layers is not None and (not isinstance(layers, int) or layers < 1))
    if clone is not None:  # it must have randomised something
        changed = [not torch.equal(p, q) for p, q in zip(MODEL.parameters(), clone.parameters())]
        assert any(changed)


@fuzz(80)
@given(st.data())
def test_spearman_rank_normalise(data):
    b, n = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 6))
    a = torch.randint(0, 3, (b, n), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))).float()
    c = torch.randn(b, n)
    flaw = data.draw(st.sampled_from(["", "", "", "nan", "shape", "list", "complex"]))
    if flaw == "nan" and a.numel():
        a[0, 0] = math.nan
    elif flaw == "shape":
        c = c[:, :-1] if n else c[:, None]
    elif flaw == "list":
        a = a.tolist()
    elif flaw == "complex":
        a = a.to(torch.complex64)
    else:
        flaw = ""
    ok = not flaw and b > 0 and n >= 2
    nan_rows = (_constant_rows(a) | _constant_rows(c)) if ok else None
    call(metrics.spearman, a, c, shape=(b,) if ok else None, nan_rows=nan_rows, must_fail=bool(flaw))
    out = call(metrics.rank_average, a, shape=(b, n) if ok or (not flaw and b == 0) else None,
               must_fail=flaw in ("list", "complex"))
    if out is not None and not flaw:
        torch.testing.assert_close(out.sum(1), torch.full((b,), n * (n + 1) / 2, dtype=torch.float64))
    how = data.draw(st.sampled_from(["minmax", "max", None, "l2"]))
    call(metrics.normalise_maps, a, how, shape=(b, n) if not flaw and b and n and how != "l2" else None,
         must_fail=flaw in ("nan", "list", "complex") or not b or not n)


# ============================================================================= ranem.metrics: stats, localisation
@fuzz(40)
@given(st.data())
def test_explain_time_and_evaluate(data):
    x, flaw = data.draw(images(max_b=2, max_side=4))
    name = data.draw(st.sampled_from(EXPLAINER_CHOICES))
    b = _shape(x)[0]
    repeats, warmup = data.draw(st.integers(0, 2)), data.draw(st.integers(-1, 1))
    out = call(metrics.explain_time, _explainer(name), MODEL, x, repeats=repeats, warmup=warmup,
               must_fail=bool(flaw) or name in ("not callable",))
    if out is not None:
        assert all(math.isfinite(v) and v >= 0 for v in out.values())
    rounds = data.draw(st.integers(0, 1))
    out = call(metrics.compare_times, {"a": _explainer(name)} if name != "not callable" else {"a": 42}, MODEL, x,
               rounds=rounds, warmup=0, must_fail=bool(flaw) or name == "not callable" or rounds == 0)
    if out is not None:
        assert list(out) == ["a"] and math.isfinite(out["a"])
    robust = data.draw(st.integers(0, 2))
    out = call(metrics.evaluate, _explainer(name), MODEL, x, steps=data.draw(st.sampled_from([None, 2, 0])),
               robust=robust, sensitivity_samples=1, must_fail=bool(flaw) or name != "saliency")
    if out is not None:
        assert out["attribution"].shape == (b,) + _shape(x)[2:] and out["faithfulness"].shape == (b,)
        assert torch.isfinite(out["faithfulness"]).all() and torch.isfinite(out["insertion"]).all()


@fuzz(80)
@given(st.data())
def test_wilcoxon_and_results_table(data):
    n = data.draw(st.integers(0, 8))
    a = np.random.default_rng(data.draw(st.integers(0, 99))).normal(size=n)
    b = a + data.draw(st.sampled_from([0.0, 0.5])) * np.random.default_rng(1).normal(size=n)
    flaw = data.draw(st.sampled_from(["", "", "nan", "inf", "length", "2d", "text"]))
    if flaw == "nan" and n:
        a[0] = np.nan
    elif flaw == "inf" and n:
        a[0] = np.inf
    elif flaw == "length":
        b = b[:-1] if n else np.zeros(1)
    elif flaw == "2d":
        a = a[None]
    elif flaw == "text":
        a = "abc"
    out = call(metrics.wilcoxon, a, b, must_fail=flaw in ("inf", "length", "2d", "text") and (n > 0 or flaw != "inf"))
    if out is not None:
        assert 0 <= out.pvalue <= 1 and math.isfinite(out.statistic)
    results = {"A": {"m": b, "time": 0.1}, "B": {"m": b[::-1].copy()}} if flaw in ("", "nan") else data.draw(
        st.sampled_from([{}, "x", {"A": {}}]))
    table = call(metrics.results_table, results, reference=data.draw(st.sampled_from(["best", None, "A", "Z"])))
    if table is not None:
        assert isinstance(str(table), str) and isinstance(table.to_markdown(), str)


@fuzz(80)
@given(st.data())
def test_localisation(data):
    x, _ = data.draw(images(max_b=3, max_side=5, broken=False))
    attribution, a_flaw = data.draw(maps_for(x))
    b, _, h, w = _shape(x)
    mask = torch.rand(b, h, w, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) > 0.5
    m_flaw = data.draw(st.sampled_from(["", "", "", "empty", "shape", "list"]))
    if m_flaw == "empty":
        mask[0] = False
    elif m_flaw == "shape":
        mask = mask.flatten(1)
    elif m_flaw == "list":
        mask = mask.tolist()
    else:
        mask.view(b, -1)[:, 0] = True  # every mask holds at least one pixel
    for fn in (metrics.pointing_game, metrics.mass_in_mask, metrics.precision_at_mask):
        out = call(fn, attribution, mask, shape=(b,) if not a_flaw and not m_flaw else None,
                   must_fail=bool(a_flaw) or bool(m_flaw))
        if out is not None:
            assert ((out >= 0) & (out <= 1 + 1e-6)).all()


# ============================================================================= baselines
def _options(data, valid):
    """A dict of options: each from ``valid`` (name -> strategy), sometimes one replaced by garbage."""
    opts = {name: data.draw(strategy) for name, strategy in valid.items()}
    broken = None
    if valid and data.draw(st.integers(0, 3)) == 0:
        broken = data.draw(st.sampled_from(sorted(valid)))
        opts[broken] = data.draw(BAD_OPTIONS)
    return opts, broken


EXPLAINERS = {
    "saliency": (saliency, {}),
    "integrated_gradients": (integrated_gradients, {"steps": st.integers(1, 4), "internal_batch_size": st.integers(1, 8)}),
    "gradient_shap": (gradient_shap, {"samples": st.integers(1, 3), "stdev": st.floats(0, 1), "seed": st.integers(0, 9)}),
    "grad_cam_pp": (grad_cam_pp, {"layer": st.sampled_from(["features", "features.0", MODEL.features[2]])}),
    "rise": (rise, {"masks": st.integers(1, 16), "grid": st.integers(1, 4), "p": st.floats(0.1, 1),
                    "batch_size": st.integers(1, 8), "seed": st.integers(0, 9), "baseline": st.floats(-2, 2),
                    "normalise": st.sampled_from(["coverage", "p"])}),
    "smooth_pixel_mask": (smooth_pixel_mask, {"area": st.floats(0.05, 1), "iterations": st.integers(1, 3),
                                              "grid": st.integers(1, 5), "sigma": st.floats(0, 2),
                                              "lr": st.floats(1e-3, 1), "weight_start": st.floats(0.1, 10),
                                              "weight_end": st.floats(10, 1e3)}),
    "iba": (iba, {"beta": st.floats(0, 20), "steps": st.integers(1, 3), "draws": st.integers(1, 3),
                  "lr": st.floats(1e-3, 2), "sigma": st.floats(0, 2), "initial_alpha": st.floats(-5, 5),
                  "min_std": st.floats(1e-3, 1), "seed": st.integers(0, 9)}),
}
# Options whose garbage values are nevertheless meaningful: numbers that are valid there.
_STILL_VALID = {("rise", "baseline"): (0, -1, 2.5), ("rise", "p"): (),
                ("iba", "initial_alpha"): (0, -1, 2.5), ("gradient_shap", "stdev"): (0, 2.5),
                ("iba", "beta"): (0, 2.5), ("iba", "sigma"): (0, 2.5), ("smooth_pixel_mask", "sigma"): (0, 2.5),
                ("iba", "lr"): (2.5,), ("smooth_pixel_mask", "lr"): (2.5,), ("iba", "min_std"): (2.5,)}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
@fuzz(36)
@given(data=st.data())
def test_explainers(name, data):
    fn, valid = EXPLAINERS[name]
    x, flaw = data.draw(images(max_b=2, max_side=6))
    target = data.draw(targets())
    opts, broken = _options(data, valid)
    bad_option = broken is not None and opts[broken] not in _STILL_VALID.get((name, broken), ())
    if name == "smooth_pixel_mask" and opts["weight_end"] is not None and not isinstance(opts["weight_end"], str) \
            and not isinstance(opts["weight_start"], str) and opts["weight_start"] is not None:
        bad_option = bad_option or not opts["weight_start"] <= opts["weight_end"]
    b, _, h, w = _shape(x)
    ok = not flaw and _target_ok(target, b) and not bad_option
    answerable = ok and not (name == "iba" and h * w < 2)  # per-sample statistics need 2 pixels
    call(fn, MODEL, x, target, shape=(b, h, w) if ok else None, must_fail=bool(flaw), valid=answerable, **opts)


@fuzz(60)
@given(st.one_of(st.integers(0, 8), BAD_OPTIONS), st.one_of(st.integers(1, 6), st.tuples(st.integers(0, 5), st.integers(1, 5)),
                                                           st.just("big"), st.just((1, 2, 3))),
       st.one_of(st.integers(0, 5), BAD_OPTIONS), st.one_of(st.floats(0, 1), BAD_OPTIONS),
       st.sampled_from([None, "cpu", "cuda", "x"]), st.sampled_from([torch.float32, torch.float64, torch.int64, "f"]))
def test_rise_masks(n, size, grid, p, device, dtype):
    out = call(rise_masks, n, size, grid=grid, p=p, generator=torch.Generator().manual_seed(0), device=device, dtype=dtype)
    if out is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        assert out.shape == (n,) + hw and (out >= 0).all() and (out <= 1).all()


@fuzz(60)
@given(st.data())
def test_helpers_of_the_baselines(data):
    x, flaw = data.draw(images(max_b=3, max_side=5))
    min_std = data.draw(st.one_of(st.floats(1e-3, 1), BAD_OPTIONS))
    out = call(input_statistics, x, min_std=min_std, must_fail=bool(flaw) and flaw != "empty")
    if out is not None:
        assert out[0].shape == _shape(x)[1:] and (out[1] > 0).all()
    theta = torch.rand(2, data.draw(st.sampled_from([1, 1, 3])), 3, 3)
    size = data.draw(st.one_of(st.integers(-1, 6), st.tuples(st.integers(1, 6), st.integers(1, 6)), st.just("s")))
    sigma = data.draw(st.one_of(st.floats(0, 2), BAD_OPTIONS))
    ok = theta.shape[1] == 1 and (isinstance(size, tuple) or (isinstance(size, int) and size >= 1))
    mask = call(smooth_mask_from_params, theta, size, sigma=sigma)
    if mask is not None:
        assert ok and mask.shape == (2,) + ((size, size) if isinstance(size, int) else size)
        call(area_loss, mask, data.draw(st.one_of(st.floats(0, 1), BAD_OPTIONS)))
    call(find_target_layer, data.draw(st.sampled_from([MODEL, "model"])), must_fail=True)  # no timm feature_info
    lam, r = torch.rand(2, 3), torch.randn(2, 3)
    call(bottleneck_capacity, lam, data.draw(st.sampled_from([r, r.tolist(), r.double()])))


# ============================================================================= the tally
def test_zz_tally():
    """Printed with ``pytest -s``: how many calls ran, how many were refused clearly."""
    print(f"\nfuzz tally: {dict(TALLY)}")
    assert TALLY["silent wrong answers"] == 0
