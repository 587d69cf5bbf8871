"""`make course`'s table names the profile `auto` chose, and a failed chapter's cause is shown."""

from __future__ import annotations

import nbformat
import papermill
import pytest
import torch

from tools.course import KERNEL, failure_cause, profile_label


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks tiny only without a GPU")
def test_the_table_shows_the_profile_auto_chose():
    assert profile_label("auto") == "tiny (auto)"
    assert profile_label("t4") == "t4"


def test_a_failed_chapter_prints_the_exception_inside_the_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell(
            'print("PROBLEM: Unknown profile \'TINY\'")\nassert False, "the doctor found a problem"'
        ),
    ]
    src, out = tmp_path / "chapter.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(src), str(out), kernel_name=KERNEL, progress_bar=False)
    cause = failure_cause(err.value, out)
    assert "PROBLEM: Unknown profile 'TINY'" in cause
    assert "AssertionError: the doctor found a problem" in cause and "cell 2" in cause
    assert failure_cause(ValueError("bad"), out) == "ValueError: bad"
