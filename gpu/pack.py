"""Pack what the offline GPU machine lacks into one folder that travels with the working tree.

Usage: python gpu/pack.py [OUT] [--budget-mib N] [--quality Q] [--n-val N] [--python-version 3.12]
(``make gpu-pack``; OUT defaults to ``gpu-pack/``, which .gitignore ignores). The folder holds

- ``wheels/``: prodigyopt and captum (ranem's dependencies that the machine's image lacks) and the
  notebook stack that ``book/_execute.py`` and the chapters' ``myst_nb.glue`` need (nbclient,
  ipykernel, IPython, ...), downloaded with ``pip download --no-deps`` for the machine's Python
  (3.12, x86-64 Linux); jedi and debugpy are left out (IPython and ipykernel run without them);
- ``pretrained/``: the timm-named ImageNet weights of EfficientNet-Lite2 as safetensors plus their
  JSON note (``ranem.pretrained.pretrained_weights``), so the machine needs no wheel for them;
- ``data/imagenette2-224/{train,val}/<wnid>/*.JPEG``: a class-balanced subset of Imagenette laid
  out as the full set (``ranem.data`` finds it unchanged), every image decoded and resized to
  224 px as the loader does, and re-encoded as JPEG at ``--quality``: ``--n-val`` validation
  images, then as many training images as the budget leaves;
- ``MANIFEST.json``: what is where, with the byte counts.

The budget is what the device tool carries: 64 MiB for the working tree and the carried folders
together, so by default 64 MiB minus the tracked files of the checkout minus a 1 MiB margin.
``gpu/device.sh`` installs the wheels there and executes chapters 10 and 11.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIB = 2 ** 20
CARRY_LIMIT = 64 * MIB  # the device tool: working tree + carried paths
MARGIN = 1 * MIB
LAYOUT = "imagenette2-224"
IMAGE_SIZE = 224
WEIGHTS = "efficientnet_lite2"  # ranem.pretrained.WHEELS name of the gpu-mode CNN
# ranem's dependencies missing from the GPU image, then the notebook stack (nbclient + ipykernel +
# IPython and their dependencies that the image lacks; it has pyyaml, psutil, packaging, pygments,
# python-dateutil, six, attrs, tqdm, matplotlib).
WHEELS = ["prodigyopt", "captum",
          "myst-nb", "nbclient", "nbformat", "fastjsonschema", "jsonschema", "jsonschema-specifications",
          "referencing", "rpds-py", "jupyter_client", "jupyter_core", "traitlets", "platformdirs", "pyzmq",
          "tornado", "ipykernel", "comm", "matplotlib-inline", "nest_asyncio", "ipython", "ipython_pygments_lexers",
          "decorator", "parso", "pexpect", "ptyprocess", "prompt_toolkit", "wcwidth", "stack_data", "executing",
          "asttokens", "pure_eval"]


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files git tracks in ``root`` (what the device tool sends besides the carry)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def default_budget(root: Path = ROOT) -> int:
    return CARRY_LIMIT - tree_bytes(root) - MARGIN


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def download_wheels(dest: Path, python_version: str = "3.12") -> list[Path]:
    """``pip download --no-deps`` of WHEELS for CPython ``python_version`` on x86-64 Linux."""
    dest.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
           "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(dest), *WHEELS]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def copy_weights(dest: Path) -> list[Path]:
    """The converted Lite2 weights and their note, from ``ranem.pretrained`` (converted on first use)."""
    from ranem.pretrained import pretrained_weights
    path = pretrained_weights(WEIGHTS)
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dest / p.name)) for p in (path, path.with_suffix(".json"))]


def encode(path: Path, quality: int) -> bytes:
    """One image as the loader sees it at 224 px (ranem.data's decoder), re-encoded as JPEG."""
    from PIL import Image

    from ranem.data.imagenette import _load_rgb
    buf = io.BytesIO()
    Image.fromarray(_load_rgb(path, IMAGE_SIZE)).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _round_robin(files: list[Path], labels: list[int], seed: int):
    """Files in a seeded order that cycles over the classes: any prefix is class-balanced."""
    import torch
    g = torch.Generator().manual_seed(seed)
    per_class = {}
    for f, c in zip(files, labels):
        per_class.setdefault(c, []).append(f)
    queues = {c: [fs[i] for i in torch.randperm(len(fs), generator=g).tolist()] for c, fs in per_class.items()}
    for i in range(max(len(q) for q in queues.values())):
        for c in sorted(queues):
            if i < len(queues[c]):
                yield queues[c][i]


def pack_images(dest: Path, budget: int, n_val: int, quality: int, source=None, seed: int = 0) -> dict:
    """Write the subset under ``dest/<LAYOUT>``: ``n_val`` validation images, then training images
    until ``budget`` bytes are used. Returns counts and bytes per split."""
    from ranem.data.imagenette import _list_files, find_imagenette
    src = find_imagenette(source, download=False)
    used, stats = 0, {}
    for split, limit in (("val", n_val), ("train", None)):
        files, labels = _list_files(src, split)
        count = nbytes = 0
        for f in _round_robin(files, labels, seed):
            if limit is not None and count == limit:
                break
            blob = encode(f, quality)
            if used + len(blob) > budget:
                if limit is not None:
                    raise ValueError(f"the budget of {budget / MIB:.1f} MiB holds only {count} of the {n_val} "
                                     "validation images asked for")
                break
            target = dest / LAYOUT / split / f.parent.name / f"{f.stem}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
            used += len(blob)
            count, nbytes = count + 1, nbytes + len(blob)
        stats[split] = {"images": count, "bytes": nbytes, "mean_bytes": round(nbytes / max(1, count))}
    stats["source"] = str(src)
    return stats


def pack(out: Path, budget: int | None = None, n_val: int = 300, quality: int = 75,
         python_version: str = "3.12", source=None, wheels: bool = True) -> dict:
    """Build the folder ``out`` (emptied first) within ``budget`` bytes; returns the manifest."""
    from ranem import config
    budget = default_budget() if budget is None else budget
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheel_files = download_wheels(out / "wheels", python_version) if wheels else []
    weight_files = copy_weights(out / "pretrained")
    fixed = folder_bytes(out) + 4096  # the manifest
    if fixed >= budget:
        raise ValueError(f"wheels and weights alone take {fixed / MIB:.1f} MiB of the {budget / MIB:.1f} MiB budget")
    images = pack_images(out / "data", budget - fixed, n_val, quality, source)
    gpu = config.settings("gpu")
    manifest = {
        "budget_bytes": budget, "total_bytes": 0, "quality": quality, "image_size": IMAGE_SIZE,
        "wheels": {p.name: p.stat().st_size for p in wheel_files},
        "wheels_bytes": sum(p.stat().st_size for p in wheel_files),
        "pretrained": {p.name: p.stat().st_size for p in weight_files},
        "pretrained_bytes": sum(p.stat().st_size for p in weight_files),
        "images": images,
        # what gpu mode will ask of this subset (ranem.config): NEM training images + its validation
        # draw from the train split, evaluation images from the val split
        "gpu_needs": {"train": gpu.nem_train + 32, "val": gpu.n_eval},
    }
    while True:  # the manifest holds the folder's size, its own included
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        if manifest["total_bytes"] == folder_bytes(out):
            return manifest
        manifest["total_bytes"] = folder_bytes(out)


def report(manifest: dict) -> str:
    m = manifest
    rows = [f"wheels      {len(m['wheels']):>5} files {m['wheels_bytes'] / MIB:>7.2f} MiB",
            f"pretrained  {len(m['pretrained']):>5} files {m['pretrained_bytes'] / MIB:>7.2f} MiB"]
    for split in ("train", "val"):
        s = m["images"][split]
        rows.append(f"{split:<11} {s['images']:>5} JPEGs {s['bytes'] / MIB:>7.2f} MiB "
                    f"({s['mean_bytes'] / 1024:.1f} KiB each, {m['image_size']} px, quality {m['quality']})")
    rows.append(f"total                   {m['total_bytes'] / MIB:>7.2f} MiB of a {m['budget_bytes'] / MIB:.2f} MiB budget")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "gpu-pack")
    parser.add_argument("--budget-mib", type=float, default=None, help="default: 64 MiB - tracked files - 1 MiB")
    parser.add_argument("--quality", type=int, default=75)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    budget = None if args.budget_mib is None else int(args.budget_mib * MIB)
    manifest = pack(args.out, budget, args.n_val, args.quality, args.python_version)
    print(report(manifest))
    needs, got = manifest["gpu_needs"], manifest["images"]
    short = [f"{s}: {got[s]['images']} < {needs[s]}" for s in needs if got[s]["images"] < needs[s]]
    if short:
        sys.exit("the subset is smaller than gpu mode asks for (" + "; ".join(short) + ")")


if __name__ == "__main__":
    main()
