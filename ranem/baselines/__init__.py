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
``ranem.zoo``; imported only when asked for, so the registry works without them). ranem_insdel is
this project's extension of Ra-NEM (insertion and deletion terms in the loss), not the paper's.
Also forgrad_saliency, forgrad_integrated_gradients and forgrad_gradient_shap: the three gradient
maps low-pass filtered in the Fourier domain (FORgrad, Muzellec et al., 2024; ``cutoff=``, see
``ranem.baselines.forgrad``). These are reachable by name but not in ``COMPARED``, the methods the
book's chapters 7 and 8 compare, so they enter none of its tables.

The registry holds one ``Explainer`` record per method (``REGISTRY``): its function, display name,
family, aliases and cost options together. ``EXPLAINERS``, ``DISPLAY_NAMES`` and ``FAMILIES`` are
read-only views of it, by name; ``COMPARED`` the names of the compared methods, in registry order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from ranem.baselines.extremal import smooth_pixel_mask
from ranem.baselines.forgrad import forgrad_gradient_shap, forgrad_integrated_gradients, forgrad_saliency, low_pass
from ranem.baselines.gradcam import find_target_layer, grad_cam_pp
from ranem.baselines.gradients import gradient_shap, integrated_gradients, saliency
from ranem.baselines.iba import iba, input_statistics
from ranem.baselines.nems import nemt, ranem, ranem_insdel
from ranem.baselines.rise import rise, rise_masks

__all__ = ["Explainer", "REGISTRY", "EXPLAINERS", "DISPLAY_NAMES", "FAMILIES", "COMPARED", "canonical_name",
           "get_explainer", "explain", "saliency", "integrated_gradients", "gradient_shap", "grad_cam_pp", "rise",
           "rise_masks", "smooth_pixel_mask", "iba", "input_statistics", "find_target_layer", "ranem", "ranem_insdel",
           "nemt", "forgrad_saliency", "forgrad_integrated_gradients", "forgrad_gradient_shap", "low_pass"]


@dataclass(frozen=True)
class Explainer:
    """One registered attribution method.

    ``family``: "gradient" methods read the model's gradient, "occlusion" methods only its outputs
    on masked inputs, "NEM" methods predict a mask with a trained network; "(set)" marks a
    set-of-features explanation. ``aliases``: other spellings ``get_explainer`` accepts (besides
    the display name). ``cost_options``: (option, ``config.Settings`` field) pairs, the knobs a run
    mode sets to bound the method's cost. ``compared``: whether the book's comparison (chapters 7
    and 8, and ``benchmarks/memory.py``) includes the method; False for variants reachable by name
    only, so that registering one changes no table or figure of the book.
    """

    name: str
    fn: Callable
    display_name: str
    family: str
    aliases: tuple[str, ...] = ()
    cost_options: tuple[tuple[str, str], ...] = ()
    compared: bool = True

    def options_for(self, settings) -> dict:
        """The options ``settings`` (a ``ranem.config.Settings``, or None: none) sets for this method."""
        if settings is None:
            return {}
        return {option: getattr(settings, field) for option, field in self.cost_options if hasattr(settings, field)}


REGISTRY = (
    Explainer("saliency", saliency, "Saliency", "gradient"),
    Explainer("integrated_gradients", integrated_gradients, "Integrated Gradients", "gradient", aliases=("ig",),
              cost_options=(("steps", "ig_steps"),)),
    Explainer("gradient_shap", gradient_shap, "Grad-SHAP", "gradient", aliases=("gradshap", "grad_shap")),
    Explainer("grad_cam_pp", grad_cam_pp, "Grad-CAM++", "gradient", aliases=("gradcam++", "gradcampp", "grad-cam++")),
    Explainer("rise", rise, "RISE", "occlusion", cost_options=(("masks", "rise_masks"),)),
    Explainer("smooth_pixel_mask", smooth_pixel_mask, "Smooth Pixel Mask", "occlusion (set)",
              aliases=("smooth_mask", "extremal_perturbation"), cost_options=(("iterations", "mask_iterations"),)),
    Explainer("iba", iba, "IBA", "occlusion", cost_options=(("draws", "iba_draws"),)),
    Explainer("nemt", nemt, "NEMt", "NEM (set)"),
    Explainer("ranem", ranem, "Ra-NEM", "NEM", aliases=("ra-nem", "ra_nem")),
    Explainer("ranem_insdel", ranem_insdel, "Ra-NEM ins+del (ours)", "NEM"),
    Explainer("forgrad_saliency", forgrad_saliency, "FORgrad Saliency", "gradient", compared=False),
    Explainer("forgrad_integrated_gradients", forgrad_integrated_gradients, "FORgrad Integrated Gradients",
              "gradient", aliases=("forgrad_ig",), cost_options=(("steps", "ig_steps"),), compared=False),
    Explainer("forgrad_gradient_shap", forgrad_gradient_shap, "FORgrad Grad-SHAP", "gradient",
              aliases=("forgrad_gradshap",), compared=False),
)

_BY_NAME = {e.name: e for e in REGISTRY}
# Read-only views by name, in registry order (the order tables and figures list the methods in).
EXPLAINERS = MappingProxyType({e.name: e.fn for e in REGISTRY})
DISPLAY_NAMES = MappingProxyType({e.name: e.display_name for e in REGISTRY})
FAMILIES = MappingProxyType({e.name: e.family for e in REGISTRY})
COMPARED = tuple(e.name for e in REGISTRY if e.compared)  # what the book's tables iterate over
# Every other spelling get_explainer accepts -> registry name: aliases, and display names in any case.
_SPELLINGS = {**{e.display_name.lower(): e.name for e in REGISTRY},
              **{alias: e.name for e in REGISTRY for alias in e.aliases}}


def canonical_name(name: str) -> str:
    """Registry name of ``name`` (case, spaces, aliases and display names forgiven)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace(" ", "_")
    key = key if key in _BY_NAME else _SPELLINGS.get(key, _SPELLINGS.get(name.strip().lower()))
    if key is None:
        raise ValueError(f"unknown explainer {name!r}; expected one of {', '.join(_BY_NAME)}")
    return key


def get_explainer(name: str, settings=None, **options):
    """The explainer registered as ``name``, as ``f(model, x, target=None)``, with the cost options
    of ``settings`` (a ``ranem.config.Settings``) and then ``options`` bound to it."""
    record = _BY_NAME[canonical_name(name)]
    bound = {**record.options_for(settings), **options}
    if not bound:
        return record.fn
    partial = functools.partial(record.fn, **bound)
    functools.update_wrapper(partial, record.fn)
    return partial


def explain(name: str, model, x, target=None, **options):
    """Attributions (B, H, W) of ``model`` on ``x`` by the method registered as ``name``."""
    return get_explainer(name, **options)(model, x, target)
