"""The explainer registry: one record per method, and the views by name derived from it."""
import pytest

from ranem import baselines, config
from ranem.baselines import (COMPARED, DISPLAY_NAMES, EXPLAINERS, FAMILIES, REGISTRY, Explainer, canonical_name,
                             get_explainer)

FAMILY_NAMES = {"gradient", "occlusion", "occlusion (set)", "NEM", "NEM (set)"}


@pytest.mark.parametrize("record", REGISTRY, ids=lambda e: e.name)
def test_every_record_has_every_field(record):
    assert isinstance(record, Explainer)
    assert record.name and record.name == record.name.lower() and " " not in record.name
    assert callable(record.fn) and record.fn is getattr(baselines, record.name)
    assert record.display_name and record.family in FAMILY_NAMES
    assert all(isinstance(alias, str) and alias for alias in record.aliases)
    for option, field in record.cost_options:  # every knob names a real field of the run modes
        assert hasattr(config.settings("quick"), field), (record.name, option, field)


def test_records_are_frozen_and_names_unique():
    with pytest.raises(AttributeError):
        REGISTRY[0].display_name = "other"
    names = [e.name for e in REGISTRY]
    assert len(set(names)) == len(names)
    owners = {}
    for e in REGISTRY:
        for spelling in (e.name, e.display_name.lower(), *e.aliases):
            owners.setdefault(spelling, set()).add(e.name)
    assert all(len(names) == 1 for names in owners.values()), "one spelling would name two methods"


def test_views_follow_the_records_in_order_and_are_read_only():
    assert list(EXPLAINERS) == list(DISPLAY_NAMES) == list(FAMILIES) == [e.name for e in REGISTRY]
    for e in REGISTRY:
        assert EXPLAINERS[e.name] is e.fn and DISPLAY_NAMES[e.name] == e.display_name
        assert FAMILIES[e.name] == e.family
    with pytest.raises(TypeError):
        EXPLAINERS["mine"] = len


def test_the_compared_methods_are_the_books_ten_in_registry_order():
    # Chapters 7 and 8 (and benchmarks/memory.py) iterate over COMPARED: a variant registered later
    # (compared=False) must not enter their tables and figures.
    assert COMPARED == ("saliency", "integrated_gradients", "gradient_shap", "grad_cam_pp", "rise",
                        "smooth_pixel_mask", "iba", "nemt", "ranem", "ranem_insdel")
    assert COMPARED == tuple(e.name for e in REGISTRY if e.compared)
    assert {e.name for e in REGISTRY if not e.compared} == {"forgrad_saliency", "forgrad_integrated_gradients",
                                                           "forgrad_gradient_shap"}


@pytest.mark.parametrize("record", REGISTRY, ids=lambda e: e.name)
def test_aliases_and_display_names_resolve(record):
    for spelling in (record.name, record.name.upper(), f" {record.display_name} ", record.display_name.upper(),
                     *record.aliases):
        assert canonical_name(spelling) == record.name
        assert get_explainer(spelling) is record.fn


def test_cost_options_come_from_the_run_mode():
    s = config.settings("quick")
    rise = next(e for e in REGISTRY if e.name == "rise")
    assert rise.options_for(s) == {"masks": s.rise_masks} and rise.options_for(None) == {}
    assert get_explainer("IG", settings=s).keywords == {"steps": s.ig_steps}
    assert get_explainer("saliency", settings=s) is EXPLAINERS["saliency"]  # nothing to bind


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown explainer 'lime'; expected one of saliency, integrated_gradients"):
        get_explainer("lime")
    with pytest.raises(TypeError, match="name must be a str"):
        canonical_name(3)
