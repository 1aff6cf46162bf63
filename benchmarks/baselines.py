"""Cost of ranem's baselines against their floors, and our RISE against captum-rise, from one run.

- floor: the forward (+ backward) passes a method cannot avoid, run as plain batches of the same
  size on unmasked inputs (RISE: masks x images forwards; Integrated Gradients: steps x images
  forward+backward to the input; Grad-CAM++: one forward and a backward to its layer only; ...).
  ``ours / floor`` near 1 means the method adds little on top.
- captum-rise (``pip install captum-rise``, the package the Ra-NEM authors used): one forward per
  mask, masks built cell by cell in Python. Given a softmax-wrapped model it estimates the same
  quantity as ours (with its own random masks, and RISE's N p normalisation where ours divides by
  each pixel's realised coverage), so the maps agree up to Monte-Carlo noise; we report their
  Spearman correlation next to the correlation between two seeds of each implementation.
- seconds per image at batch size 1 (label forward included) for every method.

Timings are medians over interleaved repeats, so a noisy machine slows every variant alike. Run
captum-rise from a separate environment, never the project's:

  python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e . captum-rise quantus
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
      /tmp/bench-venv/bin/python benchmarks/baselines.py --size 64 --images 4 --masks 1000
"""
from __future__ import annotations

import importlib.metadata as md
import statistics

import torch

from ranem import baselines
from ranem.baselines.gradcam import hooked_activation
from ranem.metrics import explain_time, spearman
from _common import benchmark_parser, device_from, import_peer, load_model, peer_missing, row, timed


