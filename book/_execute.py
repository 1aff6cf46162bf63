"""Execute the book's notebooks in place, in the current run mode, recording how each ran.

Usage: python book/_execute.py [NOTEBOOK ...]   (default: every notebook in _toc.yml order)

A notebook whose metadata says ``"ranem": {"requires": "gpu"}`` runs only where CUDA is
available, and outputs stored from a ``gpu``-mode run are only replaced by another ``gpu`` run;
otherwise the stored outputs are kept untouched. Each executed notebook gets
``metadata.ranem.execution`` = mode, device, date, seconds and package versions, which the
execution-status chapter tabulates. Outputs are written atomically (temp file + rename), so an
interrupted run never leaves a half-written notebook.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
import torch
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
# On a cold cache one cell of chapter 6 trains three explanation networks: more than an hour on
# 2 cores (a 30-minute limit killed it). A limit still ends a hung kernel, a day later at worst.
CELL_TIMEOUT_S = 6 * 3600


def toc_notebooks() -> list[Path]:
    """Notebooks listed in _toc.yml, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def reason_to_keep(meta: dict, mode: str, cuda: bool) -> str | None:
    """Why a notebook's stored outputs must not be replaced by this run, or None to run it.

    A notebook that needs a GPU is never run without one, and outputs stored from a ``gpu``-mode
    run are never replaced by a smaller mode (a laptop's ``make book`` must not erase them)."""
    if meta.get("requires") == "gpu" and not cuda:
        return "needs a GPU"
    stored = (meta.get("execution") or {}).get("mode")
    if stored == "gpu" and mode != "gpu":
        return "its stored outputs come from gpu mode; RANEM_MODE=gpu refreshes them"
    return None


def execute(path: Path, mode: str) -> float:
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.setdefault("ranem", {})
    reason = reason_to_keep(meta, mode, torch.cuda.is_available())
    if reason:
        print(f"skip {path.name}: {reason}; keeping its stored outputs", flush=True)
        return 0.0
    print(f"run  {path.name} (RANEM_MODE={mode}) ...", flush=True)
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    import ranem
    meta["execution"] = {
        "mode": mode,
        "device": device_name(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "ranem": ranem.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    print(f"done {path.name} in {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args()
    from ranem.config import get_mode
    mode = get_mode()
    os.environ["RANEM_MODE"] = mode
    paths = [p.resolve() for p in args.notebooks] or toc_notebooks()
    total = sum(execute(p, mode) for p in paths)
    print(f"executed {len(paths)} notebook(s) in {total:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
