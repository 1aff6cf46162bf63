"""Tests of ranem.viz: what each figure helper draws (values, not pixels of a rendering)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from ranem import viz  # noqa: E402
from ranem.metrics import auc  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_heatmap_shows_average_ranks_over_a_grey_image():
    a = torch.tensor([[3.0, 1.0, 1.0], [0.0, 5.0, 1.0]])  # ties share their mean rank
    image = torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(0))
    fig, ax = plt.subplots()
    viz.heatmap(ax, a, image, title="t")
    grey, ranks = ax.get_images()
    expected = (rankdata(a.flatten().numpy(), method="average") - 1) / (a.numel() - 1)
    np.testing.assert_allclose(ranks.get_array(), expected.reshape(2, 3))
    np.testing.assert_allclose(grey.get_array(), image.mean(0).numpy(), rtol=1e-6)
    assert ax.get_title() == "t"


def test_show_image_draws_rgb_and_grey():
    fig, (ax1, ax2) = plt.subplots(1, 2)
    rgb = torch.rand(3, 4, 5)
    viz.show_image(ax1, rgb, "rgb")
    viz.show_image(ax2, rgb[:1])
    np.testing.assert_allclose(ax1.get_images()[0].get_array(), rgb.permute(1, 2, 0).numpy())
    assert ax2.get_images()[0].get_array().shape == (4, 5) and ax1.get_title() == "rgb"


def test_plot_curves_means_and_auc_in_legend():
    curves = {"a": torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.3, 1.0]]), "b": torch.tensor([1.0, 0.5, 0.0])}
    fig, ax = plt.subplots()
    viz.plot_curves(ax, curves)
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), [0.0, 0.4, 1.0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"a (AUC {float(auc(curves['a']).mean()):.3f})", "b (AUC 0.500)"]
    assert len(ax.collections) == 1  # a standard-error band for the batch only


def test_mask_samples_and_curve_point_figure_shapes():
    image, scores = torch.rand(3, 8, 8), torch.randn(8, 8)
    fig = viz.mask_samples(image, scores, k=6, temperatures=(0.5, 2.0), samples=3)
    assert len(fig.axes) == 2 * (3 + 1)
    x = torch.randn(1, 3, 8, 8)
    curve = torch.linspace(0, 1, 9)
    fig = viz.curve_point_figure(x, torch.randn(1, 8, 8), curve, curve.flip(0), step=2,
                                 mean=(0.5,) * 3, std=(0.25,) * 3)
    assert "k = 16 of 64" in fig.axes[0].get_title() and fig.axes[2].get_title() == "insertion curve: 0.250"
