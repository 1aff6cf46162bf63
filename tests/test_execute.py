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


def _notebook(*sources):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# prose")] + [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_inputs_digest_follows_mode_code_and_package_but_not_prose_or_outputs(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    nb = _notebook("print(1)")
    base = execute.inputs_digest(nb, "cpu", package)
    assert execute.inputs_digest(nb, "quick", package) != base
    assert execute.inputs_digest(_notebook("print(2)"), "cpu", package) != base
    nb.cells[0].source = "# other prose"
    nb.cells[1].outputs = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    assert execute.inputs_digest(nb, "cpu", package) == base
    (package / "config.py").write_text("# every mode's settings: the mode's own are hashed instead\n")
    assert execute.inputs_digest(nb, "cpu", package) == base
    (package / "a.py").write_text('"""A docstring."""\nx = 1  # and a comment\n')
    assert execute.inputs_digest(nb, "cpu", package) == base
    (package / "a.py").write_text("x = 2\n")
    assert execute.inputs_digest(nb, "cpu", package) != base


def test_up_to_date_needs_the_recorded_digest():
    assert execute.up_to_date({"execution": {"inputs": "abc"}}, "abc")
    assert not execute.up_to_date({"execution": {"mode": "cpu"}}, "abc")
    assert not execute.up_to_date({}, "abc")


def _finished(code=0):
    return type("Done", (), {"returncode": code})()


def test_parallel_execution_starts_only_the_notebooks_to_run_and_reports_failures(monkeypatch, tmp_path):
    import threading
    paths = [tmp_path / name for name in ("00_a.ipynb", "01_b.ipynb", "02_c.ipynb")]
    started, lock = [], threading.Lock()

    def fake_run(command, env):
        with lock:
            started.append(Path(command[-1]).name)
        return _finished(1 if command[-1].endswith("01_b.ipynb") else 0)

    monkeypatch.setattr(execute.subprocess, "run", fake_run)
    monkeypatch.setattr(execute, "skipped", lambda path, mode, force: path.name == "02_c.ipynb")
    monkeypatch.setattr(execute, "stored_seconds", lambda path: 0.0)
    with pytest.raises(SystemExit, match="failed: 01_b.ipynb$"):
        execute.execute_in_parallel(paths, "cpu", jobs=2, force=False)
    assert sorted(started) == ["00_a.ipynb", "01_b.ipynb"]
    monkeypatch.setattr(execute.subprocess, "run", lambda command, env: _finished())
    assert execute.execute_in_parallel(paths, "cpu", jobs=2, force=False) == paths[:2]


def test_parallel_kernels_split_the_cores(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(execute.subprocess, "run", lambda command, env: seen.append(env["OMP_NUM_THREADS"])
                        or _finished())
    monkeypatch.setattr(execute, "skipped", lambda path, mode, force: False)
    monkeypatch.setattr(execute, "stored_seconds", lambda path: 0.0)
    monkeypatch.setattr(execute.os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    execute.execute_in_parallel([tmp_path / "00_a.ipynb", tmp_path / "01_b.ipynb"], "cpu", jobs=2, force=True)
    assert seen == ["2", "2"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the reader's choice wins
    seen.clear()
    execute.execute_in_parallel([tmp_path / "00_a.ipynb"], "cpu", jobs=2, force=True)
    assert seen == ["1"]


@pytest.mark.parametrize("chapter_ran", [True, False])
def test_the_status_page_runs_last_and_again_whenever_a_chapter_ran(monkeypatch, tmp_path, chapter_ran):
    calls = []

    def fake_execute(path, mode, force=False):
        calls.append((path.name, force))
        return 1.0 if chapter_ran and path.name != execute.STATUS_PAGE else 0.0

    monkeypatch.setattr(execute, "execute", fake_execute)
    monkeypatch.setattr(execute.sys, "argv", ["_execute.py", str(tmp_path / execute.STATUS_PAGE),
                                              str(tmp_path / "00_a.ipynb")])
    execute.main()
    assert calls == [("00_a.ipynb", False), (execute.STATUS_PAGE, chapter_ran)]


def test_parallel_runs_start_with_the_longest_stored_run(tmp_path):
    import nbformat
    paths = []
    for name, seconds in (("00_a", 5.0), ("01_b", None), ("02_c", 900.0), ("03_d", 5.0)):
        nb = _notebook("print(1)")
        if seconds is not None:
            nb.metadata["ranem"] = {"execution": {"seconds": seconds}}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        paths.append(tmp_path / f"{name}.ipynb")
    assert [p.stem for p in execute.longest_first(paths)] == ["02_c", "00_a", "03_d", "01_b"]
