"""Explanation latency of a NEM against the classifier's own forward and against Saliency.

- forward: the classifier alone (``inference_mode``): the prediction every method must make.
- ranem: ``RaNEM.predict``: the SAME single forward of the classifier (logits + feature maps)
  plus the decoder. Target: <= 1.3x the forward.
- saliency: ``ranem.baselines.saliency`` (Captum): forward + backward to the input. Target: Ra-NEM
  >= 1.5x faster at batch 1.

Weights are random: latency does not depend on them. Classifier and decoder have their BatchNorms
folded into their convolutions, as ``get_classifier`` and ``get_nem`` return them (``--unfolded``:
not). Timings are medians over interleaved repeats (every method once per round), so a noisy machine
slows all alike; the ratios are what to read.

  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
      .venv/bin/python benchmarks/explain.py --model tf_efficientnet_lite0 --size 144   # cpu mode's CNN
  .venv/bin/python benchmarks/explain.py --model resnet50 --size 224 --batches 1 64   # the paper's
"""
from __future__ import annotations


import torch

from ranem.baselines import saliency
from ranem.fold import fold_batchnorm
from ranem.nem import RaNEM
from _common import benchmark_parser, device_from, random_classifier, round_robin, row


def parser():
    p = benchmark_parser(__doc__.splitlines()[0], repeats=15)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--unfolded", action="store_true", help="keep the BatchNorms (as before ranem.fold)")
    return p


def run(args) -> list:
    """Print the timings and return their rows (ratio = Ra-NEM / forward, Ra-NEM / Saliency)."""
    rows = []
    device = device_from(args)
    torch.manual_seed(0)
    model = random_classifier(args.model, args.size, device, fold=not args.unfolded)
    nem = RaNEM(model).eval()
    if not args.unfolded:
        fold_batchnorm(nem, torch.randn(2, 3, args.size, args.size, device=device))
    n_clf = sum(p.numel() for p in model.parameters())
    n_dec = sum(p.numel() for p in nem.decoder.parameters())
    print(f"model {args.model} (random init) at {args.size} px on {device} ({torch.get_num_threads()} threads); "
          f"parameters: classifier {n_clf / 1e6:.2f} M, decoder {n_dec / 1e6:.2f} M")

    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, device=device)

        def forward():
            with torch.inference_mode():
                model(x)

        runs = {"forward": forward, "ranem": lambda: nem.predict(x), "saliency": lambda: saliency(model, x)}
        inner = max(1, 8 // batch)  # batch 1 is short: average a few calls per sample
        med = round_robin(runs, device, args.repeats, inner=inner, warmup=2)
        print(f"batch {batch}:")
        for name, t in med.items():
            print(f"  {name:<9} {1000 * t:9.2f} ms  {1000 * t / batch:8.3f} ms/image")
        print(f"  ranem / forward    = {med['ranem'] / med['forward']:.2f}  (target <= 1.3)")
        print(f"  saliency / ranem   = {med['saliency'] / med['ranem']:.2f}  (target >= 1.5 at batch 1)")
        rows += [row("explain", f"Ra-NEM explain / classifier forward, batch {batch}", med["ranem"], med["forward"],
                     f"the classifier's forward alone on the same batch (target <= 1.3); {args.model} {args.size} px, "
                     "random weights (latency does not depend on them)"),
                 row("explain", f"Ra-NEM explain / Saliency, batch {batch}", med["ranem"], med["saliency"],
                     "Saliency (Captum): forward + backward to the input (target <= 1/1.5 = 0.67 at batch 1)")]
    return rows


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
