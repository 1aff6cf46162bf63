"""The attribution methods Ra-NEM is compared with, behind one interface and a registry.

Every method is ``explain(model, x, target=None, **options) -> (B, H, W)``: ``x`` is a batch of
normalised float images or of uint8 images (normalised with the model's mean/std, as
``ranem.train`` does), ``target`` a class per image (default: the model's top-1), higher = more
important, on x's device. Every method takes ``batch_size`` (at most that many images explained at
once; the maps do not depend on it), and the slow ones (RISE, IBA, Smooth Pixel Mask, Integrated
Gradients, Grad-SHAP) ``progress=True`` for a tqdm bar. The NEMs explain the model's top-1 class
and refuse any other ``target``.

>>> from ranem.baselines import explain, get_explainer, EXPLAINERS
>>> maps = explain("rise", model, x)                       # by name, default options
>>> rise = get_explainer("rise", settings=S)               # options of a run mode (fewer masks on CPU)
>>> maps = rise(model, x)

Names: saliency, integrated_gradients, gradient_shap, grad_cam_pp, rise, smooth_pixel_mask, iba,
ranem, nemt and ranem_insdel (the last three load or train a NEM for the model through
``ranem.nem``; imported only when asked for, so the registry works without them). ranem_insdel is
this project's extension of Ra-NEM (insertion and deletion terms in the loss), not the paper's.
"""
from __future__ import annotations

import functools

from ranem.baselines.extremal import smooth_pixel_mask
from ranem.baselines.gradcam import find_target_layer, grad_cam_pp
from ranem.baselines.gradients import gradient_shap, integrated_gradients, saliency
from ranem.baselines.iba import iba, input_statistics
from ranem.baselines.nems import nemt, ranem, ranem_insdel
from ranem.baselines.rise import rise, rise_masks

__all__ = ["EXPLAINERS", "DISPLAY_NAMES", "FAMILIES", "get_explainer", "explain", "saliency",
           "integrated_gradients", "gradient_shap", "grad_cam_pp", "rise", "rise_masks", "smooth_pixel_mask",
           "iba", "input_statistics", "find_target_layer", "ranem", "ranem_insdel", "nemt"]

EXPLAINERS = {
    "saliency": saliency,
    "integrated_gradients": integrated_gradients,
    "gradient_shap": gradient_shap,
    "grad_cam_pp": grad_cam_pp,
    "rise": rise,
    "smooth_pixel_mask": smooth_pixel_mask,
    "iba": iba,
    "nemt": nemt,
    "ranem": ranem,
    "ranem_insdel": ranem_insdel,
}

DISPLAY_NAMES = {
    "saliency": "Saliency", "integrated_gradients": "Integrated Gradients", "gradient_shap": "Grad-SHAP",
    "grad_cam_pp": "Grad-CAM++", "rise": "RISE", "smooth_pixel_mask": "Smooth Pixel Mask", "iba": "IBA",
    "nemt": "NEMt", "ranem": "Ra-NEM", "ranem_insdel": "Ra-NEM ins+del (ours)",
}

# Gradient methods read the model's gradient; occlusion methods only its outputs on masked
# inputs; NEMs predict a mask with a trained network. "set" = set-of-features explanation.
FAMILIES = {
    "saliency": "gradient", "integrated_gradients": "gradient", "gradient_shap": "gradient",
    "grad_cam_pp": "gradient", "rise": "occlusion", "smooth_pixel_mask": "occlusion (set)",
    "iba": "occlusion", "nemt": "NEM (set)", "ranem": "NEM", "ranem_insdel": "NEM",
}

_ALIASES = {
    "ig": "integrated_gradients", "gradshap": "gradient_shap", "grad_shap": "gradient_shap",
    "gradcam++": "grad_cam_pp", "gradcampp": "grad_cam_pp", "grad-cam++": "grad_cam_pp",
    "smooth_mask": "smooth_pixel_mask", "extremal_perturbation": "smooth_pixel_mask", "ra-nem": "ranem",
    "ra_nem": "ranem",
}


def _settings_options(name: str, settings) -> dict:
    """The options a run mode sets for a method (its cost knobs)."""
    if settings is None:
        return {}
    table = {
        "integrated_gradients": {"steps": "ig_steps"},
        "rise": {"masks": "rise_masks"},
        "smooth_pixel_mask": {"iterations": "mask_iterations"},
        "iba": {"draws": "iba_draws"},
    }
    return {opt: getattr(settings, field) for opt, field in table.get(name, {}).items() if hasattr(settings, field)}


def canonical_name(name: str) -> str:
    """Registry key of ``name`` (case, spaces and the aliases in ``_ALIASES`` forgiven)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in EXPLAINERS:
        by_display = {v.lower(): k for k, v in DISPLAY_NAMES.items()}
        key = by_display.get(name.strip().lower(), key)
    if key not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; expected one of {', '.join(EXPLAINERS)}")
    return key


def get_explainer(name: str, settings=None, **options):
    """The explainer registered as ``name``, as ``f(model, x, target=None)``, with the cost options
    of ``settings`` (a ``ranem.config.Settings``) and then ``options`` bound to it."""
    key = canonical_name(name)
    bound = {**_settings_options(key, settings), **options}
    fn = EXPLAINERS[key]
    if not bound:
        return fn
    partial = functools.partial(fn, **bound)
    functools.update_wrapper(partial, fn)
    return partial


def explain(name: str, model, x, target=None, **options):
    """Attributions (B, H, W) of ``model`` on ``x`` by the method registered as ``name``."""
    return get_explainer(name, **options)(model, x, target)
