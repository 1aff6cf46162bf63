"""Insertion and deletion curves, their area (AUC), faithfulness and the Monte-Carlo AUC.

Conventions (RISE's CausalMetric, as used by the Ra-NEM authors):

- ``x`` is a normalised batch (B, C, H, W); ``attribution`` is (B, H, W), higher = more important.
  Pixels are ranked by a *stable* descending sort, so ties keep pixel (row-major) order and the
  curve is deterministic. All channels of a pixel are kept or replaced together.
- Point ``i`` (``i = 0..steps``) of the insertion curve keeps the ``k_i`` top-ranked pixels of ``x``
  and shows the substrate elsewhere; point ``i`` of the deletion curve replaces the ``k_i``
  top-ranked pixels by the substrate. ``k_i = min(i * pixels_per_step, H*W)``; the default
  ``pixels_per_step`` is ``W`` (224 at 224 px, as RISE), so the last point is the full image
  (insertion) or the full substrate (deletion).
- The score is the softmax probability of the clean image's top-1 class (or of ``target``).

Every masked image of every step of every image is one row of a flat list of (image, pixel count)
pairs; chunks of ``batch_size`` rows are composed with one gather and one ``torch.where`` and sent
through the model together, so the cost is that of the forwards, whatever B and ``steps`` are.
Besides the ``batch_size`` masked images of a chunk, memory holds one substrate image per image and
curve kind and one int32 rank per pixel. The rows whose masked image is x itself (the last
insertion point, the first deletion point) reuse the clean forward that picks the target class.

Inputs are checked before any forward: x must be finite (a NaN image has no score) and is cast to
the model's parameter dtype (the package's dtype rule, ``ranem.baselines._common.model_input``);
attributions must be finite; a model whose outputs are NaN or inf raises instead of giving NaN
curves.
"""
from __future__ import annotations

import math

import torch

from ranem import _checks
from ranem.ops import _replacement

__all__ = [
    "insertion_curve",
    "deletion_curve",
    "auc",
    "faithfulness",
    "mc_auc",
    "mc_estimate",
    "sample_points",
    "masked_images",
    "pixel_counts",
]

_KINDS = ("insertion", "deletion")
_DEFAULT_SUBSTRATE = {"insertion": "blur", "deletion": "zeros"}


# ----------------------------------------------------------------------------- validation
def _check_inputs(x, attribution, model=None) -> torch.Tensor:
    """Check x and attribution (finite: a NaN image has no score, NaN scores no ranking); return
    x, cast to ``model``'s dtype when a model is given."""
    _checks.image_batch(x, nonempty=True, finite=True)
    b, _, h, w = x.shape
    _checks.finite(_checks.shaped(attribution, "attribution", (b, h, w), "B, H, W", "x"), "attribution")
    if model is None:
        return x
    _checks.model_function(model)
    if not isinstance(model, torch.nn.Module):  # a plain function: no parameters to read a dtype from
        return x
    from ranem.baselines._common import model_input  # lazy: ranem.metrics stays free of captum
    return model_input(model, x)


def pixel_counts(num_pixels: int, steps: int | None = None, pixels_per_step: int | None = None) -> torch.Tensor:
    """The pixel counts ``k_0 = 0 < ... < k_steps = num_pixels`` of the curve points (a LongTensor).

    With ``pixels_per_step`` (default: none given -> the caller's width), ``k_i = min(i*pps, d)``
    and ``steps = ceil(d / pps)``, as RISE. With ``steps`` alone, the points are spread evenly:
    ``k_i = floor(i * d / steps)``. Giving both is allowed only when they agree.
    """
    d = _checks.integer(num_pixels, "num_pixels")
    if pixels_per_step is not None:
        pps = _checks.integer(pixels_per_step, "pixels_per_step")
        n = math.ceil(d / pps)
        if steps is not None and _checks.integer(steps, "steps") != n:
            raise ValueError(f"steps={steps} and pixels_per_step={pps} disagree: {d} pixels at {pps} per "
                             f"step take {n} steps; give only one of them")
        return (torch.arange(n + 1) * pps).clamp_(max=d)
    if steps is None:
        raise ValueError("give steps or pixels_per_step")
    n = _checks.integer(steps, "steps")
    return torch.arange(n + 1) * d // n


def _ranks(attribution: torch.Tensor) -> torch.Tensor:
    """rank[b, p] = position of pixel p in image b's stable descending order (0 = most important)."""
    flat = attribution.detach().flatten(1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    # int32 ranks: half the memory of the sort's int64 indices (1000 images at 224 px: 200 MB).
    positions = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32).expand_as(order)
    return torch.empty(order.shape, device=flat.device, dtype=torch.int32).scatter_(1, order, positions)


