"""Bad input to the book tooling: the notebook executor and the scoreboard page.

The executor names a notebook it cannot read (malformed JSON, outside the repository, not a
notebook file) or that fails, goes on with the others, and exits with 1 at the end, listing
the failures. The scoreboard escapes what would break its Markdown table: a ``|`` or a line
break in a claim, a method name or a paper number.
"""
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from kit import paths
from kit.book import execute, pages, provenance

ROOT = paths.root()


def make_root(tmp_path: Path) -> Path:
    """A miniature repository with one fresh (executed, unchanged) notebook, P01."""
    (tmp_path / "kit").mkdir(parents=True)
    shutil.copy(ROOT / "kit" / "papers.tsv", tmp_path / "kit" / "papers.tsv")
    folder = tmp_path / "notebooks" / "dense-detection"
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# P01 TOOD"), nbformat.v4.new_code_cell("print(1)")]
    nb.metadata["kit"] = {"profile": "cpu", "device": "CPU", "torch": "2", "executed_at": "today",
                          "wall_seconds": 3.0, "code_sha256": provenance.code_hash(nb), "modules": {}}
    nbformat.write(nb, folder / "p01_tood.ipynb")
    return tmp_path


def fresh(root):
    return root / "notebooks" / "dense-detection" / "p01_tood.ipynb"


def malformed(root):
    path = root / "notebooks" / "dense-detection" / "p02_broken.ipynb"
    path.write_text('{"cells": [')  # a kill during a hand edit, a bad merge
    return path


def outside(root):
    path = root.parent / "elsewhere.ipynb"
    shutil.copy(fresh(root), path)
    return path


def missing(root):
    return root / "notebooks" / "dense-detection" / "p99_missing.ipynb"


BAD = [
    # id, the bad path (built in the root), phrase naming what is wrong (printed to stderr)
    ("malformed-json", malformed, r"p02_broken\.ipynb: it is not a readable notebook \(NotJSONError"),
    ("outside-the-repository", outside, r"elsewhere\.ipynb: it is outside the repository"),
    ("missing-file", missing, r"p99_missing\.ipynb: it is not an existing \.ipynb file"),
]


@pytest.mark.parametrize("case, bad, phrase", BAD, ids=[row[0] for row in BAD])
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_a_bad_notebook_is_named_and_the_others_go_on(case, bad, phrase, check, tmp_path, monkeypatch, capsys):
    root = make_root(tmp_path / "repo")
    monkeypatch.setenv("KIT_ROOT", str(root))
    monkeypatch.setattr(execute, "execute", lambda *a: pytest.fail("a fresh notebook was executed"))
    argv = [str(bad(root)), str(fresh(root)), "--profile", "cpu"] + (["--check"] if check else [])
    assert execute.main(argv) == 1
    out, err = capsys.readouterr()
    assert "notebooks/dense-detection/p01_tood.ipynb: fresh at cpu" in out  # the good one after the bad one
    assert len(re.findall(phrase, err)) == 2  # named when met, and in the final list
    assert "1 notebook(s) failed" in err


def test_a_failing_notebook_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    root = make_root(tmp_path / "repo")
    monkeypatch.setenv("KIT_ROOT", str(root))
    second = root / "notebooks" / "dense-detection" / "p13_cross_dataset_det.ipynb"
    shutil.copy(fresh(root), second)
    ran = []

    def fake_execute(path, profile):
        ran.append(path.name)
        if path.name == "p01_tood.ipynb":
            raise RuntimeError("cell 3 raised ZeroDivisionError")
        return {"wall_seconds": 1.0, "device": "CPU"}

    monkeypatch.setattr(execute, "execute", fake_execute)
    assert execute.main(["--all", "--profile", "cpu"]) == 1
    err = capsys.readouterr().err
    assert ran == ["p01_tood.ipynb", "p13_cross_dataset_det.ipynb"]
    assert "p01_tood.ipynb: cell 3 raised ZeroDivisionError" in err.split("1 notebook(s) failed:")[1]


def test_good_notebooks_still_exit_zero(tmp_path, monkeypatch):
    root = make_root(tmp_path / "repo")
    monkeypatch.setenv("KIT_ROOT", str(root))
    assert execute.main(["--profile", "cpu"]) == 0 and execute.main(["--check", "--profile", "cpu"]) == 0
    monkeypatch.chdir(root)
    assert execute.main(["notebooks/dense-detection/p01_tood.ipynb", "--profile", "cpu"]) == 0  # relative path


def test_the_scoreboard_escapes_bars_and_line_breaks(tmp_path):
    record = {"paper": "P01", "profile": "cpu", "device": "CPU (x86_64, 2 threads)", "seeds": [0],
              "claim": "TOOD | ATSS:\nTOOD wins", "paper_numbers": {"AP | APs": "42.4 | 25.0\r\n(R-50)"},
              "metrics": {"TOOD|T-Head": {"AP": {"values": [0.3], "mean": 0.3, "std": 0.0}}},
              "headline": "AP", "verdict": "reproduced", "wall_seconds": 100}
    board = pages.scoreboard_page([record], pages.read_papers(), tmp_path)
    row = next(line for line in board.splitlines() if line.startswith("| **P01**"))
    assert board.splitlines()[-1] == row  # one line: nothing of the row spilled onto the next
    assert r"TOOD \| ATSS:<br>TOOD wins" in row and r"AP \| APs: 42.4 \| 25.0<br>(R-50)" in row
    assert r"TOOD\|T-Head: 30.0 AP" in row
    unescaped = row.replace("\\|", "")
    assert unescaped.count("|") == 7  # six cells: the table's own bars only
