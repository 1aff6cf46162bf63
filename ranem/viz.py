"""Figures and widgets for the book: heat maps, mask samples, curves.

Images are given as (C, H, W) floats in [0, 1] (``ranem.data.denormalize`` output) or (H, W);
attributions as (H, W). Functions return matplotlib figures (or draw into a given axis) so that a
notebook can show them and a script can save them.

Widgets (``mask_sampler``, ``curve_explorer``) only move in a running kernel; in the online book a
stored widget would be a dead slider. ``widget_or_figure`` therefore shows a widget in a live kernel
and its static default view when the book is executed for the online book.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from ranem import ops


def _to_numpy_image(image) -> np.ndarray:
    t = torch.as_tensor(image).detach().float().cpu()
    if t.ndim == 3:
        t = t.permute(1, 2, 0)
        if t.shape[2] == 1:
            t = t[..., 0]
    return t.clamp(0, 1).numpy()


# Set to "1" by book/_execute.py for the kernels that execute the book: widgets are then drawn as
# their static default view (``widget_or_figure``), which the online book stores and captions.
STATIC_WIDGETS_ENV = "RANEM_STATIC_WIDGETS"


def widget_or_figure(make_widget, make_figure) -> None:
    """Display ``make_widget()`` in a live kernel, or draw only ``make_figure()`` when the book is
    executed for the online book (environment variable ``RANEM_STATIC_WIDGETS=1``, which
    book/_execute.py sets for its kernels). Both arguments are callables without arguments, so
    only the one needed is built; ``make_figure`` returns the figure of the widget's default view
    (or shows its figure itself and returns None). Returns None: the call can end a cell without
    Jupyter displaying its result a second time."""
    from IPython.display import display

    if os.environ.get(STATIC_WIDGETS_ENV) == "1":
        fig = make_figure()
        if fig is not None:
            display(fig)
            plt.close(fig)  # shown once: the inline backend does not draw it again at the cell's end
    else:
        display(make_widget())


# ----------------------------------------------------------------------------- heat maps

def heatmap(ax, attribution, image=None, alpha: float = 0.55, cmap: str = "inferno", title: str | None = None):
    """Draw ``attribution`` (H, W) on ``ax``, over a greyscale copy of ``image`` when given.

    The colour scale is the attribution's own rank (percentile; tied values share their mean
    rank), so maps of different methods and scales are comparable: what matters to
    insertion/deletion is the order of the pixels."""
    from ranem.metrics.robustness import rank_average

    a = torch.as_tensor(attribution).detach().float().cpu()
    shape = tuple(a.shape[-2:])
    ranks = ((rank_average(a.reshape(1, -1))[0] - 1) / max(a.numel() - 1, 1)).numpy()
    if image is not None:
        img = _to_numpy_image(image)
        grey = img.mean(axis=2) if img.ndim == 3 else img
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(ranks.reshape(shape), cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
              alpha=alpha if image is not None else 1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


# ----------------------------------------------------------------------------- mask samples

def _mask_row(axes, image, scores, k, temperature, generator):
    img = torch.as_tensor(image).float()
    if img.ndim == 2:
        img = img.unsqueeze(0)
    n = len(axes)
    x = img.unsqueeze(0).expand(n, *img.shape)
    s = torch.as_tensor(scores).float().unsqueeze(0).expand(n, *img.shape[1:]) / temperature
    # Removed pixels are shown grey (0.5 in display space) so black image content stays visible.
    x_masked, _ = ops.omega(x, s, k, torch.full_like(x, 0.5), generator=generator)
    for ax, xm in zip(axes, x_masked):
        ax.imshow(_to_numpy_image(xm), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])


def mask_samples(image, scores, k: int, temperatures=(0.25, 1.0, 4.0), samples: int = 4, seed: int = 0):
    """A figure of Gumbel-top-k masks: one row per temperature T, ``samples`` independent draws of
    ``omega(image, scores / T, k)`` per row (kept pixels shown, removed ones grey), the scores as a
    heat map in the first column."""
    temperatures = list(temperatures)
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(len(temperatures), samples + 1, figsize=(1.6 * (samples + 1), 1.7 * len(temperatures)),
                             squeeze=False)
    for row, t in zip(axes, temperatures):
        heatmap(row[0], scores, image)
        row[0].set_ylabel(f"T = {t:g}", fontsize=9)
        _mask_row(row[1:], image, scores, k, t, g)
    axes[0, 0].set_title("scores", fontsize=9)
    for j in range(samples):
        axes[0, j + 1].set_title(f"draw {j + 1}", fontsize=9)
    fig.suptitle(f"k = {k} of {np.prod(torch.as_tensor(scores).shape)} pixels", fontsize=10)
    fig.tight_layout()
    return fig


def mask_sampler(image, scores, k: int | None = None, temperature: float = 1.0, samples: int = 4, seed: int = 0):
    """An ipywidgets panel: sliders for k and the temperature T, showing ``samples`` masks drawn by
    ``omega(image, scores / T, k)``. Its default view equals ``mask_samples(..., temperatures=[T])``."""
    import ipywidgets as widgets
    from IPython.display import display

    d = int(np.prod(torch.as_tensor(scores).shape))
    k = max(1, d // 10) if k is None else k
    k_slider = widgets.IntSlider(value=k, min=1, max=d, step=1, description="k", continuous_update=False)
    t_slider = widgets.FloatLogSlider(value=temperature, base=10, min=-2, max=2, step=0.05,
                                      description="T", continuous_update=False)
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig = mask_samples(image, scores, k_slider.value, [t_slider.value], samples, seed)
            display(fig)
            plt.close(fig)

    k_slider.observe(redraw, names="value")
    t_slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([k_slider, t_slider]), out])


# ----------------------------------------------------------------------------- insertion/deletion curves

def show_image(ax, image, title: str | None = None):
    """Draw one image (C, H, W) in [0, 1] (``ranem.data.denormalize`` output) without ticks."""
    img = _to_numpy_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_curves(ax, curves: dict, title: str | None = None, ylabel: str = "score (top-1 probability)",
                band: bool = True):
    """Mean curve per label on [0, 1] (fraction of pixels), with the mean AUC in the legend.

    ``curves`` maps a label to a curve (P,) or a batch of curves (B, P); with ``band`` a batch also
    gets a shaded +-1 standard error band."""
    from ranem.metrics.curves import auc

    for label, curve in curves.items():
        c = torch.as_tensor(curve).detach().float().cpu()
        c = c[None] if c.ndim == 1 else c
        frac = np.linspace(0, 1, c.shape[1])
        mean = c.mean(0).numpy()
        line, = ax.plot(frac, mean, label=f"{label} (AUC {float(auc(c).mean()):.3f})")
        if band and c.shape[0] > 1:
            sem = (c.std(0) / np.sqrt(c.shape[0])).numpy()
            ax.fill_between(frac, mean - sem, mean + sem, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of pixels")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def curve_point_figure(x, attribution, insertion, deletion, step: int, mean, std, steps: int | None = None,
                       title: str | None = None):
    """One image's insertion and deletion at curve point ``step``: the two masked images the curves
    score there, and both curves with that point marked. ``x`` (1, C, H, W) normalised with
    ``mean``/``std``; ``attribution`` (1, H, W); ``insertion``/``deletion`` (P,) or (1, P)."""
    from ranem.data import denormalize
    from ranem.metrics.curves import masked_images, pixel_counts

    ins = torch.as_tensor(insertion).detach().float().cpu().flatten()
    dele = torch.as_tensor(deletion).detach().float().cpu().flatten()
    steps = ins.numel() - 1 if steps is None else steps
    h, w = x.shape[-2:]
    k = int(pixel_counts(h * w, steps=steps)[step])
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.8), gridspec_kw={"width_ratios": [1, 1, 1.4, 1.4]})
    for ax, kind in zip(axes[:2], ("insertion", "deletion")):
        img = masked_images(x, attribution, k, kind=kind)
        show_image(ax, denormalize(img[0].cpu(), mean, std), f"{kind}: k = {k} of {h * w}")
    frac = np.linspace(0, 1, ins.numel())
    for ax, curve, kind in ((axes[2], ins, "insertion"), (axes[3], dele, "deletion")):
        ax.plot(frac, curve.numpy(), color="C0" if kind == "insertion" else "C3")
        ax.fill_between(frac, 0, curve.numpy(), alpha=0.15, color="C0" if kind == "insertion" else "C3")
        ax.plot([frac[step]], [float(curve[step])], "ko")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("fraction of pixels")
        ax.set_title(f"{kind} curve: {float(curve[step]):.3f}", fontsize=9)
    axes[2].set_ylabel("score")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curve_explorer(x, attribution, insertion, deletion, mean, std, step: int | None = None):
    """An ipywidgets slider over the curve points; each position shows ``curve_point_figure``.
    Its default view (``step``, default a quarter of the curve) equals that static figure."""
    import ipywidgets as widgets
    from IPython.display import display

    points = torch.as_tensor(insertion).numel()
    step = (points - 1) // 4 if step is None else step
    slider = widgets.IntSlider(value=step, min=0, max=points - 1, step=1, description="step",
                               continuous_update=False)
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig = curve_point_figure(x, attribution, insertion, deletion, slider.value, mean, std)
            display(fig)
            plt.close(fig)

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])


# ----------------------------------------------------------------------------- tokens

def token_strip(ax, names, attribution, marks=None, title: str | None = None, cmap: str = "inferno"):
    """One sequence as a row of token boxes coloured by the attribution's rank (light = ranked
    first), as ``heatmap`` does for pixels. ``names``: the tokens as strings (L,); ``attribution``
    (L,); ``marks``: optional (L,) labels drawn under the boxes (e.g. "E" for planted evidence)."""
    from ranem.metrics.robustness import rank_average

    a = torch.as_tensor(attribution).detach().float().cpu().reshape(1, -1)
    if a.shape[1] != len(names):
        raise ValueError(f"attribution must have one value per token ({len(names)}), got {a.shape[1]}")
    ranks = ((rank_average(a)[0] - 1) / max(a.shape[1] - 1, 1)).numpy()
    colours = plt.get_cmap(cmap)(0.15 + 0.8 * ranks)
    for i, (name, colour) in enumerate(zip(names, colours)):
        ax.add_patch(plt.Rectangle((i, 0), 0.95, 1, color=colour))
        ax.text(i + 0.475, 0.5, name, ha="center", va="center", fontsize=6.5,
                color="black" if ranks[i] > 0.55 else "white")
        if marks is not None and marks[i]:
            ax.text(i + 0.475, -0.35, marks[i], ha="center", va="center", fontsize=7, fontweight="bold")
    ax.set_xlim(0, len(names))
    ax.set_ylim(-0.7, 1.05)
    ax.axis("off")
    if title:
        ax.text(-0.3, 0.5, title, ha="right", va="center", fontsize=8)
    return ax
