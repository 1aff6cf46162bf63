"""Ra-NEM: neural explanation masks trained to optimise insertion/deletion curves.

What a researcher needs is importable from here::

    import ranem
    nem = ranem.RaNEM(model)                     # a NEM for any timm classifier
    maps = ranem.explain("rise", model, x)       # any registered explainer, by name
    scores = ranem.faithfulness(model, x, maps)  # AUC insertion - AUC deletion per image
    maps, history = ranem.optimise_attribution(model, x, steps=60)  # Ra-NEM's loss, per image

The names are resolved on first use (module ``__getattr__``): ``import ranem`` itself loads
neither torch, timm nor Captum, so tools that only need the version (or one light submodule)
start fast.
"""
from __future__ import annotations

import importlib
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms)

__version__ = "0.1.0"

# The package logs through logging.getLogger("ranem") (and its children) and never prints.
# No handler is attached here: warnings then reach stderr through logging's last-resort handler
# until the application configures logging, and info messages stay quiet.

# public name -> module that defines it
_EXPORTS = {
    "NEM": "ranem.nem",
    "RaNEM": "ranem.nem",
    "RaNEMInsDel": "ranem.nem",
    "NEMt": "ranem.nem",
    "explain": "ranem.baselines",
    "get_explainer": "ranem.baselines",
    "EXPLAINERS": "ranem.baselines",
    "faithfulness": "ranem.metrics",
    "evaluate": "ranem.metrics",
    "NEMAttribution": "ranem.interop",
    "quantus_explain_func": "ranem.interop",
    "optimise_attribution": "ranem.optimise",
}
_SUBMODULES = {"baselines", "bounds", "cache", "classifiers", "config", "data", "exercises", "interop", "metrics",
               "nem", "ops", "optimise", "pretrained", "train", "viz", "zoo"}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # static tools see the real objects; at run time they are loaded on demand
    from ranem.baselines import EXPLAINERS, explain, get_explainer
    from ranem.interop import NEMAttribution, quantus_explain_func
    from ranem.metrics import evaluate, faithfulness
    from ranem.nem import NEM, NEMt, RaNEM, RaNEMInsDel
    from ranem.optimise import optimise_attribution


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"ranem.{name}")
    raise AttributeError(f"module 'ranem' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
