"""Peak memory of every explainer in the comparison, per call of ``explain_batch`` images, against
its floor: the same process after loading the model and the images and running one forward of the
batch. Each measurement runs in a fresh subprocess (the peak resident set of a process never goes
down), with the allocator settings of the Makefile (which return no freed memory to the system).

    python benchmarks/memory.py --mode cpu --images 64 16

prints one row per explainer: peak MB at each batch size and the ratio to the floor. Chapter 8 calls
``metrics.evaluate`` with its default ``explain_batch``; this benchmark is how that default was chosen.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from ranem import baselines, config, data, zoo
mode, name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
S = config.settings(mode)
model = zoo.get_classifier("cnn", "imagenette", settings=S, progress=False)
u8, _ = data.evaluation_images(batch, config.image_size_for("cnn", S), seed=0, limit=S.imagenette_val)
x = data.normalize(u8, model.ranem_info["mean"], model.ranem_info["std"])
with torch.no_grad():
    model(x)
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if name != "floor":
    baselines.get_explainer(name, settings=S)(model, x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"floor": floor, "peak": peak}))
"""
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "MALLOC_TOP_PAD_": "268435456"}
NEEDS_TRAINING = {"ranem", "ranem_insdel", "nemt"}  # their cost is one forward plus the decoder


def measure(mode: str, name: str, batch: int) -> dict:
    env = {**os.environ, **ALLOCATOR, "RANEM_MODE": mode}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, name, str(batch)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="cpu")
    parser.add_argument("--images", type=int, nargs="+", default=[64, 16], help="explain_batch values")
    parser.add_argument("--methods", nargs="*", default=None)
    args = parser.parse_args()
    from ranem import baselines
    methods = args.methods or [n for n in baselines.COMPARED if n not in NEEDS_TRAINING]
    print(f"mode {args.mode}; peak resident MB per explainer call (ratio to the floor of the same batch)")
    print(f"{'method':<22}" + "".join(f"{f'batch {b}':>24}" for b in args.images))
    for name in methods:
        cells = []
        for b in args.images:
            r = measure(args.mode, name, b)
            cells.append(f"{r['peak']:>10.0f} MB ({r['peak'] / r['floor']:4.1f}x)")
        print(f"{name:<22}" + "".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