def forwards(model, x, rows, batch_size, backward=False):
    """``rows`` forwards (with an input-gradient backward when asked) in batches of ``batch_size``."""
    pool = x.repeat(-(-batch_size // x.shape[0]), 1, 1, 1)[:batch_size]
    done = 0
    while done < rows:
        n = min(batch_size, rows - done)
        if backward:
            inp = pool[:n].detach().requires_grad_(True)
            torch.autograd.grad(model(inp)[:, 0].sum(), inp)
        else:
            with torch.inference_mode():
                model(pool[:n]).softmax(1)
        done += n


def cam_floor(model, x):
    """Forward, then the gradient of the logits with respect to the target layer only."""
    with hooked_activation(baselines.find_target_layer(model)) as hook:
        out = model(x.detach().requires_grad_(True))
        torch.autograd.grad(out[:, 0].sum(), hook.value)


def parser():
    ap = benchmark_parser(__doc__.splitlines()[0], repeats=3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--skip-per-image", action="store_true", help="skip the batch-size-1 timings")
    return ap


def run(args) -> list:
    """Print the timings and return the rows ours / floor per method and ours / captum-rise."""
    device = device_from(args)
    model, origin = load_model(args.model, args.size, device)
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    try:  # real held-out images when the data are there: RISE on noise inputs says little
        from ranem import data
        u8, _ = data.imagenette_arrays("val", args.size, download=False)
        pick = torch.randperm(len(u8), generator=torch.Generator().manual_seed(0))[:args.images]
        x = data.normalize(u8[pick]).to(device)
        origin += ", Imagenette validation images"
    except Exception:  # noqa: BLE001
        origin += ", Gaussian noise images"
    b, bs = x.shape[0], args.batch_size
    target = model(x).argmax(1)
    print(f"model {args.model} ({origin}) at {args.size} px, {b} images, device {device}, torch threads "
          f"{torch.get_num_threads()}")

    # (name, ours, floor) per method; the floor does the passes the method cannot avoid.
    rise_bs = max(b, bs // b * b)
    cases = [
        ("saliency", lambda: baselines.saliency(model, x, target), lambda: forwards(model, x, b, bs, True)),
        ("integrated_gradients", lambda: baselines.integrated_gradients(model, x, target, steps=args.ig_steps),
         lambda: forwards(model, x, b * args.ig_steps, bs, True)),
        ("gradient_shap", lambda: baselines.gradient_shap(model, x, target),
         lambda: forwards(model, x, b * 5, bs, True)),
        ("grad_cam_pp", lambda: baselines.grad_cam_pp(model, x, target), lambda: cam_floor(model, x)),
        ("rise", lambda: baselines.rise(model, x, target, masks=args.masks, batch_size=bs),
         lambda: forwards(model, x, b * args.masks, rise_bs)),
        ("smooth_pixel_mask", lambda: baselines.smooth_pixel_mask(model, x, target, iterations=args.iterations),
         lambda: [forwards(model, x, b, bs, True) for _ in range(args.iterations)]),
        ("iba", lambda: baselines.iba(model, x, target),
         lambda: [forwards(model, x, b * 10, bs, True) for _ in range(10)]),
    ]
    peer = None
    captum_rise = import_peer("rise")  # captum-rise, benchmark only
    if captum_rise is not None:
        prob_model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
        peer = lambda: captum_rise.RISE(prob_model).attribute(x, n_masks=args.masks, initial_mask_shapes=((7, 7),),
                                                              target=target)
    else:
        print("captum-rise not installed: RISE is compared with its floor only")

    times = {name: ([], []) for name, _, _ in cases}
    peer_times = []
    for name, ours, floor in cases:  # warm-up
        ours()
        floor()
    for _ in range(args.repeats):
        for name, ours, floor in cases:
            times[name][0].append(timed(ours, device))
            times[name][1].append(timed(floor, device))
        if peer is not None:
            peer_times.append(timed(peer, device))

    setting = f"{args.model} {args.size} px ({origin}), {b} images"
    rows = []
    print(f"\n{'method':<22} {'ours s/img':>11} {'floor s/img':>12} {'ours/floor':>11}")
    for name, _, _ in cases:
        o, f = statistics.median(times[name][0]) / b, statistics.median(times[name][1]) / b
        print(f"{name:<22} {o:>11.4f} {f:>12.4f} {o / f:>11.2f}")
        rows.append(row("baselines", f"{name} / floor (per image)", o, f,
                        f"the forward (+ backward) passes {name} cannot avoid, as plain batches; {setting}"))
    ours_rise = statistics.median(times["rise"][0])
    what = f"RISE / captum-rise, {args.masks} masks (per image)"
    if peer is None:
        rows.append(peer_missing("baselines", what, ours_rise / b, "captum-rise"))
    else:
        theirs = statistics.median(peer_times)
        a = baselines.rise(model, x, target, masks=args.masks, seed=0)
        a2 = baselines.rise(model, x, target, masks=args.masks, seed=1)
        torch.manual_seed(0)
        c = peer().reshape(a.shape)
        torch.manual_seed(1)
        c2 = peer().reshape(a.shape)
        print(f"\nRISE, {args.masks} masks: captum-rise {theirs / b:.4f} s/img, ours {ours_rise / b:.4f} s/img: "
              f"ours is {theirs / ours_rise:.1f}x faster")
        print(f"RISE maps, mean Spearman correlation: ours vs captum-rise {spearman(a, c).mean():.3f}; "
              f"Monte-Carlo noise levels: ours seed 0 vs seed 1 {spearman(a, a2).mean():.3f}, captum-rise vs "
              f"captum-rise {spearman(c, c2).mean():.3f}")
        rows.append(row("baselines", what, ours_rise / b, theirs / b,
                        f"captum-rise {md.version('captum-rise')} (one forward per mask, masks built in Python); "
                        f"maps' mean Spearman correlation with ours {spearman(a, c).mean():.2f} (ours vs ours, "
                        f"two seeds: {spearman(a, a2).mean():.2f}); {setting}"))
    if not args.skip_per_image:
        per_image(args, model, x, [name for name, _, _ in cases])
    return rows


def per_image(args, model, x, names):
    print(f"\nseconds per image at batch size 1 (label forward included, {args.repeats} repeats):")
    for name in names:
        opts = {"integrated_gradients": {"steps": args.ig_steps}, "rise": {"masks": args.masks},
                "smooth_pixel_mask": {"iterations": args.iterations}}.get(name, {})
        fn = baselines.get_explainer(name, **opts)
        print(f"  {name:<22} {explain_time(fn, model, x[:2], repeats=args.repeats, batched=False)['per_image']:.4f}")


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
