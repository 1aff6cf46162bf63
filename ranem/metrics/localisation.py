"""Ground-truth checks on images whose object mask is known (the synthetic dataset).

Faithfulness asks what the *model* uses; these ask whether the attribution finds the *object*.
On ``ranem.data.synthetic`` only the object's pixels carry the class (the clutter is drawn
independently of the label), so a good classifier must look there and a faithful attribution
should too.

- ``pointing_game``: 1 when the single most important pixel lies inside the mask (ties broken by
  the first pixel in row-major order, as the curves do), else 0 (Zhang et al., 2016; no tolerance
  margin).
- ``mass_in_mask``: the share of the attribution mass inside the mask, after per-image min-max
  normalisation to [0, 1] so signed maps and maps with an offset are comparable (the
  "energy-based pointing game"). A map that ignores the image scores about the mask's area.
- ``precision_at_mask``: the share of the ``|mask|`` top-ranked pixels that fall inside the mask;
  depends only on the ranking, like the insertion/deletion curves.
"""
from __future__ import annotations

import torch

from ranem import _checks

__all__ = ["pointing_game", "mass_in_mask", "precision_at_mask"]


def _check(attribution, mask):
    _checks.tensor(attribution, "attribution")
    _checks.tensor(mask, "mask")
    if attribution.is_complex():
        raise TypeError("attribution must hold real numbers, got a complex tensor")
    if attribution.ndim != 3 or attribution.shape != mask.shape:
        raise ValueError("attribution and mask must both be (B, H, W) with the same shape, got "
                         f"{tuple(attribution.shape)} and {tuple(mask.shape)}")
    _checks.finite(attribution, "attribution")
    m = mask.reshape(mask.shape[0], -1).bool()
    if not bool(m.any(dim=1).all()):
        raise ValueError("every mask must contain at least one pixel")
    return attribution.reshape(attribution.shape[0], -1).float(), m.to(attribution.device)


def pointing_game(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) 1.0 where the top pixel of the attribution lies inside the mask, else 0.0."""
    a, m = _check(attribution, mask)
    top = a.argmax(dim=1, keepdim=True)  # the first maximum in row-major order, as the stable sort's
    return m.gather(1, top)[:, 0].float()


def mass_in_mask(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) share of the min-max-normalised attribution inside the mask (constant maps: mask area)."""
    a, m = _check(attribution, mask)
    lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
    a = torch.where(hi > lo, (a - lo) / (hi - lo).clamp(min=torch.finfo(a.dtype).tiny), torch.ones_like(a))
    return (a * m).sum(1) / a.sum(1)


def precision_at_mask(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) share of the ``|mask|`` top-ranked pixels that lie inside the mask."""
    a, m = _check(attribution, mask)
    order = a.argsort(dim=1, descending=True, stable=True)
    size = m.sum(1)
    rank_ok = torch.arange(a.shape[1], device=a.device)[None] < size[:, None]
    return (m.gather(1, order) & rank_ok).sum(1).float() / size.float()