def _compose(x, substrates, ranks, image, count, deletion, source) -> torch.Tensor:
    """Masked images for a list of rows: row r shows x[image[r]] where the pixel's rank is below
    count[r] (insertion) or at least count[r] (deletion), and substrates[source[r]] elsewhere."""
    h, w = x.shape[2:]
    keep = (ranks[image] < count[:, None]) ^ deletion[:, None]
    return torch.where(keep.view(-1, 1, h, w), x[image], substrates[source])


def _softmax_rows(model, inputs: torch.Tensor, expected_rows: int) -> torch.Tensor:
    out = model(inputs)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != expected_rows:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits of shape (batch, classes) = ({expected_rows}, K), got {shape}")
    if not bool(torch.isfinite(out).all()):  # a NaN logit would give a NaN curve point
        raise ValueError("model returned NaN or inf logits on these images (overflow?); the curve is undefined")
    return out.float().softmax(dim=1)


def _targets(target, probs_clean: torch.Tensor) -> torch.Tensor:
    b, k = probs_clean.shape
    if target is None:
        return probs_clean.argmax(dim=1)
    return _checks.class_indices(target, b, probs_clean.device, classes=k)


def _autocast(enabled: bool, device: torch.device):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _as_curve(curve) -> torch.Tensor:
    try:
        return torch.as_tensor(curve, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"curve must be a tensor or an array of numbers, got {type(curve).__name__}") from None


def _check_curve_values(c: torch.Tensor) -> None:
    # An area over a NaN point is no area: refuse it rather than return NaN.
    if not (c.is_floating_point() or c.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8, torch.int8)):
        raise TypeError(f"curve must hold real numbers, got {c.dtype}")
    _checks.finite(c, "curve")


# ----------------------------------------------------------------------------- core
def _scores(model, x, attribution, kinds, counts, substrates, target, batch_size, generator, autocast,
            replacement=_replacement, compose=_compose):
    """Scores of the rows (input, kind, count): a tensor (B, K, P) for ``counts`` (B, K, P).

    ``kinds`` lists the curve kind of each K slot. One clean forward gives the target and the
    score of every row whose masked input equals x (all features kept), which is not recomputed.
    The maths is the same for every kind of input: ``replacement(x, substrate, generator)`` gives
    the replacement values of one substrate for the batch and ``compose`` (``_compose``'s
    signature) builds masked inputs from them; the defaults are those of images, ``ranem.tokens``
    passes its own for token sequences.
    """
    b = x.shape[0]
    d = attribution[0].numel()
    batch_size = _checks.integer(batch_size, "batch_size")
    dev = x.device
    with torch.inference_mode(), _autocast(autocast, dev):
        probs_clean = _softmax_rows(model, x, b)
        tgt = _targets(target, probs_clean)
        clean_score = probs_clean.gather(1, tgt[:, None])[:, 0]
        ranks = _ranks(attribution.to(dev))
        # One substrate per (kind slot, input), flattened as slot * B + input.
        subs = torch.cat([replacement(x, name, generator) for name in substrates])
        # Rows: image-major, so a chunk holds few images and the gathers stay local.
        k_slots, p = counts.shape[1], counts.shape[2]
        image = torch.arange(b, device=dev).view(b, 1, 1).expand(b, k_slots, p).reshape(-1)
        slot = torch.arange(k_slots, device=dev).view(1, k_slots, 1).expand(b, k_slots, p).reshape(-1)
        count = counts.to(dev).reshape(-1)
        deletion = torch.tensor([k == "deletion" for k in kinds], device=dev)[slot]
        full = torch.where(deletion, count == 0, count >= d)  # the masked image is x itself
        scores = torch.empty(image.numel(), device=dev, dtype=torch.float32)
        scores[full] = clean_score[image[full]]
        todo = (~full).nonzero()[:, 0]
        for start in range(0, todo.numel(), batch_size):
            rows = todo[start:start + batch_size]
            inputs = compose(x, subs, ranks, image[rows], count[rows], deletion[rows], slot[rows] * b + image[rows])
            probs = _softmax_rows(model, inputs, rows.numel())
            scores[rows] = probs.gather(1, tgt[image[rows], None])[:, 0]
    return scores.view(b, k_slots, p)


def _curves(model, x, attribution, kinds, substrates, steps, pixels_per_step, target, batch_size,
            generator, autocast):
    x = _check_inputs(x, attribution, model)
    h, w = x.shape[2:]
    if steps is None and pixels_per_step is None:
        pixels_per_step = w
    counts = pixel_counts(h * w, steps, pixels_per_step)
    grid = counts.view(1, 1, -1).expand(x.shape[0], len(kinds), -1)
    return _scores(model, x, attribution, kinds, grid, substrates, target, batch_size, generator, autocast)


