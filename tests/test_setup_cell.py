"""The set-up cell that opens every chapter (book/_setup_cell.py): in place, canonical, and doing
what it says in Colab (install, cpu mode) and nowhere else (print the mode only)."""
import copy
import importlib.util
import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("setup_cell", ROOT / "book" / "_setup_cell.py")
setup_cell = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_cell)

CHAPTERS = setup_cell.chapters()
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_every_chapter_is_covered():
    assert [p.name[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(12)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_first_code_cell_is_the_canonical_set_up_cell(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code[0].source == setup_cell.SOURCE, f"{path.name}: run python book/_setup_cell.py"
    assert code[0].metadata["ranem"]["setup"] is True and "hide-input" in code[0].metadata["tags"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is code[0]  # right after the title
    assert sum(setup_cell.is_setup(cell) for cell in nb.cells) == 1
    assert not setup_cell.update(path, write=False), f"{path.name}: the script would still change it"


def test_the_pip_command_names_the_repository_and_real_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"book", "lite"} <= set(extras)
    assert f"@ git+{REPOSITORY}\"" in setup_cell.SOURCE


def run_cell(monkeypatch, colab: bool, mode: str | None) -> list:
    """Execute the cell as a kernel would; return the commands it passed to subprocess.run."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if mode is None:
        monkeypatch.delenv("RANEM_MODE", raising=False)
    else:
        monkeypatch.setenv("RANEM_MODE", mode)
    exec(compile(setup_cell.SOURCE, "<set-up cell>", "exec"), {})
    return calls


def pip(extras: str) -> list:
    return [([sys.executable, "-m", "pip", "install", "-q", f"ranem[{extras}] @ git+{REPOSITORY}"],
             {"check": True})]


def test_in_colab_it_installs_the_package_and_chooses_cpu(monkeypatch, capsys):
    assert run_cell(monkeypatch, colab=True, mode=None) == pip("book")
    assert os.environ["RANEM_MODE"] == "cpu"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("Run mode: cpu.") and "RANEM_MODE" in out


@pytest.mark.parametrize("mode, extras", [("quick", "book"), ("gpu", "book,lite")])
def test_in_colab_a_chosen_mode_is_kept(monkeypatch, capsys, mode, extras):
    assert run_cell(monkeypatch, colab=True, mode=mode) == pip(extras)
    assert os.environ["RANEM_MODE"] == mode
    assert capsys.readouterr().out.startswith(f"Run mode: {mode}.")


@pytest.mark.parametrize("mode", [None, "quick"])
def test_outside_colab_it_only_prints_the_mode(monkeypatch, capsys, mode):
    from ranem import config

    assert run_cell(monkeypatch, colab=False, mode=mode) == []
    assert os.environ.get("RANEM_MODE") == mode
    assert capsys.readouterr().out.startswith(f"Run mode: {config.get_mode()}.")


def title_notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title", id="title"), *cells]
    return nb


def test_the_script_inserts_once_and_is_idempotent():
    nb = setup_cell.with_setup_cell(title_notebook(nbformat.v4.new_code_cell("x = 1", id="a")))
    assert [c.get("id") for c in nb.cells] == ["title", setup_cell.CELL_ID, "a"]
    again = setup_cell.with_setup_cell(nbformat.from_dict(nb))
    assert nbformat.writes(again) == nbformat.writes(nb)


def test_the_script_replaces_a_stale_misplaced_copy_and_keeps_the_rest():
    stale = nbformat.v4.new_code_cell("print('old set-up')", id="old",
                                      metadata={"ranem": {"setup": True}, "execution": {"iopub.status.idle": "2026-12-04T20:00:00Z"}})
    stale.outputs = [nbformat.v4.new_output("stream", text="old\n")]
    other = nbformat.v4.new_code_cell("x = 1", id="a", metadata={"tags": ["parameters"]})
    other.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    before = copy.deepcopy(other)
    nb = setup_cell.with_setup_cell(title_notebook(other, stale))
    assert [c.get("id") for c in nb.cells] == ["title", "old", "a"]
    assert nb.cells[1].source == setup_cell.SOURCE and nb.cells[1].outputs == []
    assert "execution" not in nb.cells[1].metadata  # the old run's timings
    assert nb.cells[2] == before  # untouched, outputs included


def test_a_canonical_cell_keeps_its_outputs():
    cell = nbformat.v4.new_code_cell(setup_cell.SOURCE, id=setup_cell.CELL_ID,
                                     metadata={"ranem": {"setup": True}, "tags": ["hide-input"]})
    cell.outputs = [nbformat.v4.new_output("stream", text="Run mode: cpu.\n")]
    nb = setup_cell.with_setup_cell(title_notebook(cell))
    assert nb.cells[1].outputs == cell.outputs
