"""Grad-CAM++ (Chattopadhay et al., 2018), our implementation, for timm CNNs and ViTs.

With activations A^k of a feature layer and g = dY^c/dA of the target logit Y^c, taking the class
score as exp(Y^c) turns the second and third derivatives into powers of g, so that

    alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)        (0 where g = 0)
    w^k        = sum_ij alpha^k_ij relu(g^k_ij)
    map        = relu(sum_k w^k A^k), bilinearly upsampled to the input size.

One forward and one backward pass per batch. The gradient is taken with ``torch.autograd.grad``
on the activation captured by a forward hook; the hook lives only inside a ``try/finally``, so
it is removed even when the forward pass raises.

Target layer, found automatically (or pass ``layer=`` a module or its dotted name):
- CNNs: the last feature stage that timm reports in ``model.feature_info`` (ResNet ``layer4``,
  ConvNeXt ``stages.3``, ...), as the authors did.
- ViTs (``model.blocks`` + ``num_prefix_tokens``): ``blocks[-1].norm1`` (the authors' choice); its
  tokens, without the class/register tokens, are reshaped to the patch grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ranem import _checks
from ranem.baselines._common import check_maps, chunked, frozen, model_input, pick, resolve_target

__all__ = ["grad_cam_pp", "find_target_layer", "hooked_activation"]


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed")


def find_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM++ reads: ViT ``blocks[-1].norm1``, else timm's last feature stage."""
    _checks.module(model)
    if _is_vit(model):
        return model.blocks[-1].norm1
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        return model.get_submodule(last["module"])
    raise ValueError(
        f"cannot find a target layer in {type(model).__name__}: it has no timm feature_info; "
        "pass layer= a module (or its dotted name) whose output is a (B, C, h, w) feature map")


def _as_feature_map(act: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, C, h, w) view of a layer output: CNN maps as they are (channels-last ones permuted),
    ViT tokens without the prefix tokens reshaped to the patch grid."""
    if act.ndim == 3:  # (B, N, D) tokens
        prefix = getattr(model, "num_prefix_tokens", 0)
        tokens = act[:, prefix:]
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        n = tokens.shape[1]
        h, w = grid if grid is not None and grid[0] * grid[1] == n else (int(n**0.5), n // max(1, int(n**0.5)))
        if h * w != n:
            raise ValueError(f"cannot reshape {n} tokens to a square grid; pass a layer with a 2-D output")
        return tokens.transpose(1, 2).reshape(act.shape[0], -1, h, w)
    if act.ndim == 4:
        channels = None
        info = getattr(model, "feature_info", None)
        if info:
            channels = (info[-1] if isinstance(info, list) else info.info[-1]).get("num_chs")
        if channels is not None and act.shape[1] != channels and act.shape[-1] == channels:
            return act.permute(0, 3, 1, 2)  # NHWC stages (Swin and friends)
        return act
    raise ValueError(f"the target layer's output must be (B, C, h, w) or (B, tokens, D), got {tuple(act.shape)}")


class hooked_activation:
    """Context manager: capture ``layer``'s output during forwards; the hook is always removed."""

    def __init__(self, layer: nn.Module):
        self.layer, self.value, self._handle = layer, None, None

    def __enter__(self):
        def hook(module, inputs, output):
            self.value = output[0] if isinstance(output, (tuple, list)) else output
        self._handle = self.layer.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._handle = None
        return False


def _resolve_layer(model: nn.Module, layer) -> nn.Module:
    if layer is None:
        return find_target_layer(model)
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer={layer!r} is not a submodule of {type(model).__name__}") from None
    if isinstance(layer, nn.Module):
        return layer
    raise TypeError(f"layer must be None, a module or a dotted module name, got {type(layer).__name__}")


def cam_from_gradients(act: torch.Tensor, grad: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The Grad-CAM++ map (B, h, w) from activations and gradients (B, C, h, w)."""
    g2 = grad.pow(2)
    g3 = g2 * grad
    total = act.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + eps)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * act).sum(dim=1).clamp(min=0)


def grad_cam_pp(model, x, target=None, layer=None, batch_size: int | None = None) -> torch.Tensor:
    """Grad-CAM++ maps (B, H, W) of ``target`` (default: top-1) at the input resolution; x is cast
    to the model's dtype first. ``batch_size`` images per forward/backward (None: all)."""
    x = model_input(model, x)
    module = _resolve_layer(model, layer)
    target = resolve_target(model, x, target, batch_size)
    return check_maps(chunked(lambda xb, tb, offset: _cam(model, module, xb, tb), x, target, batch_size),
                      x, "grad_cam_pp")


def _cam(model, module, x, target):
    with frozen(model), torch.enable_grad(), hooked_activation(module) as hook:
        inputs = x.detach().clone().requires_grad_(True)  # so activations carry a graph
        logits = model(inputs)
        if hook.value is None:
            raise ValueError(f"the target layer {type(module).__name__} was not called in the forward pass")
        act = hook.value
        grad, = torch.autograd.grad(pick(logits, target).sum(), act)
    fmap, fgrad = _as_feature_map(act.detach(), model), _as_feature_map(grad, model)
    cam = cam_from_gradients(fmap.float(), fgrad.float())
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam.to(x.dtype)
