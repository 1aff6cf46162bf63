"""benchmarks/run_all.py: the table it writes, and how it treats a missing peer or a failing
benchmark. The benchmarks themselves are replaced by fakes: nothing heavy runs here."""
from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pytest

# Appended, not prepended: benchmarks/operator.py must not shadow the standard library's operator.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402
import run_all  # noqa: E402
from _common import Row  # noqa: E402

WHEN = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table line (header and separator included)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()
            if line.startswith("|")]


def test_table_is_well_formed_markdown():
    rows = [_common.row("explain", "Ra-NEM / forward, batch 1", 0.003, 0.002, "the forward | alone"),
            _common.peer_missing("metrics", "MPRT / Quantus MPRT", 1.5, "Quantus")]
    text = run_all.table(rows, WHEN, "Test CPU, 2 torch threads", 90.0)
    cells = table_rows(text)
    assert len(cells) == 2 + len(rows)  # header, separator, one line per row
    assert len({len(c) for c in cells}) == 1  # every line has as many cells as the header
    assert all(set(c) <= set("-:") and c for c in cells[1])
    assert cells[2][2:5] == ["1.50", "3.00 ms", "2.00 ms"]  # ratio = ours / base
    assert cells[3][2:5] == ["peer not installed", "1.50 s", "—"]
    assert "2026-01-02 03:04 UTC" in text and "Test CPU, 2 torch threads" in text and "1.5 min" in text
    # one line per row saying what it is measured against, numbered like the rows
    assert "1. the forward | alone" in text and "2. Quantus: peer not installed" in text


def test_missing_peer_module_gives_a_row_not_a_failure(monkeypatch, tmp_path):
    def needs_quantus(args):
        raise ModuleNotFoundError("No module named 'quantus'", name="quantus")

    def fine(args):
        return [_common.row("fine", "ours / floor", 2.0, 1.0, "a floor")]

    def broken(args):
        raise RuntimeError("out of memory")

    fakes = {"needs_quantus": needs_quantus, "fine": fine, "broken": broken}
    monkeypatch.setattr(run_all.importlib, "import_module", lambda name: type(name, (), {
        "parser": staticmethod(lambda: run_all.argparse.ArgumentParser()), "run": staticmethod(fakes[name])}))
    monkeypatch.setattr(run_all, "BENCHMARKS", [(name, []) for name in fakes])
    out = tmp_path / "results.md"
    assert run_all.main(["--out", str(out)]) == 1  # a failed benchmark fails the run, after writing the table
    rows = table_rows(out.read_text())[2:]
    assert [r[1] for r in rows] == ["needs_quantus", "fine", "broken"]
    assert rows[0][2] == "peer not installed" and "Quantus: peer not installed" in out.read_text()
    assert rows[1][2] == "2.00"
    assert rows[2][5].startswith("failed: RuntimeError: out of memory")


def test_other_missing_modules_are_failures_not_missing_peers(monkeypatch):
    def needs_numpy(args):
        raise ModuleNotFoundError("No module named 'nump'", name="nump")
    monkeypatch.setattr(run_all.importlib, "import_module", lambda name: type(name, (), {
        "parser": staticmethod(lambda: run_all.argparse.ArgumentParser()), "run": staticmethod(needs_numpy)}))
    [row] = run_all.run_one("x", [])
    assert row.what.startswith("failed: ModuleNotFoundError") and row.ratio is None


def test_import_peer_is_none_when_not_installed():
    assert _common.import_peer("no_such_peer_library_xyz") is None
    assert isinstance(_common.peer_missing("b", "w", 1.0, "Peer"), Row)


@pytest.mark.parametrize("name", [n for n, _ in run_all.BENCHMARKS])
def test_every_benchmark_exposes_parser_and_run(name):
    """run_all's arguments parse with each script's own parser (its CLI), and it has run(args)."""
    module = pytest.importorskip(name)
    argv = dict(run_all.BENCHMARKS)[name]
    assert callable(module.run) and module.parser().parse_args(argv) is not None
