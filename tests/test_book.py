"""Checks of the book's notebooks as stored: prose that quotes a computed number must glue it.

A markdown cell that references ``{glue:text}`key:fmt``` (or any other glue role/directive) is
rendered from the output a code cell stored under that name. The test fails when a referenced key
is not among the stored outputs, i.e. the number would be missing, or typed by hand and stale.
"""
import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
# {glue}`key`, {glue:text}`key:.3f`, {glue:md}`key`, and ```{glue:figure} key``` directives
REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)(?::[^`]*)?`|```\{glue(?::\w+)?\}\s+(\S+)")


def references(nb: dict) -> set[str]:
    keys = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for a, b in REFERENCE.findall("".join(cell["source"])):
                keys.add(a or b)
    return keys


def glued(nb: dict) -> set[str]:
    """Names that myst-nb's ``glue`` stored in the outputs (display data with scrapbook metadata)."""
    names = set()
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                names.add(name)
    return names


def test_the_reference_pattern_reads_roles_and_directives():
    nb = {"cells": [{"cell_type": "markdown", "source": ["a {glue:text}`x:.2f` b {glue}`y` c\n",
                                                         "```{glue:figure} fig\n```\n"]}]}
    assert references(nb) == {"x", "y", "fig"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glued_number_in_the_prose_is_stored_by_a_cell(path):
    nb = json.loads(path.read_text())
    missing = references(nb) - glued(nb)
    assert not missing, f"{path.name}: prose references glue keys that no stored output holds: {sorted(missing)}"


def _figure_cells(nb: dict):
    """(index, cell, number of images) of the code cells whose stored outputs draw a figure."""
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        images = sum(1 for out in cell.get("outputs", [])
                     if any(k.startswith("image/") for k in out.get("data", {}))
                     and not out.get("metadata", {}).get("scrapbook"))  # glued figures are shown elsewhere
        if images:
            yield i, cell, images


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_one_image_with_a_caption_and_a_name(path):
    nb = json.loads(path.read_text())
    for i, cell, images in _figure_cells(nb):
        figure = cell["metadata"].get("mystnb", {}).get("figure", {})
        assert images == 1, f"{path.name}, cell {i}: {images} images in one cell; one figure per cell gets one caption"
        assert figure.get("caption") and figure.get("name", "").startswith("fig-"), (
            f"{path.name}, cell {i}: a figure needs mystnb.figure metadata with a caption and a name fig-...")


def test_every_numbered_reference_names_a_figure_of_the_book():
    names, refs = set(), set()
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        names |= {c["metadata"].get("mystnb", {}).get("figure", {}).get("name") for c in nb["cells"]}
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                refs |= {(path.name, r) for r in re.findall(r"\{numref\}`(?:[^`<]*<)?([^`>]+)>?`", "".join(cell["source"]))}
    missing = sorted((p, r) for p, r in refs if r not in names)
    assert not missing, f"{{numref}} targets that no figure is named: {missing}"
