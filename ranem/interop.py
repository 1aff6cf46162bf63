"""Adapters that let code written for Captum or Quantus use ``ranem``'s explainers.

- ``NEMAttribution(nem)``: a Captum ``Attribution`` for a trained Ra-NEM or NEMt, so
  ``captum.metrics.sensitivity_max``/``infidelity`` and any code that calls
  ``method.attribute(inputs, target=...)`` work with a NEM. Captum's conventions apply: ``inputs``
  is a tensor or a tuple holding one image tensor, and the result has the structure and the shape
  of ``inputs`` (the pixel's value repeated on every channel).
- ``quantus_explain_func(method)``: an ``explain_func(model, inputs, targets, **kwargs) -> ndarray``
  as Quantus metrics take it, for any explainer of the registry (or any ``f(model, x, target)``).

Targets: a NEM explains the classifier's top-1 class, the one its decoder was trained for. Both
here and in ``NEM.explain``/``ranem.explain("ranem", ...)``, ``target=None`` or a target equal to
the top-1 of every image is accepted, and any other target is refused with a ValueError that
names the images concerned; nothing is silently explained for a class the caller did not ask for.
Captum's metrics re-run the explainer on perturbed inputs, whose top-1 can change: call them with
``target=None`` for a NEM.
"""
from __future__ import annotations

import numpy as np
import torch
from captum.attr import Attribution

from ranem.nem import NEM

__all__ = ["NEMAttribution", "quantus_explain_func"]


def _one_tensor(inputs, name: str = "inputs") -> tuple[torch.Tensor, bool]:
    """(the image tensor, whether it came inside a tuple), for Captum's tensor-or-tuple inputs."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
            raise ValueError(f"{name} must be a tensor (B, C, H, W) or a tuple holding one such tensor "
                             f"(a NEM explains images, one input), got a tuple of {len(inputs)} items")
        return inputs[0], True
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W) or a 1-tuple of one, got {type(inputs).__name__}")
    return inputs, False


class NEMAttribution(Attribution):
    """Captum ``Attribution`` of a trained NEM (``RaNEM``, ``NEMt``, ``RaNEMInsDel``).

    ``attribute(inputs, target=None, batch_size=None)`` returns the NEM's attribution expanded to
    the shape of ``inputs`` (a tensor, or a 1-tuple when a tuple was given, as Captum methods do).
    ``forward_func`` is the NEM's classifier, so Captum's metrics (``infidelity``) score the model
    the NEM explains.
    """

    def __init__(self, nem: NEM):
        if not isinstance(nem, NEM):
            raise TypeError(f"nem must be a trained ranem.nem.NEM (RaNEM, NEMt), got {type(nem).__name__}")
        super().__init__(nem.classifier)
        self.nem = nem

    def attribute(self, inputs, target=None, additional_forward_args=None, batch_size: int | None = None):
        """Attributions shaped like ``inputs``; ``target`` must be None or the top-1 of every image."""
        if additional_forward_args is not None:
            raise ValueError("additional_forward_args must be None: a NEM's classifier takes the images only")
        x, as_tuple = _one_tensor(inputs)
        maps = self.nem.explain(x, target, batch_size=batch_size)
        # A real copy per channel, not an expanded view: Captum's metrics .view() the result.
        out = maps.to(x.dtype if x.is_floating_point() else maps.dtype).unsqueeze(1).repeat(1, x.shape[1], 1, 1)
        return (out,) if as_tuple else out

    def has_convergence_delta(self) -> bool:
        return False  # no completeness axiom to check, unlike Integrated Gradients


def _as_batch(inputs, model) -> torch.Tensor:
    """Quantus hands NumPy arrays (B, C, H, W); the model runs on its own device."""
    if isinstance(inputs, torch.Tensor):
        x = inputs
    else:
        try:
            x = torch.from_numpy(np.ascontiguousarray(inputs))
        except TypeError:
            raise TypeError(f"inputs must be a NumPy array or a tensor (B, C, H, W), got {type(inputs).__name__}") from None
    param = next((p for p in model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return x.to(param.device) if param is not None else x


def _as_targets(targets, x: torch.Tensor):
    if targets is None:
        return None
    t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    return t.to(x.device)


def quantus_explain_func(method="ranem", **options):
    """An ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray`` for Quantus metrics.

    ``method``: a registry name (``"rise"``, ``"ranem"``...; ``options`` are bound to it as by
    ``ranem.get_explainer``) or any callable ``f(model, x, target)``. The function converts
    Quantus's NumPy batch (B, C, H, W) to a tensor on the model's device, explains ``targets``
    (a NEM accepts only the model's own predictions, see the module docstring) and returns float32
    maps (B, 1, H, W): one channel, which Quantus broadcasts over the image's channels. Extra
    keyword arguments Quantus passes (``device``, ``softmax``...) are accepted and ignored.
    """
    if callable(method):
        if options:
            raise ValueError("options can only be bound to a registry name; bind them to your callable yourself")
        explainer = method
    else:
        from ranem.baselines import get_explainer
        explainer = get_explainer(method, **options)

    def explain_func(model, inputs, targets, **kwargs) -> np.ndarray:
        x = _as_batch(inputs, model)
        maps = explainer(model, x, _as_targets(targets, x))
        return maps.detach().float().cpu().numpy()[:, None]

    explain_func.__name__ = f"explain_{getattr(explainer, '__name__', 'custom')}"
    return explain_func
