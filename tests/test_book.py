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
