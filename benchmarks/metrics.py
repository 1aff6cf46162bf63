"""ranem's metrics against Quantus (same inputs, same values) and against their floors, one run.

Three comparisons, each printing the largest difference of values and the time ratios:

- deletion curve: ``ranem.metrics.deletion_curve`` (zeros substrate) against Quantus's
  ``PixelFlipping`` with the same pixels per step, baseline 0 and softmax scores, on one-channel
  copies of the images (Quantus steps over values and needs the step to divide H * W; with three
  channels it would split pixels). Quantus has no point 0 (the clean image), so its curve is
  compared with ours from point 1 on. Floor (on the RGB images): the (steps + 1) x B forwards, in
  batches of 256.
- Average Sensitivity: ``ranem.metrics.avg_sensitivity`` against Quantus's ``AvgSensitivity``, both
  given the same uniform noise (Quantus through a perturbation function that replays ours), the
  same explainer (Saliency), label kept (Quantus cannot re-predict it) and max-normalisation per
  map (``normalise="max"``; Quantus's default divides by the largest value of the whole *batch*,
  so it is given per-sample axes). Floor: the explainer on the S + 1 batches of B images.
- MPRT: ``ranem.metrics.mprt`` (``abs=True``, Quantus's default) against Quantus's ``MPRT`` with
  ``skip_layers=True`` and ``return_last_correlation=True``; Quantus's layer generator is patched
  to produce exactly our randomised weights (the Ra-NEM authors patched it too). Floor: the
  explainer on the original and on the randomised model.

Quantus 0.6 calls ``np.trapz``, removed in NumPy 2.4: we restore it as ``np.trapezoid`` at run
time. Quantus goes in a separate environment, never the project's:

  python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e . quantus captum-rise
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
      /tmp/bench-venv/bin/python benchmarks/metrics.py --size 64 --images 8
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ranem.baselines import saliency
from ranem.metrics import avg_sensitivity, deletion_curve, mprt
from ranem.metrics.robustness import _reset_top_down

from _common import benchmark_parser, device_from, import_peer, load_model, median_time, peer_missing, row


def import_quantus():
    """Quantus, or None when it is not installed (it never is in the project's environment)."""
    if not hasattr(np, "trapz"):  # Quantus 0.6 still calls np.trapz (removed in NumPy 2.4)
        np.trapz = np.trapezoid
    return import_peer("quantus")


class Expand3(torch.nn.Module):
    """(B, 1, H, W) -> (B, 3, H, W): feeds a one-channel image to an RGB model."""

    def forward(self, x):
        return x.expand(-1, 3, -1, -1)


def explain_np(model, inputs, targets, **kwargs):
    """Quantus's explain_func: Saliency through ranem, numpy in and out, (B, 1, H, W)."""
    device = next(model.parameters()).device
    x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
    return saliency(model, x, t).unsqueeze(1).cpu().numpy()


def parser():
    ap = benchmark_parser(__doc__.splitlines()[0], repeats=3)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--samples", type=int, default=10)
    return ap


def run(args) -> list:
    """Print values and timings; return the rows ours / Quantus and ours / floor of each metric.
    Without Quantus the floors are still measured and the Quantus rows say so."""
    warnings.filterwarnings("ignore")
    quantus = import_quantus()
    device = device_from(args)
    model, origin = load_model(args.model, args.size, device)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(args.images, 3, args.size, args.size, generator=g) * 0.8).to(device)
    try:  # real held-out images when the data are there
        from ranem import data
        u8, _ = data.imagenette_arrays("val", args.size, download=False)
        x = data.normalize(u8[torch.randperm(len(u8), generator=torch.Generator().manual_seed(0))[:args.images]])
        x = x.to(device)
        origin += ", Imagenette validation images"
    except Exception:  # noqa: BLE001
        origin += ", Gaussian noise images"
    with torch.no_grad():
        y = model(x).argmax(1)
    b, d = x.shape[0], args.size * args.size
    k = d // args.steps
    print(f"model {args.model} ({origin}) at {args.size} px, {b} images, device {device}, "
          f"torch threads {torch.get_num_threads()}, quantus {quantus.__version__ if quantus else 'not installed'}")
    if quantus is None:
        print("Quantus not installed: every metric is compared with its floor only")
    setting = f"{args.model} {args.size} px ({origin}), {b} images"
    rows = []

    def vs_quantus(what, ours_s, fn, diff, values):
        """The row ours / Quantus: ``fn`` runs Quantus; ``diff`` gives the largest |ours - Quantus|."""
        if quantus is None:
            rows.append(peer_missing("metrics", what, ours_s, "Quantus"))
            return
        theirs, t_q = median_time(fn, device, args.repeats)
        d = diff(theirs)
        print(f"{what}: max |ours - Quantus| = {d:.2e} (values ~{values:.3f}); ours {ours_s:.3f} s, "
              f"Quantus {t_q:.3f} s: Quantus/ours = {t_q / ours_s:.2f}")
        rows.append(row("metrics", what, ours_s, t_q, f"Quantus {quantus.__version__} on the same inputs; "
                        f"values agree to {d:.1e} (values ~{values:.2f}); {setting}"))

    # ---------------------------------------------------------------- deletion curve
    # Quantus flips *values*, not pixels, in steps that must divide H * W: with 3 channels its steps
    # would cut pixels in pieces. So both run on a one-channel copy of the images, expanded to 3
    # channels inside the model; zeroing a one-channel pixel zeroes the pixel on every channel.
    gray = x.mean(1, keepdim=True)
    gray_model = torch.nn.Sequential(Expand3(), model).eval()
    attribution = torch.rand(b, args.size, args.size, generator=g).to(device)  # distinct values: no ties
    with torch.no_grad():
        y_gray = gray_model(gray).argmax(1)
    ours, t_ours = median_time(lambda: deletion_curve(gray_model, gray, attribution, pixels_per_step=k, target=y_gray),
                               device, args.repeats)

    def quantus_deletion():
        pf = quantus.PixelFlipping(features_in_step=k, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True)
        return pf(model=gray_model, x_batch=gray.cpu().numpy(), y_batch=y_gray.cpu().numpy(),
                  a_batch=attribution[:, None].cpu().numpy(), device=str(device), softmax=True, batch_size=b)
    print()
    vs_quantus(f"deletion curve ({args.steps} steps, one-channel images) / Quantus PixelFlipping", t_ours,
               quantus_deletion, lambda theirs: np.abs(np.asarray(theirs) - ours[:, 1:].cpu().numpy()).max(),
               ours.mean().item())

    def floor_curve():  # the same (steps + 1) x B forwards on RGB images, in batches as large as ours
        rows, pool = (args.steps + 1) * b, x.repeat(-(-256 // b), 1, 1, 1)[:256]
        with torch.inference_mode():
            for start in range(0, rows, 256):
                model(pool[:min(256, rows - start)]).softmax(1)
    _, t_rgb = median_time(lambda: deletion_curve(model, x, attribution, pixels_per_step=k, target=y), device,
                           args.repeats)
    _, t_floor = median_time(floor_curve, device, args.repeats)
    print(f"deletion curve on the RGB images: ours {t_rgb:.3f} s, floor {t_floor:.3f} s: ours/floor = "
          f"{t_rgb / t_floor:.2f}")
    rows.append(row("metrics", f"deletion curve ({args.steps} steps) / floor", t_rgb, t_floor,
                    f"the (steps + 1) x B unmasked forwards in batches of 256; {setting}"))

    # ---------------------------------------------------------------- Average Sensitivity
    s, radius = args.samples, 0.2
    noise = ((torch.rand((s,) + tuple(x.shape), generator=torch.Generator().manual_seed(0)) * 2 - 1) * radius)
    ours, t_ours = median_time(lambda: avg_sensitivity(saliency, model, x, y, samples=s, radius=radius, seed=0,
                                                       normalise="max", repredict=False), device, args.repeats)

    def quantus_sensitivity():
        step = iter(range(s))

        def replay(arr, indices, **kwargs):
            return arr + noise[next(step)].reshape(arr.shape[0], -1).numpy()
        # Quantus's normalise_by_max divides by the largest value of the whole *batch* by default;
        # per-sample axes make it the per-map normalisation that ours (and Yeh et al.) use.
        metric = quantus.AvgSensitivity(nr_samples=s, perturb_func=replay, normalise=True, abs=False,
                                        normalise_func=quantus.normalise_func.normalise_by_max,
                                        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
                                        disable_warnings=True, return_nan_when_prediction_changes=False)
        return metric(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(), a_batch=None,
                      explain_func=explain_np, device=str(device), batch_size=b)
    vs_quantus(f"Average Sensitivity ({s} samples) / Quantus AvgSensitivity", t_ours, quantus_sensitivity,
               lambda theirs: np.abs(np.asarray(theirs) - ours.cpu().numpy()).max(), ours.mean().item())

    noisy = (x[None] + noise.to(device)).flatten(0, 1)

    def floor_sensitivity():  # the S + 1 explainer calls on B images (the label is kept: no forward)
        saliency(model, x, y)
        for i in range(s):
            saliency(model, noisy[i * b:(i + 1) * b], y)
    _, t_floor = median_time(floor_sensitivity, device, args.repeats)
    print(f"Average Sensitivity: ours {t_ours:.3f} s, floor {t_floor:.3f} s: ours/floor = {t_ours / t_floor:.2f}")
    rows.append(row("metrics", f"Average Sensitivity ({s} samples) / floor", t_ours, t_floor,
                    f"Saliency on the clean and the {s} noisy batches; {setting}"))

    # ---------------------------------------------------------------- MPRT
    def same_randomisation(self, order="top_down", seed=42):
        """Quantus's cascade, re-seeded exactly as ranem's (module j under seed + j)."""
        import copy
        clone = copy.deepcopy(self.model)
        names = [n for n, m in clone.named_modules() if hasattr(m, "reset_parameters")][::-1]
        for j, name in enumerate(names):
            _reset_top_down(clone, seed, j, j + 1)
            yield name, clone
    if quantus is not None:
        quantus.helpers.model.pytorch_model.PyTorchModel.get_random_layer_generator = same_randomisation
    ours, t_ours = median_time(lambda: mprt(saliency, model, x, y, seed=0, abs=True), device, args.repeats)

    def quantus_mprt():
        metric = quantus.MPRT(seed=0, skip_layers=True, return_last_correlation=True, abs=True, normalise=True,
                              disable_warnings=True)
        return metric(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(), a_batch=None,
                      explain_func=explain_np, device=str(device), batch_size=b)
    vs_quantus("MPRT (fully randomised) / Quantus MPRT", t_ours, quantus_mprt,
               lambda theirs: np.abs(np.asarray(theirs, dtype=float) - ours.cpu().numpy()).max(), ours.mean().item())

    def floor_mprt():
        from ranem.metrics import randomised_copy
        saliency(model, x, y)
        saliency(randomised_copy(model, 0), x, y)
    _, t_floor = median_time(floor_mprt, device, args.repeats)
    print(f"MPRT: ours {t_ours:.3f} s, floor {t_floor:.3f} s: ours/floor = {t_ours / t_floor:.2f}")
    rows.append(row("metrics", "MPRT (fully randomised) / floor", t_ours, t_floor,
                    f"Saliency on the original and on the randomised model; {setting}"))
    return rows


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
