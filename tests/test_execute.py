"""The book's executor never replaces outputs it should keep (GPU-only notebooks, gpu-mode outputs)."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "book" / "_execute.py"
_spec = importlib.util.spec_from_file_location("book_execute", _PATH)
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)


@pytest.mark.parametrize("meta,mode,cuda,keep", [
    ({}, "cpu", False, False),
    ({"execution": {"mode": "cpu"}}, "cpu", False, False),
    ({"execution": {"mode": "cpu"}}, "gpu", True, False),
    ({"execution": {"mode": "gpu"}}, "cpu", False, True),
    ({"execution": {"mode": "gpu"}}, "cpu", True, True),     # a GPU machine running cpu mode
    ({"execution": {"mode": "gpu"}}, "quick", False, True),
    ({"execution": {"mode": "gpu"}}, "gpu", True, False),
    ({"requires": "gpu"}, "cpu", False, True),
    ({"requires": "gpu"}, "gpu", True, False),
])
def test_reason_to_keep(meta, mode, cuda, keep):
    assert (execute.reason_to_keep(meta, mode, cuda) is not None) == keep


def test_toc_notebooks_exist_in_reading_order():
    paths = execute.toc_notebooks()
    assert paths and all(p.suffix == ".ipynb" and p.exists() for p in paths)
    assert paths[0].name == "00_getting_started.ipynb"
