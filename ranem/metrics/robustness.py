"""Robustness and randomisation of attributions: Average Sensitivity, MPRT, Spearman correlation.

An *explainer* here is any ``f(model, x, target=None) -> (B, H, W)`` (see ``ranem.baselines``).

- ``avg_sensitivity`` (Yeh et al., 2019), as the Ra-NEM authors computed it: for S perturbed
  copies x + u, u ~ U(-r, r) independently per value of the *normalised* tensor (r = 0.2), the
  label is re-predicted on each noisy input, the maps are min-max normalised per image, and
  sensitivity = mean_s ||e(x) - e(x + u_s)||_F / ||e(x)||_F. Lower = more robust. All S x B noisy
  inputs are explained in batches. A constant map normalises to zeros; 0 / 0 counts as 0, and
  a changed map over a constant clean one is undefined (NaN, where Quantus would give inf).
- ``mprt`` (Adebayo et al., 2018), the cascading model-parameter randomisation test: a copy of the
  model has its layers re-initialised from the top (output) down, every module that has a
  ``reset_parameters``, as Quantus does; the score is the Spearman rank correlation between the
  attribution of the original and of the randomised model, per image. The default returns the
  fully randomised model's correlation (what the authors report); ``per_layer=True`` also returns
  one correlation per randomised layer. A score near 0 = the explanation depends on the model
  (the test is passed); near 1 = it ignores the model. For NEMs the *explained* model (the
  encoder) is randomised and the trained decoder kept: the explainer receives the randomised model.
- ``spearman``: rank correlation per row with average ranks for ties, batched (equals
  ``scipy.stats.spearmanr``; NaN when a row is constant, as scipy).

Images are cast to the model's parameter dtype on entry (the package's dtype rule, see
``ranem.baselines._common``). Every map an explainer returns must be a finite (n, H, W) tensor
for its n images, else a ValueError names the explainer's fault: a NaN map would otherwise
normalise to zeros and score as perfectly robust.
"""
from __future__ import annotations

import copy

import torch

from ranem import _checks

__all__ = ["spearman", "rank_average", "avg_sensitivity", "mprt", "randomised_copy", "normalise_maps"]


def _as_rows(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, ...), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a complex tensor")
    return t.reshape(t.shape[0], -1) if t.ndim > 1 else t[None]