def insertion_curve(model, x, attribution, steps=None, pixels_per_step=None, substrate="blur", target=None,
                    batch_size=256, generator=None, autocast=False) -> torch.Tensor:
    """Insertion curve (B, steps+1): point i is the score of x with only its ``k_i`` most important
    pixels kept and ``substrate(x)`` (default: blur) elsewhere; point 0 is the substrate alone, the
    last point x itself. ``batch_size`` bounds the masked images per forward."""
    return _curves(model, x, attribution, ("insertion",), (substrate,), steps, pixels_per_step, target,
                   batch_size, generator, autocast)[:, 0]


def deletion_curve(model, x, attribution, steps=None, pixels_per_step=None, substrate="zeros", target=None,
                   batch_size=256, generator=None, autocast=False) -> torch.Tensor:
    """Deletion curve (B, steps+1): point i is the score of x with its ``k_i`` most important pixels
    replaced by ``substrate(x)`` (default: zeros); point 0 is x itself."""
    return _curves(model, x, attribution, ("deletion",), (substrate,), steps, pixels_per_step, target,
                   batch_size, generator, autocast)[:, 0]


def auc(curve, rule: str = "trapezoid"):
    """Area under curves sampled at evenly spaced points of [0, 1], along the last axis.

    ``rule="trapezoid"`` (RISE, the reported metric); ``rule="right"`` = the mean of points 1..d,
    the paper's eq. (2) and the population mean that the Monte-Carlo estimate is unbiased for.
    They differ by ``(c_d - c_0) / (2d)``. Accepts a tensor or an array; returns the same kind.
    """
    is_tensor = isinstance(curve, torch.Tensor)
    c = curve if is_tensor else _as_curve(curve)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"curve must have at least 2 points along its last axis, got shape {tuple(c.shape)}")
    _check_curve_values(c)
    if rule == "trapezoid":
        area = (c.sum(-1) - 0.5 * (c[..., 0] + c[..., -1])) / (c.shape[-1] - 1)
    elif rule == "right":
        area = c[..., 1:].mean(-1)
    else:
        raise ValueError(f"rule must be 'trapezoid' or 'right', got {rule!r}")
    return area if is_tensor else area.numpy()


def faithfulness(model, x, attribution, steps=None, pixels_per_step=None, insertion_substrate="blur",
                 deletion_substrate="zeros", target=None, batch_size=256, generator=None, autocast=False,
                 return_curves=False):
    """AUC of the insertion curve minus AUC of the deletion curve, per image (B,).

    Both curves share one clean forward and fill the same batches. With ``return_curves`` also
    returns the two curves ``(faith, insertion, deletion)``.
    """
    both = _curves(model, x, attribution, _KINDS, (insertion_substrate, deletion_substrate), steps,
                   pixels_per_step, target, batch_size, generator, autocast)
    ins, dele = both[:, 0], both[:, 1]
    faith = auc(ins) - auc(dele)
    return (faith, ins, dele) if return_curves else faith


# ----------------------------------------------------------------------------- Monte Carlo
def sample_points(d: int, n: int, batch: int = 1, scheme: str = "uniform", generator=None, device=None):
    """Random curve points for the Monte-Carlo AUC: ``(indices, weights)``, both (batch, n).

    Indices lie in 1..d. ``uniform``: n distinct points drawn without replacement (eq. 6), equal
    weights 1/n. ``stratified``: 1..d cut into n contiguous bins of near-equal size (the authors'
    scheme for the k of training), one point drawn uniformly inside each bin, weighted by the bin's
    share of the points, so the estimate stays unbiased when d is not a multiple of n.
    """
    d, n, batch = _checks.integer(d, "d"), _checks.integer(n, "n"), _checks.integer(batch, "batch")
    device = _checks.device(device)
    if n > d:
        raise ValueError(f"n must be at most d = {d} (sampling without replacement), got {n}")
    if scheme == "uniform":
        keys = torch.rand(batch, d, generator=generator, device=device)
        idx = keys.topk(n, dim=1).indices + 1
        return idx, torch.full((batch, n), 1.0 / n, device=device)
    if scheme == "stratified":
        edges = torch.arange(n + 1, device=device) * d // n  # bin j = edges[j]+1 .. edges[j+1]
        sizes = (edges[1:] - edges[:-1]).expand(batch, n)
        u = torch.rand(batch, n, generator=generator, device=device)
        offset = (u * sizes).long().clamp_(max=sizes - 1)
        return edges[:-1] + 1 + offset, sizes.double().div(d).float()
    raise ValueError(f"scheme must be 'uniform' or 'stratified', got {scheme!r}")


