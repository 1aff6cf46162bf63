"""Execute the book's notebooks in place, in the current run mode, recording how each ran.

Usage: python book/_execute.py [--force] [--jobs N] [NOTEBOOK ...]   (default: every notebook in _toc.yml order)

A notebook whose stored run is up to date is not run again (``--force`` runs it anyway): same
mode, same code cells, same ``ranem`` source, recorded as ``metadata.ranem.execution.inputs``
(``inputs_digest``). Its outputs are then what a new run would compute from the cached artefacts,
so a warm ``make book`` only renders.

A notebook whose metadata says ``"ranem": {"requires": "gpu"}`` runs only where CUDA is
available, and outputs stored from a ``gpu``-mode run are only replaced by another ``gpu`` run;
otherwise the stored outputs are kept untouched. Each executed notebook gets
``metadata.ranem.execution`` = mode, device, date, seconds and package versions, which the
execution-status chapter tabulates. Outputs are written atomically (temp file + rename), so an
interrupted run never leaves a half-written notebook.

``--jobs N`` runs N notebooks at once, each in its own process whose kernel gets cores / N torch
threads: the book's models are small and their batches short, so one thread per notebook does more
work per core than two threads on one notebook. Notebooks that need the same trained artefact meet
at its cache lock (one trains it, the other waits and loads it). They start longest stored run
first, so that a long chapter does not run alone at the end. The execution-status page runs
last, once the others' records are written, and again whenever a chapter ran.

The kernels it starts inherit ``RANEM_STATIC_WIDGETS=1`` (``ranem.viz.STATIC_WIDGETS_ENV``): a
cell that calls ``ranem.viz.widget_or_figure`` then stores the widget's static default view, a
captioned figure, instead of a widget that would not move in the online book. A live kernel, or
nbval, runs without it and shows the widget.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import datetime as dt
import hashlib
import json
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


def inputs_digest(nb, mode: str, package: Path = ROOT / "ranem") -> str:
    """SHA-256 of what a notebook's outputs depend on besides the data and the cache: its code
    cells, the run mode with its settings, and the code of every module of the package (whose cache
    keys follow from it) except config.py, which holds every mode's settings: the mode's own count.
    Comments and docstrings do not count: editing the package's documentation keeps the runs."""
    from ranem import config
    from ranem.cache import code_digest
    h = hashlib.sha256(json.dumps([mode, config.settings(mode).as_dict()], sort_keys=True, default=str).encode())
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode() + b"\0")
    h.update(code_digest(package).encode())
    return h.hexdigest()


def up_to_date(meta: dict, digest: str) -> bool:
    """Whether the stored run was made from the same inputs (``inputs_digest``)."""
    return (meta.get("execution") or {}).get("inputs") == digest


def reason_to_skip(nb, mode: str, force: bool) -> str | None:
    """Why this run leaves the notebook's stored outputs alone, or None to execute it."""
    meta = nb.metadata.get("ranem", {})
    reason = reason_to_keep(meta, mode, torch.cuda.is_available())
    if not reason and not force and up_to_date(meta, inputs_digest(nb, mode)):
        reason = "up to date (same mode, code cells and package source as its stored run)"
    return reason


def skipped(path: Path, mode: str, force: bool, nb=None) -> bool:
    """Whether ``path`` (read as ``nb`` if given) is left alone by this run, saying why."""
    reason = reason_to_skip(nb if nb is not None else nbformat.read(path, as_version=4), mode, force)
    if reason:
        print(f"skip {path.name}: {reason}; keeping its stored outputs", flush=True)
    return reason is not None


def execute(path: Path, mode: str, force: bool = False) -> float:
    nb = nbformat.read(path, as_version=4)
    if skipped(path, mode, force, nb):
        return 0.0
    meta = nb.metadata.setdefault("ranem", {})
    digest = inputs_digest(nb, mode)
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
        "inputs": digest,
    }
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    print(f"done {path.name} in {seconds:.0f} s", flush=True)
    return seconds


STATUS_PAGE = "execution_status.ipynb"  # tabulates the other notebooks' records: runs after them


def stored_seconds(path: Path) -> float:
    """Seconds of the notebook's stored run (0 when it has none)."""
    meta = nbformat.read(path, as_version=4).metadata.get("ranem", {})
    return float((meta.get("execution") or {}).get("seconds") or 0.0)


def longest_first(paths: list[Path]) -> list[Path]:
    """``paths`` ordered by the seconds of their stored runs, longest first (ties keep their order):
    started first, the long chapters do not end up running alone while the other cores idle."""
    return sorted(paths, key=lambda p: -stored_seconds(p))


def execute_in_parallel(paths: list[Path], mode: str, jobs: int, force: bool) -> list[Path]:
    """Run each notebook that this run does not skip in its own ``_execute.py`` process, ``jobs``
    at a time, longest stored run first; the kernels split the cores between them (``OMP_NUM_THREADS``,
    unless already set). Skipped notebooks are found here first, so a warm build starts no process
    for them. Returns the notebooks run; raises SystemExit naming those that failed."""
    paths = longest_first([p for p in paths if not skipped(p, mode, force)])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    command = [sys.executable, str(Path(__file__).resolve()), "--force"]  # checked above already

    def run_one(path: Path) -> int:
        return subprocess.run(command + [str(path)], env=env).returncode

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(run_one, paths))
    failed = [p.name for p, code in zip(paths, codes) if code]
    if failed:
        raise SystemExit(f"these notebooks failed: {', '.join(failed)}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--force", action="store_true", help="run notebooks whose stored run is up to date too")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once (default 1)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive number of notebooks, got {args.jobs}")
    from ranem.config import get_mode
    from ranem.viz import STATIC_WIDGETS_ENV
    mode = get_mode()
    os.environ["RANEM_MODE"] = mode
    # The kernels inherit this environment: they draw widgets as static figures for the book.
    os.environ[STATIC_WIDGETS_ENV] = "1"
    paths = [p.resolve() for p in args.notebooks] or toc_notebooks()
    chapters = [p for p in paths if p.name != STATUS_PAGE]
    start = time.perf_counter()
    if args.jobs > 1 and len(chapters) > 1:
        ran = execute_in_parallel(chapters, mode, args.jobs, args.force)
    else:
        ran = [p for p in chapters if execute(p, mode, args.force)]
    for page in (p for p in paths if p.name == STATUS_PAGE):  # it tabulates the records just written
        execute(page, mode, force=args.force or bool(ran))
    print(f"executed {len(paths)} notebook(s) in {time.perf_counter() - start:.0f} s wall clock", flush=True)


if __name__ == "__main__":
    sys.exit(main())
