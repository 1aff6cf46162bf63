"""Ra-NEM and NEMt behind the baselines' interface, loaded lazily from ``ranem.nem``/``ranem.zoo``.

``ranem(model, x, target=None, nem=None)`` returns the attribution of a trained NEM *reading
``model``*: the NEM's trained decoder is attached to the classifier that is passed, so a
randomised copy of the classifier (the MPRT) is explained by the same decoder on top of the
randomised encoder, as the test asks. Pass ``nem=`` a trained ``RaNEM``/``NEMt``; otherwise the
book's NEM is found with ``get_nem`` from the ``ranem_info`` that ``ranem.zoo`` attaches to
its classifiers (loaded from the cache, or trained once).

``target``: a NEM explains the model's own top-1 prediction, the class its decoder was trained for.
``None`` or a target equal to the top-1 of every image is accepted; any other target is refused
with a ValueError, as ``NEM.explain`` and ``ranem.interop.NEMAttribution`` do (the metrics of
``ranem.metrics`` know this from ``predicts_label`` and pass no target). uint8 images are
normalised with the classifier's statistics; ``batch_size`` bounds the images per forward.
"""
from __future__ import annotations

import copy
import weakref

from ranem.baselines._common import model_input

__all__ = ["ranem", "ranem_insdel", "nemt", "nem_for", "attach"]

_TRAINED: dict = {}  # (kind, classifier key) -> trained NEM
_ATTACHED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {id(nem): attached}


def nem_for(model, kind: str):
    """The book's trained NEM of ``kind`` ("ranem", "ranem_insdel" or "nemt") for a classifier of ``ranem.zoo``."""
    info = getattr(model, "ranem_info", None)
    if not isinstance(info, dict) or "kind" not in info:
        raise ValueError(
            f"no trained {kind} is known for this {type(model).__name__}: pass nem= a trained ranem.nem "
            "model, or explain a classifier from ranem.zoo.get_classifier")
    key = (kind, info.get("key"), info["kind"], info.get("dataset", "imagenette"))
    if key not in _TRAINED:
        from ranem.zoo import get_nem  # the book's cache; imported late to keep this module light
        _TRAINED[key] = get_nem(kind=kind, classifier_kind=info["kind"], dataset=info.get("dataset", "imagenette"))
    return _TRAINED[key]


def attach(nem, model):
    """``nem``'s trained decoder on top of ``model`` (same architecture) as encoder; ``nem`` itself
    when it already reads ``model``. Cached per (model, nem) for as long as ``model`` lives."""
    if nem.classifier is model:
        return nem
    per_model = _ATTACHED.setdefault(model, {})
    if id(nem) not in per_model or per_model[id(nem)][0] is not nem:  # the pair keeps nem alive: ids stay unique
        twin = type(nem)(model, **nem.config)
        twin.decoder = copy.deepcopy(nem.decoder)  # the module itself: a folded decoder (ranem.fold) has other keys
        twin.train(nem.training)
        twin.history = nem.history
        per_model[id(nem)] = (nem, twin)
    return per_model[id(nem)][1]


def _explain(kind, model, x, nem, target=None, batch_size=None):
    x = model_input(model, x)  # checks, uint8 normalised with the model's statistics, the dtype rule
    trained = nem if nem is not None else nem_for(model, kind)
    return attach(trained, model).explain(x, target, batch_size=batch_size)  # checks the maps too


def ranem(model, x, target=None, nem=None, batch_size: int | None = None):
    """Ra-NEM attribution (B, H, W): the decoder's per-pixel logits, one forward pass."""
    return _explain("ranem", model, x, nem, target, batch_size)


def ranem_insdel(model, x, target=None, nem=None, batch_size: int | None = None):
    """Attribution (B, H, W) of our Ra-NEM variant trained on insertion and deletion together
    (``ranem.nem.RaNEMInsDel``; not the paper's method)."""
    return _explain("ranem_insdel", model, x, nem, target, batch_size)


def nemt(model, x, target=None, nem=None, batch_size: int | None = None):
    """NEMt attribution (B, H, W): the decoder's mask logits (sigmoid = the mask), one forward pass."""
    return _explain("nemt", model, x, nem, target, batch_size)


# One forward of the classifier gives both the label and the NEM's map: timing (``explain_time``)
# must not add a second forward for the label, and the metrics pass no target (the NEM explains
# the top-1 of whatever model and images it is given, e.g. a randomised copy in the MPRT).
for _fn in (ranem, ranem_insdel, nemt):
    _fn.predicts_label = True