def mc_estimate(curve, n: int, scheme: str = "uniform", generator=None, repeats: int | None = None):
    """Monte-Carlo AUC from an already computed curve (..., d+1): the population is points 1..d.

    Returns (B,) for a (B, d+1) curve, or (repeats, B) independent estimates with ``repeats``.
    Its expectation is ``auc(curve, rule="right")``; with n = d it equals it exactly.
    """
    c = curve if isinstance(curve, torch.Tensor) else _as_curve(curve)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"curve must have shape (B, d+1) with d >= 1, got {tuple(c.shape)}")
    _check_curve_values(c)
    b, d = c.shape[0], c.shape[1] - 1
    r = 1 if repeats is None else _checks.integer(repeats, "repeats")
    idx, wts = sample_points(d, n, batch=r * b, scheme=scheme, generator=generator, device=c.device)
    values = c.repeat(r, 1).gather(1, idx)
    est = (values.double() * wts.double()).sum(1).to(c.dtype).view(r, b)
    return est[0] if repeats is None else est


def mc_auc(model, x, attribution, n: int, kind: str = "insertion", steps=None, pixels_per_step=None,
           substrate=None, scheme: str = "uniform", target=None, batch_size=256, generator=None,
           autocast=False) -> torch.Tensor:
    """Monte-Carlo AUC (eq. 6) per image (B,): the weighted mean of the curve at n random points,
    evaluating only those n masked images per image (plus one clean forward).

    The points are drawn from 1..steps (indices into ``pixel_counts``; ``pixels_per_step=1`` gives
    the paper's population of all d pixel counts) by ``sample_points`` with the same generator, so
    it equals ``mc_estimate`` of the full curve drawn with an identically seeded generator (for a
    deterministic substrate; the noise substrate draws from the same generator after the points).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'insertion' or 'deletion', got {kind!r}")
    x = _check_inputs(x, attribution, model)
    b, _, h, w = x.shape
    if steps is None and pixels_per_step is None:
        pixels_per_step = w
    counts = pixel_counts(h * w, steps, pixels_per_step)
    idx, wts = sample_points(counts.numel() - 1, n, batch=b, scheme=scheme, generator=generator)
    substrate = _DEFAULT_SUBSTRATE[kind] if substrate is None else substrate
    grid = counts[idx].view(b, 1, n)
    values = _scores(model, x, attribution, (kind,), grid, (substrate,), target, batch_size, generator,
                     autocast)[:, 0]
    return (values.double() * wts.to(values.device).double()).sum(1).float()


def masked_images(x, attribution, k, kind: str = "insertion", substrate=None, generator=None) -> torch.Tensor:
    """The images the curves score at pixel count ``k`` (an int or a (B,) integer tensor, each in
    [0, H*W]): x with only its k most important pixels kept (insertion) or with them replaced
    (deletion)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'insertion' or 'deletion', got {kind!r}")
    _check_inputs(x, attribution)
    b, _, h, w = x.shape
    count = _pixel_count_arg(k, b, h * w, x.device)
    substrate = _DEFAULT_SUBSTRATE[kind] if substrate is None else substrate
    with torch.no_grad():
        subs = _replacement(x, substrate, generator)
        image = torch.arange(b, device=x.device)
        deletion = torch.full((b,), kind == "deletion", device=x.device)
        return _compose(x, subs, _ranks(attribution.to(x.device)), image, count, deletion, image)


def _pixel_count_arg(k, b: int, d: int, device) -> torch.Tensor:
    """``k`` (an int, or a (B,) integer tensor) as a (B,) long tensor of counts in [0, d]. Floats,
    NaN and counts outside [0, d] are refused: casting them would silently pick another count."""
    if isinstance(k, torch.Tensor) and k.ndim > 0:
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise ValueError(f"k must hold integers, got a {k.dtype} tensor")
        if k.shape != (b,):
            raise ValueError(f"k must be an int or a ({b},) tensor (one count per image), got shape {tuple(k.shape)}")
        if bool((k < 0).any()) or bool((k > d).any()):
            raise ValueError(f"every k must be in [0, {d}] (the pixel count), got values in "
                             f"[{int(k.min())}, {int(k.max())}]")
        return k.to(device=device, dtype=torch.long)
    if isinstance(k, torch.Tensor):  # a 0-d tensor
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise ValueError(f"k must be an integer, got a {k.dtype} tensor")
        k = int(k.item())
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise ValueError(f"k must be an integer in [0, {d}], got {k!r}")
    k = int(k.__index__())
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}] (the pixel count), got {k}")
    return torch.full((b,), k, dtype=torch.long, device=device)
