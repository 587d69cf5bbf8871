"""The workbook: generated from the chapters, in sync, exercise outputs cleared, no solution
in it, and a workbook notebook runs from workbook/ as its chapter does."""

from __future__ import annotations

import shutil

import nbformat
import papermill
import pytest

from helpers.paths import CHAPTERS_DIR
from helpers.report import load_results
from tools.badges import badges
from tools.workbook import (
    WORKBOOK_DIR,
    chapter_paths,
    exercise_cells,
    out_of_date,
    solution_leaks,
    solution_lines,
    sync,
)


def test_the_workbook_is_in_sync_with_the_chapters():
    assert chapter_paths(), "no chapters found"
    assert out_of_date() == [], "run: python -m tools.workbook sync"


def test_out_of_date_sees_a_changed_a_new_and_a_removed_chapter(tmp_path):
    chapters, out = tmp_path / "chapters", tmp_path / "workbook"
    chapters.mkdir()
    for name in ("00_setup.ipynb", "02_lora.ipynb"):
        shutil.copy(CHAPTERS_DIR / name, chapters / name)
    assert len(sync(chapters, out)) == 2 and out_of_date(chapters, out) == []
    nb = nbformat.read(chapters / "02_lora.ipynb", as_version=4)
    nb.cells[5].source += "\n# changed"
    nbformat.write(nb, chapters / "02_lora.ipynb")
    shutil.copy(CHAPTERS_DIR / "01_quantization.ipynb", chapters / "08_new.ipynb")
    (chapters / "00_setup.ipynb").unlink()
    problems = out_of_date(chapters, out)
    assert problems == [
        f"out of date: {out / '02_lora.ipynb'} (run python -m tools.workbook sync)",
        f"missing: {out / '08_new.ipynb'}",
        f"extra: {out / '00_setup.ipynb'} (its chapter is gone)",
    ]
    sync(chapters, out)
    assert out_of_date(chapters, out) == [] and not (out / "00_setup.ipynb").exists()


def test_exercise_outputs_are_cleared_and_everything_else_is_the_chapter():
    cleared = 0
    for chapter in chapter_paths():
        ch = nbformat.read(chapter, as_version=4)
        wb = nbformat.read(WORKBOOK_DIR / chapter.name, as_version=4)
        exercises = set(exercise_cells(ch))
        assert len(ch.cells) == len(wb.cells)
        for i, (a, b) in enumerate(zip(ch.cells, wb.cells, strict=True)):
            if i == 0:
                assert badges(chapter.name, "workbook") in b.source
                assert badges(chapter.name) not in b.source
                continue
            assert a.source == b.source, (chapter.name, i)
            if i in exercises:
                cleared += bool(a.outputs)
                assert b.outputs == [] and b.execution_count is None
            elif a.cell_type == "code":
                assert a.outputs == b.outputs, (chapter.name, i)
    assert cleared >= 10  # the chapters' check cells print "not attempted yet": now blank


def test_no_solution_is_in_the_workbook():
    solutions = solution_lines()
    assert len(solutions) >= 20  # the guard has solution code to look for
    for path in sorted(WORKBOOK_DIR.glob("*.ipynb")):
        assert solution_leaks(nbformat.read(path, as_version=4), solutions) == [], path


def test_the_leak_guard_finds_a_pasted_solution_an_import_and_a_reveal_cell():
    solutions = solution_lines()
    line = "return frozen + scaling * (x @ lora_A.T) @ lora_B.T  # (T, r) then (T, OUT)"
    assert line.split("#")[0].strip() in solutions
    nb = nbformat.read(WORKBOOK_DIR / "02_lora.ipynb", as_version=4)
    stub = exercise_cells(nb)[2]  # the lora_forward stub
    nb.cells[stub].source = nb.cells[stub].source.replace("raise NotImplementedError", line)
    nb.cells.append(nbformat.v4.new_code_cell("from solutions.ch02_lora import merge_weight"))
    nb.cells.append(
        nbformat.v4.new_markdown_cell("<details><summary>Solution</summary>...</details>")
    )
    leaks = solution_leaks(nb, solutions)
    assert any(f"cell {stub}:" in leak and "ch02_lora.py:" in leak for leak in leaks)
    assert any("imports solutions" in leak for leak in leaks)
    assert any("reveal block" in leak for leak in leaks)


@pytest.mark.slow
def test_a_workbook_notebook_runs_from_the_workbook_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))
    monkeypatch.setenv("COURSE_TORCH_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    papermill.execute_notebook(
        str(WORKBOOK_DIR / "00_setup.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"PROFILE": "tiny"},
        kernel_name="python3",
        cwd=str(WORKBOOK_DIR),
        progress_bar=False,
    )
    assert "00_setup" in load_results(tmp_path / "results.json")  # it read data/ and recorded
