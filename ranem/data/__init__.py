"""Datasets: synthetic shapes with ground-truth object masks, and Imagenette.

Two sources of images feed the book:

- ``synthetic``: one coloured shape per image on a cluttered, textured background. The clutter is
  drawn independently of the label and never contains a class shape, so only the pixels inside the
  object mask decide the class: an attribution that points outside the mask points at noise.
- Imagenette (fast.ai's 10-class subset of ImageNet), in any of its published layouts, downloaded
  on demand. ``imagenette_arrays`` decodes a split once and caches it as uint8 safetensors, so every
  later call (and every chapter) loads it in a fraction of a second.

Images leave this module in [0, 1] (or uint8); models receive them normalised by ``normalize``.
"""
from ranem.data.imagenette import (  # noqa: F401
    IMAGENETTE_ARCHIVES, IMAGENETTE_CLASSES, IMAGENETTE_IMAGENET_INDEX, IMAGENETTE_LAYOUTS,
    IMAGENETTE_WNIDS, Imagenette, download_imagenette, find_imagenette, imagenette_arrays,
    mean_std_for, transform_for,
)
from ranem.data.evaluation import evaluation_images  # noqa: F401
from ranem.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_VERSION, SyntheticShapes, synthetic  # noqa: F401
from ranem.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize  # noqa: F401

__all__ = [
    "SYNTHETIC_CLASSES", "SYNTHETIC_VERSION", "synthetic", "SyntheticShapes",
    "IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize",
    "IMAGENETTE_WNIDS", "IMAGENETTE_CLASSES", "IMAGENETTE_IMAGENET_INDEX", "IMAGENETTE_LAYOUTS",
    "IMAGENETTE_ARCHIVES", "find_imagenette", "download_imagenette", "Imagenette",
    "imagenette_arrays", "mean_std_for", "transform_for", "evaluation_images",
]

