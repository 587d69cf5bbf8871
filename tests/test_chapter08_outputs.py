"""Chapter 08's stored outputs agree with its prose: the process counts of `accelerate launch`,
and bytes called counted, not measured, where no GPU ran the chapter."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "08_two_gpus.ipynb"
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def _cells():
    return nbformat.read(CHAPTER, as_version=4).cells


def _output(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_the_launch_counts_printed_are_the_ones_the_prose_states():
    cells = _cells()
    prose = next(
        c.source for c in cells if c.cell_type == "markdown" and "From a script" in c.source
    )
    prose = " ".join(prose.split())  # the sentences span lines
    said_cpu = re.search(r"--cpu --num_processes (\d) script\.py` .*? starts \*\*(\w+)\*\*", prose)
    said_multi = re.search(r"With `--multi_gpu --num_processes (\d)` it starts (\w+)", prose)
    assert said_cpu and said_multi, prose
    code = next(
        c for c in cells if c.cell_type == "code" and "accelerate launch {flag}" in c.source
    )
    printed = dict(
        re.findall(r"accelerate launch (--\w+) --num_processes \d+: (\d+) process", _output(code))
    )
    assert printed == {
        "--cpu": str(WORDS[said_cpu.group(2)]),
        "--multi_gpu": str(WORDS[said_multi.group(2)]),
    }, _output(code)
    assert printed["--multi_gpu"] == said_multi.group(1) == "2"  # all the processes asked for
    ranks = re.findall(r"rank (\d) of world size (\d)", _output(code))
    assert ranks == [("0", "1"), ("0", "2"), ("1", "2")]


def test_bytes_are_called_counted_unless_an_allocator_measured_them():
    cells = _cells()
    table = next(c for c in cells if c.cell_type == "code" and "'category'" in c.source)
    out = _output(table)
    assert re.search(r"stage\s+category\s+planned\s+counted", out), out
    measured = "CUDA allocator after the step" in out
    prose = " ".join(c.source for c in cells if c.cell_type == "markdown")
    if not measured:  # a CPU run: the stored outputs measure no memory, and the prose says so
        assert "measured by the allocator: no" in out
        assert "planned and counted" in prose and "has not run this chapter on two GPUs" in prose
        assert not re.search(r"planned and measured|bytes[^.]*\bmeasured\b against", prose)
