"""Run every ratio benchmark once, with small cpu-friendly settings, and write one markdown table.

Each benchmark script exposes ``parser()`` and ``run(args) -> list[Row]``; this runs them one after
the other in this process and writes ``benchmarks/results.md``: date, machine, torch version, and
per row our time, the floor's or peer's time and their ratio. Ratios are what to read: both sides
of a ratio are timed in the same run, interleaved, so a busy shared machine slows them alike; the
absolute times are only there to show the scale.

  make bench          # = the malloc settings of the Makefile + python benchmarks/run_all.py

A peer library (captum-rise, Quantus) missing from the environment gives the row "peer not
installed" instead of a failure. The project's environment never has them; to measure them too,
run this from a separate environment (see benchmarks/metrics.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata as md
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from _common import Row, peer_missing

HERE = Path(__file__).resolve().parent
# (script, arguments): sized so that the whole run takes minutes on 2 busy cores.
BENCHMARKS = [
    # The cpu-mode classifiers (random weights): the CNN at 144 px, the ViT at 64 px with 16 tokens.
    ("explain", ["--model", "tf_efficientnet_lite0", "--size", "144", "--batches", "1", "64", "--repeats", "7"]),
    ("explain", ["--model", "vit_tiny_patch16_224", "--size", "64", "--batches", "1", "64", "--repeats", "7"]),
    # The first decoder design against the current default (benchmarks/decoder.py measures them all).
    ("decoder", ["--repeats", "5", "--variants", "transposed:1:256,128,64,32,16", "bilinear:4:128,64,32,16,8"]),
    ("train", ["--batch", "16", "--repeats", "3"]),
    ("curves", ["--images", "8", "--steps", "32", "--repeats", "3"]),
    ("baselines", ["--images", "2", "--masks", "500", "--repeats", "3", "--skip-per-image"]),
    ("metrics", ["--images", "4", "--steps", "32", "--samples", "5", "--repeats", "3"]),
]
PEERS = {"rise": "captum-rise", "quantus": "Quantus"}  # module -> package, the peers a script may import


def run_one(name: str, argv: list[str]) -> list[Row]:
    """The rows of one benchmark; a missing peer or a failure becomes a row instead of ending the run."""
    try:
        module = importlib.import_module(name)
        return module.run(module.parser().parse_args(argv))
    except Exception as err:  # noqa: BLE001  (one broken benchmark must not lose the others' rows)
        if isinstance(err, ModuleNotFoundError) and err.name in PEERS:
            return [peer_missing(name, "(whole benchmark)", None, PEERS[err.name])]
        traceback.print_exc()
        return [Row(name, f"failed: {type(err).__name__}: {err}", None, None, None, "see the run's output")]


def collect(benchmarks=None) -> list[Row]:
    rows = []
    for name, argv in BENCHMARKS if benchmarks is None else benchmarks:
        print(f"\n=== {name} {' '.join(argv)}", flush=True)
        rows += run_one(name, argv)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (benchmarks on cuda)"
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads (benchmarks on cpu)"


def peer_versions() -> str:
    """Which peers this environment has: their rows are measured only where they are installed."""
    found = []
    for package in PEERS.values():
        try:
            found.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            found.append(f"{package} not installed")
    return "peers: " + ", ".join(found)


def seconds(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{1000 * t:.2f} ms" if t < 1 else f"{t:.2f} s"


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # a "|" inside a cell would split it


def table(rows: list[Row], when: dt.datetime, where: str, took_s: float) -> str:
    """The markdown page: a header saying when, where and how, the table, then what each floor/peer is."""
    lines = [
        "# Benchmark ratios",
        "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {where}, torch {torch.__version__}, by `make bench` "
        f"(`benchmarks/run_all.py`, {took_s / 60:.1f} min in all).",
        "",
        "ratio = ours / floor or peer, both timed in the same run (medians of repeats, interleaved except in "
        "the metrics rows, which time each side's repeats back to back; below 1: ours is faster). "
        "Times are per call unless the row says per image.",
        "",
        "| # | benchmark | ratio | ours | floor / peer | what |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rows, 1):
        ratio = "peer not installed" if r.ratio is None and "peer not installed" in r.against else (
            "—" if r.ratio is None else f"{r.ratio:.2f}")
        lines.append(f"| {i} | {r.benchmark} | {ratio} | {seconds(r.ours)} | {seconds(r.base)} | {cell(r.what)} |")
    lines += ["", "What each row is measured against:", ""]
    lines += [f"{i}. {r.against}" for i, r in enumerate(rows, 1)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    ap.add_argument("--only", nargs="*", help="benchmarks to run (default: all)")
    args = ap.parse_args(argv)
    chosen = [(n, a) for n, a in BENCHMARKS if not args.only or n in args.only]
    when, start = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    rows = collect(chosen)
    text = table(rows, when, f"{machine()}; {peer_versions()}", time.perf_counter() - start)
    args.out.write_text(text)
    print(f"\n{text}\nwritten to {args.out}")
    return 1 if any(r.what.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
