"""Masking operators: substrates that replace removed pixels, and the Gumbel-top-k mask.

``topk_mask`` is the operator's maths on any flat (B, D) score tensor; ``omega`` applies it to the
pixels of images, ``ranem.tokens.omega_tokens`` to the tokens of sequences.

Every substrate has one signature, ``substrate(x, generator=None) -> R`` with ``R`` shaped like
``x`` (B, C, H, W); it works on any device and on whole batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ranem import _checks


def zeros(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Deletion substrate: every removed value becomes 0 (on the normalised tensor)."""
    _checks.image_batch(x)
    return torch.zeros_like(x)


def gaussian_kernel(kernel_size: int = 11, sigma: float = 5.0, device=None, dtype=None) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel of side ``kernel_size``."""
    if _checks.integer(kernel_size, "kernel_size") % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a kernel has a centre pixel), got {kernel_size!r}")
    _checks.number(sigma, "sigma", low=0, low_open=True)
    device = _checks.device(device)
    offsets = torch.arange(kernel_size, device=device, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    return (k2 / k2.sum()).to(dtype or torch.float32)


def blur(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    kernel_size: int = 11,
    sigma: float = 5.0,
) -> torch.Tensor:
    """Insertion substrate: Gaussian blur of ``x`` (zero padding, each channel on its own),
    applied to the normalised tensor as RISE's reference implementation does."""
    _checks.image_batch(x, finite=True)  # a NaN pixel would spread over its whole neighbourhood
    channels = x.shape[1]
    kernel = gaussian_kernel(kernel_size, sigma, device=x.device, dtype=x.dtype)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(x, weight, padding=kernel_size // 2, groups=channels)


def noise(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random substrate: Gaussian noise with each image's per-channel mean and std."""
    _checks.image_batch(x, finite=True)  # a NaN pixel would make its channel's mean and std NaN
    if x.numel() == 0:  # an empty batch has no statistics (and torch warns computing them)
        return torch.empty_like(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, correction=0)  # population std: defined for 1x1 images too
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None \
        else torch.randn_like(x)
    return eps * std + mean


SUBSTRATES = {"zeros": zeros, "blur": blur, "noise": noise}
# How the NEMs draw substrates while training: one per masked input (the paper) or one per batch
# (the authors' code).
SUBSTRATE_MODES = ("input", "batch")


def get_substrate(substrate):
    """A substrate function from a name in ``SUBSTRATES`` or a callable."""
    if callable(substrate):
        return substrate
    if substrate in SUBSTRATES:
        return SUBSTRATES[substrate]
    raise ValueError(f"substrate must be a callable or one of {sorted(SUBSTRATES)}, got {substrate!r}")


# ---------------------------------------------------------------------------------------------
# Gumbel noise, Gumbel-top-k sampling and the masking operator omega (the paper's Algorithm 1).
# ---------------------------------------------------------------------------------------------

def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    # Uniforms are drawn in float32 (float64 when asked): in float16/bfloat16 the open interval
    # (0, 1) holds too few values, and 1 - eps rounds to 1, which would give -log(-log(1)) = inf.
    return torch.float64 if dtype == torch.float64 else torch.float32


def gumbel(shape_or_like, generator: torch.Generator | None = None, dtype=None, device=None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise, never inf or NaN.

    ``shape_or_like`` is a shape (tuple/list/``torch.Size``/int) or a tensor whose shape, dtype
    and device are used unless ``dtype``/``device`` say otherwise. U is drawn strictly inside
    (0, 1) in float32 (float64 for float64), clamped to [tiny, 1 - eps], transformed, then cast,
    so every value lies in about [-4.5, 16] (float32) whatever the output dtype.
    With a ``generator`` on another device than ``device`` the draw happens on the generator's
    device and is moved, so a CPU generator gives the same numbers on every device.
    """
    _checks.generator(generator)
    if isinstance(shape_or_like, torch.Tensor):
        shape = shape_or_like.shape
        if dtype is None and shape_or_like.is_floating_point():
            dtype = shape_or_like.dtype
        device = shape_or_like.device if device is None else device
    elif isinstance(shape_or_like, int):
        shape = (shape_or_like,)
    else:
        try:
            shape = tuple(int(s) for s in shape_or_like)
        except (TypeError, ValueError):
            raise TypeError(f"shape_or_like must be a shape or a tensor, got {shape_or_like!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape_or_like must have non-negative sizes, got {tuple(shape)}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    device = torch.device("cpu") if device is None else _checks.device(device)
    draw = _draw_dtype(dtype)
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, dtype=draw, device=gen_device)
    info = torch.finfo(draw)
    u = u.clamp_(info.tiny, 1.0 - info.eps)
    g = -torch.log(-torch.log(u))
    return g.to(device=device, dtype=dtype)


def _check_k_int(k, d: int, name: str = "k") -> int:
    if isinstance(k, torch.Tensor) and k.ndim == 0:
        if k.is_floating_point() or k.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer, got a {k.dtype} tensor")
        k = int(k.item())
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise ValueError(f"{name} must be an integer in [1, {d}], got {k!r}")
    k = int(k.__index__())
    if not 1 <= k <= d:
        raise ValueError(f"{name} must be in [1, d] with d = {d}, got {k}")
    return k


def gumbel_topk(logits: torch.Tensor, k, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices ``(..., k)`` of ``top_k(logits + g)`` with ``g`` standard Gumbel noise, in order.

    By the Gumbel-top-k trick (Kool et al., 2019) each row is an ordered sample of ``k`` items
    without replacement from ``softmax(logits)`` along the last dimension (Plackett-Luce).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim < 1:
        raise ValueError("logits must be a floating-point tensor with at least one dimension")
    d = logits.shape[-1]
    k = _check_k_int(k, d)
    _checks.finite(logits, "logits")
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    # Shifting by the row maximum changes no sample but keeps logits + g representable.
    work = work - work.amax(dim=-1, keepdim=True)
    perturbed = work + gumbel(work, generator=generator)
    return perturbed.topk(k, dim=-1, sorted=True).indices


def _per_row_k(k, batch: int, d: int, device) -> torch.Tensor:
    """``k`` (int or (B,) integer tensor) as a validated (B,) long tensor on ``device``."""
    if isinstance(k, torch.Tensor) and k.ndim > 0:
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise ValueError(f"k must hold integers, got a {k.dtype} tensor")
        if k.shape != (batch,):
            raise ValueError(f"k must be an int or a ({batch},) tensor (one k per row), got shape {tuple(k.shape)}")
        lo, hi = int(k.min()), int(k.max())
        if lo < 1 or hi > d:
            raise ValueError(f"every k must be in [1, d] with d = {d}, got values in [{lo}, {hi}]")
        return k.to(device=device, dtype=torch.long)
    k = _check_k_int(k, d)
    return torch.full((batch,), k, dtype=torch.long, device=device)


def _check_scores(scores, x: torch.Tensor) -> torch.Tensor:
    """Scores as (B, d) after checking they match the images' batch and pixel grid."""
    _checks.float_tensor(scores, "scores")
    b, _, h, w = x.shape
    if scores.shape not in ((b, h, w), (b, h * w)):
        raise ValueError(
            f"scores must have shape ({b}, {h}, {w}) or ({b}, {h * w}) to match x {tuple(x.shape)}, "
            f"got {tuple(scores.shape)}"
        )
    _checks.finite(scores, "scores")
    return scores.reshape(b, h * w)


def _replacement(x: torch.Tensor, substrate, generator) -> torch.Tensor:
    """The replacement values R for x: a tensor shaped like x, or what a substrate name/callable
    gives for x. R is checked whichever way it came, because a (1, C, H, W) R would broadcast
    image 0's values over the whole batch, and a NaN in R is a NaN in every masked image."""
    r = substrate if isinstance(substrate, torch.Tensor) else get_substrate(substrate)(x, generator)
    what = "substrate tensor" if isinstance(substrate, torch.Tensor) else "the substrate's output"
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(r).__name__}")
    if r.shape != x.shape:
        raise ValueError(f"{what} must be shaped like x {tuple(x.shape)}, got {tuple(r.shape)}")
    if not r.is_floating_point() or r.device != x.device:
        raise ValueError(f"{what} must be a floating-point tensor on x's device {x.device}, got {r.dtype} on {r.device}")
    _checks.finite(r, what)
    return r


def _top_k_positions(values: torch.Tensor, k: torch.Tensor, stable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For (B, d) values and a (B,) k: the bool mask of each row's k largest entries (exactly k
    per row, whatever the ties) and the (B, 1) index of the k-th largest.

    stable=True sorts each row (ties go to the lower index: deterministic masks). Otherwise, a
    partial selection suffices and costs less than a sort: each row needs only its m = min(k,
    d - k + 1) extreme entries, the k largest when k is small, the d - k + 1 smallest when k is
    large (the mask is then the complement of the d - k smallest). Flipping the sign of the rows
    of the second kind turns both into one batched ``topk`` of max(m) columns.
    """
    b, d = values.shape
    rows = torch.arange(d, device=values.device).unsqueeze(0)
    if stable:
        order = torch.sort(values, dim=1, descending=True, stable=True).indices
        keep = torch.zeros(b, d, dtype=torch.bool, device=values.device)
        return keep.scatter_(1, order, rows < k.unsqueeze(1)), order.gather(1, (k - 1).unsqueeze(1))
    small = k <= d - k + 1                                  # select the k largest directly
    m = torch.where(small, k, d - k + 1)
    sign = torch.where(small, 1.0, -1.0).to(values.dtype).unsqueeze(1)
    idx = torch.topk(values * sign, int(m.max()), dim=1, sorted=True).indices
    at = idx.gather(1, (m - 1).unsqueeze(1))                # the k-th largest in both cases
    count = torch.where(small, k, d - k).unsqueeze(1)       # entries to switch from the row's base
    base = (~small).unsqueeze(1)                            # small rows start empty, others full
    switched = (rows[:, : idx.shape[1]] < count) ^ base     # first `count` entries flip the base
    keep = base.expand(b, d).clone()
    return keep.scatter_(1, idx, switched), at


def _check_flat_scores(scores) -> torch.Tensor:
    _checks.float_tensor(scores, "scores")
    if scores.ndim != 2 or min(scores.shape) < 1:
        raise ValueError(f"scores must be a non-empty (B, D) tensor (one row of D features per input), "
                         f"got shape {tuple(scores.shape)}")
    _checks.finite(scores, "scores")
    return scores


def topk_mask(scores: torch.Tensor, k, generator: torch.Generator | None = None,
              noise: bool = True) -> torch.Tensor:
    """The straight-through Gumbel-top-k mask (B, D) of flat scores (B, D): the maths of ``omega``
    on any feature axis (pixels of an image, tokens of a sequence).

    k: an int or a (B,) integer tensor. Forward: exactly k ones per row, at the top-k of
    ``scores - logsumexp(scores) + g`` (noise=False: of the scores, ties to the lower index).
    Backward: the derivative of sigmoid(s_i - s_(k)) with the threshold s_(k) kept in the graph.
    The mask is float32 for half-precision scores, else in the scores' dtype.
    """
    s = _check_flat_scores(scores)
    b, d = s.shape
    kk = _per_row_k(k, b, d, s.device)
    # Work in at least float32: sorting many half-precision values creates ties and the
    # sigmoid's slope would be rounded away.
    work = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
    # scores - logsumexp is <= 0 but is -inf when a row spans more than the dtype's range; the
    # floor keeps it finite (so threshold differences never give inf - inf = NaN) and is the
    # identity, gradient included, for every value above it.
    floor = torch.finfo(work.dtype).min / 4
    work = (work - torch.logsumexp(work, dim=1, keepdim=True)).clamp(min=floor)
    if noise:
        work = work + gumbel(work, generator=generator)
    hard, at = _top_k_positions(work.detach(), kk, stable=not noise)
    threshold = work.gather(1, at)  # the k-th largest value, kept in the graph
    soft = torch.sigmoid(work - threshold)
    return hard.to(soft.dtype) + (soft - soft.detach())  # forward: exactly hard; backward: the sigmoid's


def omega(
    x: torch.Tensor,
    scores: torch.Tensor,
    k,
    substrate,
    generator: torch.Generator | None = None,
    noise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top-k pixels of ``scores + Gumbel noise``, replace the others (Algorithm 1, batched).

    x: images (B, C, H, W). scores: attribution logits (B, H, W) or (B, H*W), higher = keep.
    k: an int, or a (B,) integer tensor with one k per row. substrate: a tensor shaped like x
    (the replacement values R) or a name/callable for ``get_substrate`` (then R = substrate(x, generator)).
    noise=False gives the deterministic top-k of the scores (ties broken towards the lower index).

    The mask maths is ``topk_mask`` on the flattened (B, H*W) scores (``ranem.tokens.omega_tokens``
    calls the same function on the token axis).

    Returns ``(x_masked, mask)`` with ``x_masked = x * M + R * (1 - M)`` and M (B, H, W). In the
    forward pass M is exactly binary with exactly k ones per row (taken from positions in a sort or
    a top-k selection, never from comparing scores with the threshold, so ties cannot add or drop
    pixels). Backward is straight-through: dM/dscores is the derivative of
    sigmoid(s_i - s_(k)), s = scores - logsumexp(scores) + g and s_(k) the k-th largest s.
    As in Algorithm 1 (and the authors' code) the threshold s_(k) is NOT detached: it is a function
    of the scores, so the pixel holding it receives minus the sum of the other pixels' gradients.
    Consequently each row's gradient sums to zero and the logsumexp shift cancels in the gradient;
    it only keeps the perturbed values in a bounded range (useful in low precision). Values of
    s more than a quarter of the dtype's range below the logsumexp (only possible when a row's
    scores span more than the float range) are clamped there, so the mask never holds NaN.
    """
    _checks.image_batch(x, nonempty=True, finite=True)
    s = _check_scores(scores, x)
    b, d = s.shape
    kk = _per_row_k(k, b, d, s.device)
    r = _replacement(x, substrate, generator)  # before the Gumbel draw: a noise substrate draws first
    mask = topk_mask(s, kk, generator=generator, noise=noise)
    mask = mask.to(x.dtype).view(b, 1, x.shape[2], x.shape[3])
    x_masked = x * mask + r * (1 - mask)
    return x_masked, mask.view(b, x.shape[2], x.shape[3])


def sample_k(
    d: int,
    samples: int,
    stratified: bool = True,
    generator: torch.Generator | None = None,
    batch: int | None = None,
    device=None,
) -> torch.LongTensor:
    """The k values of one training step: (samples,) or, with ``batch=B``, (B, samples), in [1, d].

    stratified=True cuts the positions 1..d into ``samples`` equal bins and draws one k uniformly
    inside each (a stratified Monte-Carlo estimate of the curve's mean, as the authors do);
    stratified=False draws every k uniformly from 1..d. With ``batch`` every row is independent.
    """
    d, samples = _checks.integer(d, "d"), _checks.integer(samples, "samples")
    batch = None if batch is None else _checks.integer(batch, "batch")
    device = _checks.device(device)
    _checks.generator(generator)
    shape = (samples,) if batch is None else (batch, samples)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if stratified:
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device)
        position = (torch.arange(samples, dtype=torch.float64, device=gen_device) + u) / samples
        k = (position * d).floor().long() + 1
        k = k.clamp_(1, d)
    else:
        k = torch.randint(1, d + 1, shape, generator=generator, device=gen_device)
    return k if device is None else k.to(device)


def gumbel_softmax_k(logits: torch.Tensor, k: int, tau: float = 0.5,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The L2X relaxation of a k-subset (Chen et al., 2018), for comparison with ``omega``.

    Draws k independent Gumbel-softmax vectors over the last dimension and takes their
    element-wise maximum: a soft mask with at most k large entries. Cost and memory grow
    linearly in k (k softmaxes over d values), which is what Gumbel-top-k avoids.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim < 1:
        raise ValueError("logits must be a floating-point tensor with at least one dimension")
    k = _check_k_int(k, logits.shape[-1])
    _checks.number(tau, "tau", low=0, low_open=True)
    _checks.finite(logits, "logits")
    # Draw the k samples in chunks so memory stays near 64 rows of logits, however large k is.
    chunk = max(1, min(k, 64))
    out = None
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        g = gumbel((n, *logits.shape), generator=generator, dtype=logits.dtype, device=logits.device)
        sample = torch.softmax((logits.unsqueeze(0) + g) / tau, dim=-1).amax(dim=0)
        out = sample if out is None else torch.maximum(out, sample)
    if not bool(torch.isfinite(out).all()):  # (logits + g) / tau overflowed to inf: inf - inf in softmax
        raise ValueError(f"tau={tau!r} is too small for logits of this magnitude: the relaxation overflows")
    return out
