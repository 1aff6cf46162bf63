"""Synthetic shapes: one bright shape per image on dark, label-free clutter, with its exact mask."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ranem import _checks
from ranem.data.transforms import normalize

# --------------------------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
# Bumped whenever synthetic() would return different images for the same arguments; caches of
# anything trained on synthetic data should include it in their key.
SYNTHETIC_VERSION = 2

# Every shape lives in local coordinates (u, v) scaled so that it fits inside the unit disc; the
# object's "scale" is that disc's diameter as a fraction of the image side.
_SQRT3 = 3.0 ** 0.5


def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 0.5 ** 0.5  # corners on the unit circle


def _triangle(u, v):
    # Equilateral, vertices on the unit circle: three half-planes at distance 1/2 from the centre.
    return (-v <= 0.5) & (0.5 * _SQRT3 * u + 0.5 * v <= 0.5) & (-0.5 * _SQRT3 * u + 0.5 * v <= 0.5)


def _cross(u, v):
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _star(u, v, points: int = 5, inner: float = 0.45):
    # Fold the angle into one half-spike, then test against the edge from the tip (1, 0) to the
    # inner vertex at angle pi/points: the side of that line holding the origin is inside.
    half = torch.pi / points
    phi = torch.atan2(v, u).remainder(2 * half)
    phi = (phi - half).abs().neg_().add_(half)  # distance in angle to the nearest tip, in [0, half]
    r = torch.sqrt(u * u + v * v)
    x, y = r * torch.cos(phi), r * torch.sin(phi)
    ix, iy = inner * np.cos(half), inner * np.sin(half)
    # cross product of (tip -> inner) with (tip -> point) is >= 0 on the origin's side
    return (ix - 1.0) * y - iy * (x - 1.0) >= 0.0


_SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle,
           "cross": _cross, "ring": _ring, "star": _star}


def _upsampler(coarse: int, size: int) -> torch.Tensor:
    """(size, coarse) matrix of bilinear interpolation (align_corners=False): A @ Z @ A.T upsamples
    a coarse grid Z with two small matrix products, far cheaper than F.interpolate on a CPU."""
    src = ((torch.arange(size, dtype=torch.float64) + 0.5) * coarse / size - 0.5).clamp(0, coarse - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp_max(coarse - 1)
    w = src - lo
    a = torch.zeros(size, coarse, dtype=torch.float64)
    a[torch.arange(size), lo] += 1 - w
    a[torch.arange(size), hi] += w
    return a.float()


def _smooth_fields(n: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random smooth fields (n, channels, size, size): coarse Gaussian noise, bilinearly upsampled."""
    coarse = max(4, size // 8)
    a = _upsampler(coarse, size)
    z = torch.randn(n, channels, coarse, coarse, generator=g)
    return a @ z @ a.T


_LINES = 3
# Colours: ground channels in [0, GROUND_MAX], clutter within +-CLUTTER_CONTRAST of the ground.
GROUND_MAX = 0.4
CLUTTER_CONTRAST = 0.15
OBJECT_VALUE_MIN = 0.8
_OBJECT_ID = 3 + _LINES  # layer ids: 0 ground, 1-2 blobs, 3-5 lines, 6 the object


def _clutter_layers(blob_field: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Layer id per pixel (n, S, S) uint8, drawn without the label: irregular blobs (two level sets of
    a smooth random field, never a class shape) and thin line segments on top."""
    n, size = blob_field.shape[0], blob_field.shape[-1]
    hi, lo = (0.6 + 0.5 * torch.rand(2, n, 1, 1, generator=g)).unbind(0)
    ids = (blob_field > hi).to(torch.uint8) + 2 * (blob_field < -lo).to(torch.uint8)
    # Lines are rasterised by scattering points sampled densely along them (no per-pixel distance
    # computation); three offsets across each line give widths of about 1 to 3 pixels.
    ends = torch.rand(n, _LINES, 2, 2, generator=g) * size
    half_width = 0.25 + 0.75 * torch.rand(n, _LINES, 1, 1, generator=g)
    t = torch.linspace(0, 1, 2 * size).view(1, 1, -1, 1)
    offsets = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, -1) * half_width
    p0, d = ends[:, :, 0], ends[:, :, 1] - ends[:, :, 0]                  # (n, L, 2)
    normal = torch.stack([-d[..., 1], d[..., 0]], -1) / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    x = (p0[..., 0, None, None] + t * d[..., 0, None, None] + offsets * normal[..., 0, None, None]).floor()
    y = (p0[..., 1, None, None] + t * d[..., 1, None, None] + offsets * normal[..., 1, None, None]).floor()
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    # Points that fall outside the image are sent to a spare last column, dropped afterwards.
    pixel = torch.where(inside, y * size + x, float(size * size)).long()  # (n, L, T, 3)
    lines = torch.zeros(n, size * size + 1, dtype=torch.uint8)
    for k in range(_LINES):  # later lines cover earlier ones; one value per write: deterministic
        lines.scatter_(1, pixel[:, k].reshape(n, -1), 3 + k)
    lines = lines[:, :-1].view(n, size, size)
    return torch.where(lines > 0, lines, ids)


def _object_masks(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Boolean masks (n, size, size) of one randomly placed, scaled and rotated shape per image."""
    n = labels.numel()
    scale = 0.1 + 0.3 * torch.rand(n, generator=g)             # diameter / side, in [0.1, 0.4]
    radius = scale * size / 2
    centre = radius[:, None] + torch.rand(n, 2, generator=g) * (size - 2 * radius[:, None])
    angle = torch.rand(n, generator=g) * 2 * torch.pi
    # Work in label order, so that each class is one contiguous slice (no scattered copies).
    order = torch.argsort(labels, stable=True)
    radius, centre, angle = radius[order].view(n, 1, 1), centre[order], angle[order].view(n, 1, 1)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (coords.view(1, 1, size) - centre[:, 0].view(n, 1, 1)) / radius    # (n, 1, S)
    dy = (coords.view(1, size, 1) - centre[:, 1].view(n, 1, 1)) / radius    # (n, S, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    counts = torch.bincount(labels, minlength=len(SYNTHETIC_CLASSES)).tolist()
    parts, begin = [], 0
    for name, count in zip(SYNTHETIC_CLASSES, counts):  # a loop over classes, each one batched
        s = slice(begin, begin + count)
        parts.append(_SHAPES[name](cos[s] * dx[s] + sin[s] * dy[s], cos[s] * dy[s] - sin[s] * dx[s]))
        begin += count
    return torch.cat(parts)[torch.argsort(order)]


def synthetic(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` synthetic images with one target shape each.

    Returns ``images`` float32 (n, 3, size, size) in [0, 1], ``labels`` int64 (n,) indexing
    ``SYNTHETIC_CLASSES`` (balanced, shuffled), and ``masks`` bool (n, size, size), exactly the
    object's pixels. The background (irregular blobs and thin lines in colours near a dark random
    ground, under a smooth random illumination) is drawn before and independently of the label;
    the object is brighter than the ground, in a random hue.
    Same ``seed``, same data.
    """
    n, size = _checks.integer(n, "n"), _checks.integer(size, "size", minimum=16)
    g = torch.Generator().manual_seed(_checks.integer(seed, "seed", minimum=0))
    # Background first, from its own draws: nothing in it can depend on the label.
    fields = _smooth_fields(n, 2, size, g)
    light = torch.sigmoid(1.5 * fields[:, 0]).mul_(0.5).add_(0.5).view(n, 1, -1)  # in (0.5, 1)
    # A dark ground and clutter colours close to it: the clutter is busy but of low contrast.
    ground = GROUND_MAX * torch.rand(n, 3, 1, generator=g)
    clutter = ground + CLUTTER_CONTRAST * (2 * torch.rand(n, 3, _OBJECT_ID - 1, generator=g) - 1)
    palette = torch.cat([ground, clutter.clamp(0, 1)], 2)                       # a colour per layer
    ids = _clutter_layers(fields[:, 1], g).view(n, 1, -1).long()
    images = torch.gather(palette, 2, ids.expand(n, 3, -1)).mul_(light)          # (n, 3, S*S)
    labels = torch.arange(n, dtype=torch.int64).remainder_(len(SYNTHETIC_CLASSES))
    labels = labels[torch.randperm(n, generator=g)]
    masks = _object_masks(labels, size, g)
    # A bright object: random hue and saturation, value (largest channel) in [OBJECT_VALUE_MIN, 1].
    # Figure brighter than ground is what lets a small CNN learn the shapes within minutes; with
    # random colours on both sides it stayed at chance (see data/README.md).
    colour = torch.rand(n, 3, generator=g)
    value = OBJECT_VALUE_MIN + (1 - OBJECT_VALUE_MIN) * torch.rand(n, 1, generator=g)
    colour = colour / colour.amax(1, keepdim=True).clamp_min(1e-6) * value
    i, p = masks.view(n, -1).nonzero(as_tuple=True)                              # object pixels only
    images.permute(0, 2, 1)[i, p] = colour[i] * light[i, 0, p, None]
    return images.view(n, 3, size, size), labels, masks


class SyntheticShapes(torch.utils.data.Dataset):
    """``synthetic(n, size, seed)`` as a Dataset of ``(image, label)`` or ``(image, label, mask)``;
    images are normalised with ``mean``/``std`` when given, else left in [0, 1]."""

    def __init__(self, n: int, size: int = 64, seed: int = 0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, return_mask: bool = False):
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        images, self.labels, self.masks = synthetic(n, size, seed)
        self.images = images if mean is None else normalize(images, mean, std)
        self.classes = SYNTHETIC_CLASSES
        self.return_mask = bool(return_mask)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int):
        if self.return_mask:
            return self.images[i], self.labels[i], self.masks[i]
        return self.images[i], self.labels[i]
