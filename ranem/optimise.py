"""Per-image optimisation of an attribution: Ra-NEM's loss with the attribution as the parameters.

Chapter 4 of the book treats each image's attribution logits as free parameters and minimises
Ra-NEM's loss on them with Adam, before chapters 5 and 6 train a network to predict such logits::

    from ranem.optimise import optimise_attribution
    maps, history = optimise_attribution(model, x, resolution=36, steps=60, samples=4, eval_every=15)
    history["faithfulness"][-1]          # exact insertion AUC - deletion AUC of the final maps, (B,)

The loss is the one ``ranem.nem.RaNEM.loss`` computes for a decoder's output, through the same
functions (``ranem.nem.masked_copies`` and ``ranem.nem.class_probability``); only the source of the
logits differs. Every image of the batch is optimised at once, each on its own loss.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ranem import _checks, ops
from ranem.baselines._common import frozen, model_input
from ranem.metrics.curves import _softmax_rows, _targets, auc, faithfulness
from ranem.nem import class_probability, masked_copies

__all__ = ["optimise_attribution"]


def _optional_int(value, name: str):
    return None if value is None else _checks.integer(value, name)


def _grid(resolution, init, b: int, h: int, w: int) -> tuple[int, int]:
    """The (h, w) grid of the free logits, from ``resolution`` and/or ``init``."""
    if resolution is None:
        grid = None
    elif isinstance(resolution, (tuple, list)):
        grid = _checks.size_pair(resolution, "resolution")
    elif isinstance(resolution, bool) or not hasattr(resolution, "__index__"):
        raise ValueError(f"resolution must be None, an int or a pair (h, w) of ints, got {resolution!r}")
    else:
        side = _checks.integer(resolution, "resolution")
        grid = (side, side)
    if grid is not None and (grid[0] > h or grid[1] > w):
        raise ValueError(f"resolution must be at most the image's {(h, w)} (one logit per pixel), got {grid}")
    if init is None:
        return grid or (h, w)
    _checks.finite(_checks.float_tensor(init, "init"), "init")
    if init.ndim != 3 or init.shape[0] != b:
        raise ValueError(f"init must be a float tensor (B, h, w) of starting logits with B = {b}, got shape "
                         f"{tuple(init.shape)}")
    shape = tuple(init.shape[1:])
    if grid is not None and shape != grid:
        raise ValueError(f"init has the grid {shape} but resolution asks for {grid}; give one of them")
    if shape[0] > h or shape[1] > w:
        raise ValueError(f"init's grid {shape} must be at most the image's {(h, w)}")
    return shape


def optimise_attribution(model: nn.Module, x: torch.Tensor, *, target=None, resolution=None, init=None,
                         steps: int = 100, samples: int = 6, lr: float = 0.03,
                         substrates=("zeros", "blur", "noise"), substrate_mode: str = "input",
                         stratified: bool = True, eval_every: int | None = None, curve_steps: int | None = None,
                         batch_size: int = 256, generator: torch.Generator | None = None,
                         progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Optimise one attribution per image on Ra-NEM's loss with Adam; returns ``(attribution, history)``.

    The parameters are free logits on a grid, one grid per image, upsampled bilinearly to the image
    (``resolution=None``: one logit per pixel). Each step draws ``samples`` masked copies of every
    image with ``ranem.nem.masked_copies`` (stratified k, Gumbel-top-k masks ``ops.omega`` with
    their straight-through gradient, a substrate per copy among ``substrates``), scores them all in
    one forward of the frozen ``model`` and takes an Adam step on the loss

        sum over images b of  mean over copies s of  1 - p_c(omega(x_b, top_k_bs(a_b + g_bs)); R_bs),

    each image's term being ``RaNEM.loss`` of that image. Summing (rather than averaging) over the
    images makes each image's optimisation independent of the others in the batch: Adam updates
    every logit from its own gradient, so an image's map depends on the batch only through the
    random draws.

    Arguments:

    - ``model``: the classifier (a ``torch.nn.Module`` giving logits (B, K)); it is used in eval mode
      and its parameters get no gradient (both restored afterwards).
    - ``x``: normalised images (B, C, H, W) on the model's device (cast to its dtype).
    - ``target``: the class p_c scores per image: None (the model's top-1 on x), an int, or a (B,)
      integer tensor of output indices. The exact curves of ``history`` score it too.
    - ``resolution``: None (H x W logits), an int r (an r x r grid) or a pair (h, w).
    - ``init``: None (all logits 0, every ranking equally likely under the noise) or a float tensor
      (B, h, w) of starting logits, whose grid sets the resolution.
    - ``steps``: Adam steps (>= 0).
    - ``samples``: masked copies per image and step (the paper's S: 6).
    - ``lr``: Adam's learning rate (> 0).
    - ``substrates``: names among ``ops.SUBSTRATES`` (a single name is one substrate).
    - ``substrate_mode``: 'input' (one substrate per masked copy, as the paper and ``RaNEM.loss``) or
      'batch' (one per step, as the authors' code).
    - ``stratified``: draw k stratified (one per bin of 1..d, as the authors) or uniformly.
    - ``eval_every``: None (the exact curves of the final attribution only) or n: also at iterations
      0, n, 2n, ... (the loss never sees them).
    - ``curve_steps``: points of the exact curves minus one (None: ``ranem.metrics``' default);
      insertion on blur, deletion on zeros, as everywhere in the book.
    - ``batch_size``: masked images per forward of the exact curves.
    - ``generator``: a ``torch.Generator`` for every random draw (None: the global RNG); a seeded one
      makes the result reproducible.
    - ``progress``: show a progress bar.

    Returns ``(attribution, history)``:

    - ``attribution``: (B, H, W) float tensor, detached, higher = more important (the upsampled logits).
    - ``history``: dict with ``iteration`` (E,) of the evaluations; ``insertion``, ``deletion``,
      ``faithfulness`` (E, B), the exact AUCs at those iterations; ``loss`` (steps, B), each
      image's loss per step; ``logits`` (B, h, w), the optimised grid; ``target`` (B,); and
      ``seconds``, the wall time (evaluations included).
    """
    _checks.module(model, "model")
    x = _checks.image_batch(model_input(model, x), "x", nonempty=True, finite=True)
    b, _, h, w = x.shape
    grid = _grid(resolution, init, b, h, w)
    steps = _checks.integer(steps, "steps", minimum=0)
    samples = _checks.integer(samples, "samples")
    lr = _checks.number(lr, "lr", low=0, low_open=True)
    substrates = _checks.names(substrates, "substrates", ops.SUBSTRATES)
    _checks.one_of(substrate_mode, "substrate_mode", ops.SUBSTRATE_MODES)
    _checks.flag(stratified, "stratified")
    eval_every = _optional_int(eval_every, "eval_every")
    curve_steps = _optional_int(curve_steps, "curve_steps")
    batch_size = _checks.integer(batch_size, "batch_size")
    _checks.generator(generator)
    _checks.flag(progress, "progress")

    with frozen(model):
        with torch.no_grad():
            tgt = _targets(target, _softmax_rows(model, x, b))  # checks the logits' shape on the way
        start_logits = torch.zeros(b, *grid, dtype=x.dtype, device=x.device) if init is None else init
        logits = start_logits.detach().to(device=x.device, dtype=x.dtype).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([logits], lr=lr)
        copies_target = tgt.repeat_interleave(samples)

        def attribution() -> torch.Tensor:
            if grid == (h, w):
                return logits
            return F.interpolate(logits[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]

        evaluated, curves, losses = [], [], []

        def evaluate(iteration: int) -> None:
            faith, ins, dele = faithfulness(model, x, attribution().detach(), steps=curve_steps, target=tgt,
                                            batch_size=batch_size, return_curves=True)
            evaluated.append(iteration)
            curves.append((auc(ins), auc(dele), faith))

        start = time.perf_counter()
        bar = tqdm(total=steps, desc="optimise attribution", disable=not progress, leave=False)
        with torch.enable_grad():
            for it in range(steps + 1):
                if it == steps or (eval_every is not None and it % eval_every == 0):
                    evaluate(it)
                if it == steps:
                    break
                kept, _, _, _ = masked_copies(x, attribution(), samples, substrates, substrate_mode, generator,
                                              stratified=stratified)
                per_image = (1 - class_probability(model, kept, copies_target)).view(b, samples).mean(1)
                optimiser.zero_grad(set_to_none=True)
                per_image.sum().backward()
                optimiser.step()
                losses.append(per_image.detach())
                bar.update()
                bar.set_postfix(loss=f"{per_image.mean().item():.3f}")
        bar.close()
        seconds = time.perf_counter() - start

    history = {
        "iteration": torch.tensor(evaluated, dtype=torch.long),
        **{key: torch.stack([c[i] for c in curves]).float().cpu()
           for i, key in enumerate(("insertion", "deletion", "faithfulness"))},
        "loss": torch.stack(losses).cpu() if losses else torch.empty(0, b),
        "logits": logits.detach().clone(), "target": tgt.detach().clone(), "seconds": seconds,
    }
    return attribution().detach().clone(), history
