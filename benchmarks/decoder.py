"""Which decoder: explanation cost of every decoder variant against the classifier's forward.

A variant is (upsampling, output stride): "transposed" is the first design (depthwise stride-2
transposed convs up to full resolution), "bilinear" projects at the low resolution and
interpolates; an output stride of 2**m stops the decoder m blocks early and resizes its
one-channel logits to the input. Measured on the cpu-mode classifiers (EfficientNet-Lite0 at
144 px, ViT-Tiny at 64 px with 16-px patches), random weights (latency does not depend on them),
at every batch size asked for. Ratios = Ra-NEM's ``predict`` (classifier forward + decoder) over
the classifier's forward, interleaved medians.

  .venv/bin/python benchmarks/decoder.py                      # every variant, batch 1 and 64
  .venv/bin/python benchmarks/decoder.py --device cuda --bf16 # on a GPU, under bf16 autocast
"""
from __future__ import annotations

import contextlib

import torch

from ranem import nem as nem_module
from ranem.nem import RaNEM
from _common import add_device_args, device_from, random_classifier, round_robin, row

MODELS = [("tf_efficientnet_lite0", 144), ("vit_tiny_patch16_224", 64)]
WIDE, NARROW = (256, 128, 64, 32, 16), (128, 64, 32, 16, 8)
# (upsampling, output stride, block widths by output stride: the last entry is stride 1's)
VARIANTS = [("transposed", 1, WIDE), ("bilinear", 1, WIDE), ("bilinear", 2, WIDE), ("bilinear", 4, WIDE),
            ("bilinear", 8, WIDE), ("bilinear", 2, NARROW), ("bilinear", 4, NARROW)]


def parser():
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--variants", nargs="*", default=None,
                   help="upsample:stride:widths, e.g. bilinear:4:128,64,32,16,8 (default: all of VARIANTS)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (the paper's setting)")
    add_device_args(p)
    return p


def _variants(args):
    if not args.variants:
        return VARIANTS
    parts = [v.split(":") for v in args.variants]
    return [(u, int(s), tuple(int(w) for w in widths.split(","))) for u, s, widths in parts]


def _label(variant) -> str:
    upsample, stride, widths = variant
    return f"{upsample}/{stride}/{max(widths)}"


def _autocast(device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(args) -> list:
    """Print every variant's timings and return one row per (model, variant, batch)."""
    device, rows = device_from(args), []
    default = (nem_module.DEFAULT_UPSAMPLE, nem_module.DEFAULT_OUTPUT_STRIDE, nem_module.DEFAULT_DECODER_CHANNELS)
    for name, size in MODELS:
        model = random_classifier(name, size, device)
        nems = {_label(v): (v, RaNEM(model, upsample=v[0], output_stride=v[1], decoder_channels=v[2]).eval())
                for v in _variants(args)}
        print(f"{name} at {size} px on {device} ({torch.get_num_threads()} threads); decoder parameters: "
              + ", ".join(f"{label} {sum(p.numel() for p in n.decoder.parameters()) / 1e6:.2f} M"
                          for label, (_, n) in nems.items()))
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=device)

            def forward():
                with torch.inference_mode(), _autocast(device, args.bf16):
                    model(x)

            def explain(n):
                def call():
                    with _autocast(device, args.bf16):
                        n.predict(x)
                return call

            runs = {"forward": forward, **{label: explain(n) for label, (_, n) in nems.items()}}
            med = round_robin(runs, device, args.repeats, inner=max(1, 8 // batch), warmup=2)
            print(f"  batch {batch}: forward {1000 * med['forward']:.2f} ms")
            for label, ((u, s, widths), _) in nems.items():
                ratio = med[label] / med["forward"]
                mark = "  <- default" if (u, s, tuple(widths)) == default else ""
                print(f"    {label:<16} {1000 * med[label]:8.2f} ms  explain/forward {ratio:.2f}{mark}")
                rows.append(row("decoder", f"{name} {size} px, {u} upsampling, output stride {s}, widest block "
                                f"{max(widths)}, batch {batch}", med[label], med["forward"],
                                "the classifier's forward alone on the same batch (target <= 1.3)"
                                + (" (bf16 autocast)" if args.bf16 and device.type == "cuda" else "")))
    return rows


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
