"""Training throughput of Ra-NEM and NEMt against their floor.

A Ra-NEM step on B images with S samples must at least (i) run the classifier once on the B clean
images and (ii) run it forward and backward (to its input) on the S*B masked images. That floor is
timed on its own (plain autograd, no decoder, no masking) and compared with a full training step
(decoder forward/backward, Gumbel-top-k operator, substrates, Prodigy step). NEMt is the same with
S = 1. Ratios step / floor near 1 mean the loop adds little beyond what the method must do.

On a GPU the paper's setting can be projected: ResNet50 at 224 px, batch 32, S = 6 -> seconds for
10 epochs of 10,000 images, next to the paper's 700 s (Ra-NEM) and 335 s (NEMt) on an RTX 4090.

  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 \\
      .venv/bin/python benchmarks/train.py --model resnet10t --size 64 --batch 32
  .venv/bin/python benchmarks/train.py --model resnet50 --size 224 --batch 32     # on a GPU
"""
from __future__ import annotations

import contextlib
import io

import timm
import torch
from prodigyopt import Prodigy

from ranem.nem import NEMt, RaNEM
from _common import benchmark_parser, device_from, round_robin, row

PAPER_SECONDS = {"ranem": 700, "nemt": 335}  # ResNet50, 10 epochs x 10k images, RTX 4090 (Table 7)


def make_floor(model, x, samples, amp):
    def floor():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        xm = x.repeat_interleave(samples, 0).requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xm).float().softmax(1)[:, 0].sum()
        out.backward()
    return floor


def make_step(nem, x, samples, amp):
    with contextlib.redirect_stdout(io.StringIO()):
        opt = Prodigy(nem.decoder.parameters(), lr=1.0, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    nem.train()

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = nem.loss(x, generator=gen, samples=samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def parser():
    p = benchmark_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=6)
    return p


def run(args) -> list:
    """Print the timings and return the rows step / floor for Ra-NEM and NEMt."""
    device = device_from(args)
    amp = device.type == "cuda"
    torch.manual_seed(0)
    kwargs = {"img_size": args.size} if "vit" in args.model else {}
    model = timm.create_model(args.model, num_classes=1000, **kwargs).eval().to(device).requires_grad_(False)
    model.ranem_info = {"image_size": args.size}
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ranem, nemt = RaNEM(model).to(device), NEMt(model).to(device)
    if device.type == "cuda":
        ranem.to(memory_format=torch.channels_last), nemt.to(memory_format=torch.channels_last)
    runs = {
        "floor S": make_floor(model, x, args.samples, amp),
        "ranem": make_step(ranem, x, args.samples, amp),
        "floor 1": make_floor(model, x, 1, amp),
        "nemt": make_step(nemt, x, 1, amp),
    }
    med = round_robin(runs, device, args.repeats, warmup=2)
    print(f"model {args.model} (random init) at {args.size} px on {device} ({torch.get_num_threads()} threads), "
          f"batch {args.batch}, S = {args.samples}, amp {amp}")
    for name, t in med.items():
        print(f"  {name:<8} {1000 * t:9.1f} ms/step  {args.batch / t:8.1f} images/s")
    print(f"  ranem step / floor (S={args.samples}) = {med['ranem'] / med['floor S']:.2f}")
    print(f"  nemt step / floor (S=1)  = {med['nemt'] / med['floor 1']:.2f}")
    print(f"  ranem / nemt time per image = {med['ranem'] / med['nemt']:.2f}  (paper, Table 7: 700/335 = 2.09)")
    if args.model == "resnet50" and args.size == 224:
        for kind in ("ranem", "nemt"):
            projected = 10 * 10_000 / args.batch * med[kind]
            print(f"  {kind}: 10 epochs x 10k images = {projected:.0f} s projected "
                  f"(paper, RTX 4090: {PAPER_SECONDS[kind]} s; ratio {projected / PAPER_SECONDS[kind]:.2f})")
    setting = f"{args.model} {args.size} px (random weights), batch {args.batch}"
    return [row("train", f"Ra-NEM training step / floor (S = {args.samples})", med["ranem"], med["floor S"],
                f"classifier forward on the clean batch + forward/backward to the input on the S x B "
                f"unmasked copies, no decoder; {setting}"),
            row("train", "NEMt training step / floor (S = 1)", med["nemt"], med["floor 1"],
                f"the same floor with S = 1; {setting}")]


def main():
    run(parser().parse_args())


if __name__ == "__main__":
    main()
