"""RISE (Petsiuk et al., 2018): randomised input sampling, our batched implementation.

N random binary grids of ``grid`` x ``grid`` cells, each cell kept with probability ``p``, are
upsampled bilinearly to (grid + 1) * cell pixels (cell = ceil(H / grid)) and cropped at a random
shift in [0, cell), which gives smooth masks whose cell borders do not all fall on the same
pixels. The saliency of pixel u for class c is the mask-weighted mean of the class probability,

    S(u) = 1 / (N p) * sum_i f_c(x * M_i + b * (1 - M_i)) * M_i(u),

with f_c the softmax probability and b the baseline (0 on the normalised tensor = dataset mean).
By default (``normalise="coverage"``) we divide by each pixel's realised coverage sum_i M_i(u)
instead of its expectation N p: the self-normalised estimate of the same quantity, E[f_c | u
visible]. The sampled masks never cover all pixels equally, and with the N p denominator that
uneven coverage is printed into every map computed with the same masks, whatever the model: two
maps of a seeded RISE then agree because they share masks, not because they share evidence (it
would, for instance, inflate the randomisation test). ``normalise="p"`` gives the original
estimator, as in the reference implementation.
Cost: N forward passes per image. Masks are drawn in blocks of ``MASK_BLOCK`` from a seeded
generator (never all N at once) and shared by all images of the batch; every chunk of at most
``batch_size`` masked images goes through the model as one batch, so memory stays bounded
whatever N, and a GPU sees large batches instead of one forward per mask. (For RISE, unlike the
other explainers, ``batch_size`` counts masked images per forward, not images per call; more
images than that are explained in slices, with the same masks.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ranem import _checks
from ranem.baselines._common import check_maps, frozen, model_input, pick, resolve_target

__all__ = ["rise", "rise_masks", "MASK_BLOCK"]

MASK_BLOCK = 128  # masks drawn per generator call; fixed so that results never depend on batch_size


def rise_masks(n: int, size, grid: int = 7, p: float = 0.5, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
    """``n`` RISE masks (n, H, W) with values in [0, 1]; ``size`` = (H, W) or an int."""
    _checks.integer(n, "n")
    _checks.integer(grid, "grid")
    _checks.probability(p, "p")
    h, w = _checks.size_pair(size)
    device = _checks.device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator, device=gen_device) < p).to(dtype)
    up = F.interpolate(cells.to(device), size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(0, cell_h, (n,), generator=generator, device=gen_device).to(up.device)
    dx = torch.randint(0, cell_w, (n,), generator=generator, device=gen_device).to(up.device)
    rows = dy[:, None] + torch.arange(h, device=up.device)  # (n, H)
    cols = dx[:, None] + torch.arange(w, device=up.device)  # (n, W)
    idx = torch.arange(n, device=up.device)[:, None, None]
    return up[idx, rows[:, :, None], cols[:, None, :]].clamp_(0, 1)  # bilinear rounding can overshoot 1


@torch.no_grad()
def rise(model, x, target=None, masks: int = 4096, grid: int = 7, p: float = 0.5, batch_size: int = 256,
         seed: int = 0, baseline: float = 0.0, normalise: str = "coverage", progress: bool = False) -> torch.Tensor:
    """RISE saliency (B, H, W) of ``target`` (default: top-1): ``masks`` forwards per image.
    ``baseline``: the value of hidden pixels (finite). x is cast to the model's dtype first."""
    x = model_input(model, x)
    _checks.integer(masks, "masks")
    _checks.integer(grid, "grid")
    baseline = _checks.number(baseline, "baseline")
    _checks.integer(batch_size, "batch_size")
    _checks.integer(seed, "seed", minimum=0)
    _checks.probability(p, "p")
    if normalise not in ("coverage", "p"):
        raise ValueError(f"normalise must be 'coverage' or 'p', got {normalise!r}")
    target = resolve_target(model, x, target, batch_size)
    if x.shape[0] > batch_size:  # more images than one forward may hold: slices, same masks (same seed)
        return torch.cat([rise(model, x[i:i + batch_size], target[i:i + batch_size], masks, grid, p, batch_size,
                               seed, baseline, normalise, progress) for i in range(0, x.shape[0], batch_size)])
    b, _, h, w = x.shape
    generator = torch.Generator().manual_seed(seed)  # CPU draws: same masks on every device
    saliency = torch.zeros(b, h * w, device=x.device, dtype=torch.float32)
    coverage = torch.zeros(h * w, device=x.device, dtype=torch.float32)
    chunk = max(1, batch_size // b)  # masks per forward: chunk * B <= batch_size masked images
    blocks = range(0, masks, MASK_BLOCK)
    if progress:
        from tqdm.auto import tqdm
        blocks = tqdm(blocks, desc="RISE", leave=False)
    with frozen(model):
        for start in blocks:
            # Masks come in fixed blocks, so the result does not depend on batch_size.
            block = rise_masks(min(MASK_BLOCK, masks - start), (h, w), grid, p, generator, device=x.device,
                               dtype=x.dtype)
            for m in block.split(chunk):
                n = m.shape[0]
                masked = x[:, None] * m[None, :, None] + baseline * (1 - m[None, :, None])  # (B, n, C, H, W)
                probs = model(masked.flatten(0, 1)).float().softmax(dim=1)
                score = pick(probs, target.repeat_interleave(n)).view(b, n)
                saliency += score @ m.flatten(1).float()
            coverage += block.flatten(1).float().sum(0)
    denominator = coverage.clamp(min=1e-12) if normalise == "coverage" else masks * p
    return check_maps((saliency / denominator).view(b, h, w).to(x.dtype), x, "rise")
