"""The top level: what a researcher needs is importable from ``ranem``, loaded only when used."""
import subprocess
import sys

import pytest

import ranem


@pytest.mark.parametrize("name, module", [
    ("RaNEM", "ranem.nem"), ("NEMt", "ranem.nem"), ("NEM", "ranem.nem"), ("RaNEMInsDel", "ranem.nem"),
    ("explain", "ranem.baselines"), ("get_explainer", "ranem.baselines"), ("EXPLAINERS", "ranem.baselines"),
    ("faithfulness", "ranem.metrics"), ("evaluate", "ranem.metrics"),
    ("NEMAttribution", "ranem.interop"), ("quantus_explain_func", "ranem.interop"),
    ("optimise_attribution", "ranem.optimise"),
])
def test_top_level_names_are_the_modules_objects(name, module):
    import importlib
    assert getattr(ranem, name) is getattr(importlib.import_module(module), name)
    assert name in ranem.__all__ and name in dir(ranem)


def test_import_ranem_loads_nothing_heavy():
    # In a fresh interpreter: importing the package must not import torch, timm or captum; the
    # first use of a name does.
    code = ("import sys, ranem; heavy = [m for m in ('torch', 'timm', 'captum') if m in sys.modules]; "
            "assert not heavy, heavy; ranem.faithfulness; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ranem.nope
    assert not hasattr(ranem, "nope")
    assert ranem.metrics.faithfulness is ranem.faithfulness  # submodules resolve lazily too


def test_the_core_computes_without_the_viz_extra():
    """ipywidgets is the `viz` extra: training, explaining and scoring never import it. matplotlib is
    in that extra too, but Captum imports it (and IPython) anyway, for captum.attr's visualisation."""
    code = ("import sys, ranem.nem, ranem.train, ranem.baselines, ranem.metrics, ranem.classifiers, ranem.tokens\n"
            "bad = [m for m in ('ipywidgets',) if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