def rank_average(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of each row of ``v`` (B, n), tied values sharing their average rank."""
    if not isinstance(v, torch.Tensor) or v.ndim != 2 or v.is_complex():
        raise ValueError(f"v must be a real (B, n) tensor, got {tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}")
    b, n = v.shape
    s, order = v.sort(dim=1, stable=True)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    group = starts.long().cumsum(1) - 1 + torch.arange(b, device=v.device)[:, None] * n
    pos = torch.arange(1, n + 1, device=v.device, dtype=torch.float64).expand(b, n).reshape(-1)
    sums = torch.zeros(b * n, device=v.device, dtype=torch.float64).scatter_add_(0, group.reshape(-1), pos)
    counts = torch.zeros(b * n, device=v.device, dtype=torch.float64).scatter_add_(
        0, group.reshape(-1), torch.ones_like(pos))
    sorted_ranks = (sums / counts.clamp(min=1))[group.reshape(-1)].view(b, n)
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation (B,) between each pair of rows of ``a`` and ``b`` (B, ...)."""
    a, b = _as_rows(a, "a"), _as_rows(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] < 2:
        raise ValueError("spearman needs at least 2 values per row")
    for t, name in ((a, "a"), (b, "b")):
        if bool(torch.isnan(t).any()):
            raise ValueError(f"{name} must not contain NaN")
    ra, rb = rank_average(a.detach()), rank_average(b.detach())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    corr = (ra * rb).sum(1) / denom
    return torch.where(denom > 0, corr, torch.full_like(corr, float("nan"))).float()


def normalise_maps(maps: torch.Tensor, how: str | None = "minmax") -> torch.Tensor:
    """Per-map normalisation: "minmax" to [0, 1] (constant maps -> 0), "max" divides by the largest
    absolute value (Quantus's default), None leaves the maps as they are. Maps must be finite."""
    flat = _as_rows(maps, "maps").float()
    if flat.shape[1] == 0:
        raise ValueError(f"maps must hold at least one value per map, got shape {tuple(maps.shape)}")
    _checks.finite(flat, "maps")  # min/max over a NaN is NaN, and NaN > 0 is False
    if how is None:
        return flat
    if how == "minmax":
        lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        span = hi - lo
        return torch.where(span > 0, (flat - lo) / span.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    if how == "max":
        top = flat.abs().max(1, keepdim=True).values
        return torch.where(top > 0, flat / top.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    raise ValueError(f"normalise must be 'minmax', 'max' or None, got {how!r}")


def _check_common(explainer, model, x) -> torch.Tensor:
    """Check the arguments every metric takes; return x in the model's dtype."""
    from ranem.baselines._common import model_input
    if not callable(explainer):
        raise TypeError(f"explainer must be callable f(model, x, target=None), got {type(explainer).__name__}")
    return model_input(model, x)


def _explain_in_batches(explainer, model, x, target, batch_size):
    """The explainer's maps (B, H, W) for x, ``batch_size`` images per call, each result checked."""
    from ranem.baselines._common import check_maps
    name = getattr(explainer, "__name__", type(explainer).__name__)
    # A NEM explains the top-1 of the model it is given (its decoder was trained for it) and refuses
    # other targets; the MPRT's randomised model has another top-1, so NEMs get no target at all.
    own_label = getattr(explainer, "predicts_label", False)
    maps = []
    for i in range(0, x.shape[0], batch_size):
        part = x[i:i + batch_size]
        t = None if own_label else target[i:i + batch_size]
        maps.append(check_maps(explainer(model, part, t), part, f"the explainer {name}"))
    return torch.cat(maps)


def avg_sensitivity(explainer, model, x, target=None, samples: int = 30, radius: float = 0.2, seed: int = 0,
                    normalise: str | None = "minmax", repredict: bool = True, batch_size: int | None = None
                    ) -> torch.Tensor:
    """Average Sensitivity (B,) of ``explainer`` on ``x``: lower = more robust to small noise.

    ``repredict``: explain the label the model predicts on each noisy input (the authors' choice);
    otherwise keep ``target``. ``batch_size`` inputs per explainer call (default: B).
    """
    from ranem.baselines._common import predict, resolve_target
    x = _check_common(explainer, model, x)
    _checks.integer(samples, "samples")
    _checks.integer(seed, "seed", minimum=0)
    radius = _checks.number(radius, "radius", low=0)
    normalise_maps(x[:1, 0], normalise)  # validates `normalise` early
    b = x.shape[0]
    batch_size = _checks.integer(batch_size or b, "batch_size")
    target = resolve_target(model, x, target)
    base = normalise_maps(_explain_in_batches(explainer, model, x, target, batch_size), normalise)
    generator = torch.Generator().manual_seed(seed)  # CPU draws: same noise on every device
    u = (torch.rand((samples,) + tuple(x.shape), generator=generator, dtype=torch.float32) * 2 - 1) * radius
    noisy = (x[None] + u.to(device=x.device, dtype=x.dtype)).flatten(0, 1)  # (S * B, C, H, W), sample-major
    labels = predict(model, noisy) if repredict else target.repeat(samples)
    maps = _explain_in_batches(explainer, model, noisy, labels, batch_size)
    maps = normalise_maps(maps, normalise).view(samples, b, -1)
    num = (maps - base[None]).norm(dim=2)
    den = base.norm(dim=1)[None].expand_as(num)
    nan = torch.full_like(num, float("nan"))
    ratio = torch.where(den > 0, num / den.clamp(min=torch.finfo(num.dtype).tiny), nan)
    return torch.where(num == 0, torch.zeros_like(num), ratio).mean(0)


def _reset_top_down(model, seed: int, start: int, stop: int | None) -> None:
    """Re-initialise the parametrised modules number start..stop-1 counted from the top (output),
    module j under the seed ``seed + j``, keeping the caller's global random state."""
    modules = [m for _, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for j in range(start, len(modules) if stop is None else min(stop, len(modules))):
            torch.manual_seed(seed + j)
            modules[j].reset_parameters()


def _parametrised(model) -> int:
    return sum(1 for m in model.modules() if hasattr(m, "reset_parameters"))


def randomised_copy(model, seed: int = 0, layers: int | None = None):
    """Deep copy of ``model`` in eval mode with its ``layers`` top-most parametrised modules (all by
    default; more than the model has means all) re-initialised by their own ``reset_parameters``,
    seeded. A copy that would randomise nothing (layers < 1, or no module to reset) is refused:
    a randomisation test would then pass a model that was never randomised."""
    _checks.module(model)
    _checks.integer(seed, "seed", minimum=0)
    if layers is not None:
        _checks.integer(layers, "layers")
    if not _parametrised(model):
        raise ValueError(f"{type(model).__name__} has no module with reset_parameters to randomise")
    clone = copy.deepcopy(model).eval()
    _reset_top_down(clone, seed, 0, layers)
    return clone


def mprt(explainer, model, x, target=None, seed: int = 0, per_layer: bool = False, abs: bool = False,
         batch_size: int | None = None):
    """Model-parameter randomisation test: Spearman correlation (B,) between the attributions of
    ``model`` and of its fully randomised copy. With ``per_layer=True`` returns
    ``(last, layer_names, correlations (L, B))`` for the cascade, top layer first; its last row is
    the fully randomised model. ``abs=True`` ranks absolute attributions (Quantus's default)."""
    from ranem.baselines._common import resolve_target
    x = _check_common(explainer, model, x)
    if x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"mprt correlates pixel rankings: x needs at least 2 pixels per image, got {tuple(x.shape[2:])}")
    _checks.integer(seed, "seed", minimum=0)
    batch_size = _checks.integer(batch_size or x.shape[0], "batch_size")
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    if not names:
        raise ValueError(f"{type(model).__name__} has no module with reset_parameters to randomise")
    target = resolve_target(model, x, target)

    def attribution(m):
        maps = _explain_in_batches(explainer, m, x, target, batch_size)
        return maps.abs() if abs else maps

    original = attribution(model)
    if not per_layer:
        return spearman(original, attribution(randomised_copy(model, seed)))
    clone = copy.deepcopy(model).eval()
    correlations = []
    for j in range(len(names)):
        _reset_top_down(clone, seed, j, j + 1)
        correlations.append(spearman(original, attribution(clone)))
    return correlations[-1], names, torch.stack(correlations)
