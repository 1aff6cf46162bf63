"""The book's held-out evaluation images: one draw, shared by every chapter that scores attributions.

Imagenette's validation split is stored class by class, so its first images are all tench. The
evaluation set is the first ``n`` images of one seeded permutation of the split instead: it spans
the ten classes, and the same ``n`` and ``seed`` give the same images at every image size, so a CNN
fed 144 px and a ViT fed 64 px are scored on the same photographs. No NEM ever trains on them (the
NEMs train on the train split).
"""
from __future__ import annotations

import torch

from ranem import _checks
from ranem.data.imagenette import imagenette_arrays

__all__ = ["evaluation_images"]


def evaluation_images(n: int, size: int, seed: int = 0, limit: int = 0, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (n, 3, size, size), labels (n,))``: the first ``n`` images of the seeded
    permutation of Imagenette's validation split (``limit`` > 0: of its balanced subset of that
    many images, as ``imagenette_arrays`` draws it). Normalise with the classifier's mean/std."""
    n = _checks.integer(n, "n")
    images, labels = imagenette_arrays("val", size, limit=limit, root=root)
    if n > len(labels):
        raise ValueError(f"n must be at most the {len(labels)} validation images available, got {n}")
    seed = _checks.integer(seed, "seed", minimum=0)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[order], labels[order]
