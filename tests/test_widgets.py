"""Widgets in the book: a live kernel gets the widget, the book's executor the static figure only."""
import importlib.util
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ranem import viz  # noqa: E402

pytest.importorskip("ipywidgets")
import ipywidgets  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """What widget_or_figure hands to IPython's display, in order."""
    calls = []
    monkeypatch.setattr("IPython.display.display", lambda obj: calls.append(obj))
    return calls


def _never():
    raise AssertionError("this side must not be built")


def test_book_execution_draws_only_the_static_figure(monkeypatch, shown):
    monkeypatch.setenv(viz.STATIC_WIDGETS_ENV, "1")
    fig = plt.figure()
    assert viz.widget_or_figure(_never, lambda: fig) is None
    assert shown == [fig]
    assert not plt.fignum_exists(fig.number)  # closed: the inline backend does not show it twice


def test_a_figure_that_shows_itself_is_not_displayed_again(monkeypatch, shown):
    monkeypatch.setenv(viz.STATIC_WIDGETS_ENV, "1")
    drawn = []
    viz.widget_or_figure(_never, lambda: drawn.append("figure"))
    assert drawn == ["figure"] and shown == []


@pytest.mark.parametrize("value", [None, "0"])
def test_a_live_kernel_gets_the_widget_and_no_static_figure(monkeypatch, shown, value):
    if value is None:
        monkeypatch.delenv(viz.STATIC_WIDGETS_ENV, raising=False)
    else:
        monkeypatch.setenv(viz.STATIC_WIDGETS_ENV, value)
    slider = ipywidgets.IntSlider()
    assert viz.widget_or_figure(lambda: slider, _never) is None
    assert shown == [slider]


def test_the_book_widgets_still_construct(monkeypatch, shown):
    monkeypatch.delenv(viz.STATIC_WIDGETS_ENV, raising=False)
    image, scores = torch.rand(3, 8, 8), torch.randn(8, 8)
    viz.widget_or_figure(lambda: viz.mask_sampler(image, scores, k=6, samples=2),
                         lambda: viz.mask_samples(image, scores, 6, samples=2))
    x, curve = torch.randn(1, 3, 8, 8), torch.linspace(0, 1, 9)
    explore = dict(x=x, attribution=torch.randn(1, 8, 8), insertion=curve, deletion=curve.flip(0),
                   mean=(0.5,) * 3, std=(0.25,) * 3)
    viz.widget_or_figure(lambda: viz.curve_explorer(step=2, **explore),
                         lambda: viz.curve_point_figure(step=2, **explore))
    # Each widget draws its default view (displayed inside its Output) as it is built.
    sampler, explorer = [obj for obj in shown if isinstance(obj, ipywidgets.Widget)]
    assert sum(isinstance(obj, plt.Figure) for obj in shown) == 2
    assert isinstance(sampler, ipywidgets.VBox) and isinstance(explorer, ipywidgets.VBox)
    k_slider, t_slider = sampler.children[0].children
    assert (k_slider.value, k_slider.max, t_slider.value) == (6, 64, 1.0)
    assert (explorer.children[0].value, explorer.children[0].max) == (2, 8)
    plt.close("all")


def test_the_book_executor_sets_the_variable_for_its_kernels(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "book_execute", Path(__file__).resolve().parents[1] / "book" / "_execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = []
    # Stand in for the execution: record the environment the kernel would inherit.
    def execute(path, mode, force):
        seen.append(os.environ.get(viz.STATIC_WIDGETS_ENV))
        return 0.0

    monkeypatch.setattr(module, "execute", execute)
    monkeypatch.setenv(viz.STATIC_WIDGETS_ENV, "0")  # restored after the test
    monkeypatch.setenv("RANEM_MODE", "quick")
    monkeypatch.setattr(sys, "argv", ["_execute.py", "book/01_insertion_deletion.ipynb"])
    module.main()
    assert seen == ["1"]
