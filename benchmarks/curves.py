"""Throughput of insertion + deletion curves against the floor and against a naive loop.

- floor: the raw batched forward of the same model on as many images as both curves score
  (2 * B * (steps + 1)), in batches of the same size. No curve can be cheaper than that.
- ranem: ``ranem.metrics.faithfulness`` (both curves, one call).
- naive: one forward per step per image per curve (a batch of 1), as a first implementation would.

Prints the two ratios: ranem / floor (target <= 1.25) and naive / ranem (target >= 10 on a GPU; on a
2-core CPU a small model is compute-bound and batching buys little). Timings are medians over
interleaved repeats, so a noisy machine slows all three alike.

  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
      .venv/bin/python benchmarks/curves.py --model resnet10t --size 64 --images 16 --steps 64
"""
from __future__ import annotations


import timm
import torch

from ranem.metrics import faithfulness
from ranem.metrics.curves import pixel_counts
from ranem.ops import blur
from _common import benchmark_parser, device_from, round_robin, row


def floor_run(model, x, rows, batch_size):
    """Forward ``rows`` images built from x (no masking) in batches of ``batch_size``."""
    with torch.inference_mode():
        pool = x.repeat(-(-batch_size // x.shape[0]), 1, 1, 1)[:batch_size]
        done = 0
        while done < rows:
            n = min(batch_size, rows - done)
            model(pool[:n]).softmax(1)
            done += n


def naive_run(model, x, attribution, steps):
    """One forward per step per image per curve: the loop the batched version replaces."""
    b, _, h, w = x.shape
    counts = pixel_counts(h * w, steps=steps)
    with torch.inference_mode():
        for i in range(b):
            img = x[i:i + 1]
            cls = model(img).argmax(1)
            order = torch.argsort(attribution[i].flatten(), descending=True, stable=True)
            for kind, sub in (("ins", blur(img)), ("del", torch.zeros_like(img))):
                for k in counts.tolist():
                    chosen = torch.zeros(h * w, dtype=torch.bool, device=x.device)
                    chosen[order[:k]] = True
                    chosen = chosen.view(1, 1, h, w)
                    masked = torch.where(chosen, img, sub) if kind == "ins" else torch.where(chosen, sub, img)
                    model(masked).softmax(1)[0, cls]


def parser():
    p = benchmark_parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="default: the image width (RISE)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--skip-naive", action="store_true")
    return p


def run(args) -> list:
    """Print the timings and return the rows curves / floor (and naive / curves)."""
    device = device_from(args)
    steps = args.steps or args.size
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=10).eval().to(device)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    attribution = torch.randn(args.images, args.size, args.size, device=device)
    rows = 2 * args.images * (steps + 1)

    runs = {
        "floor": lambda: floor_run(model, x, rows, args.batch_size),
        "ranem": lambda: faithfulness(model, x, attribution, steps=steps, batch_size=args.batch_size),
    }
    if not args.skip_naive:
        runs["naive"] = lambda: naive_run(model, x, attribution, steps)
    med = round_robin(runs, device, args.repeats)

    print(f"model {args.model} (random init) at {args.size} px on {device} "
          f"({torch.get_num_threads()} threads), {args.images} images x 2 curves x {steps + 1} points "
          f"= {rows} masked forwards, batch {args.batch_size}")
    for name, t in med.items():
        print(f"  {name:<6} {t:8.3f} s  {rows / t:8.0f} img/s")
    print(f"ranem / floor = {med['ranem'] / med['floor']:.2f}  (target <= 1.25)")
    if "naive" in med:
        print(f"naive / ranem = {med['naive'] / med['ranem']:.1f}x  (target >= 10 on a GPU)")
    setting = f"{args.model} {args.size} px (random weights), {args.images} images, {steps} steps"
    out = [row("curves", "insertion + deletion curves / floor", med["ranem"], med["floor"],
               f"the {rows} forwards both curves score, unmasked, in batches of {args.batch_size} "
               f"(target <= 1.25); {setting}")]
    if "naive" in med:
        out.append(row("curves", "insertion + deletion curves / naive loop", med["ranem"], med["naive"],
                       f"one batch-1 forward per point per image per curve; {setting}"))
    return out


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
