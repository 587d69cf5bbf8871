"""The README's time promises are the measured files in data/timings/: each chapter's figure in
"Measured run times" is its file's wall time, and the introduction's range is the quiet run's."""

from __future__ import annotations

import json
import re

import pytest

from helpers.paths import DATA_DIR, PACKAGE_DIR

README = PACKAGE_DIR.parent / "README.md"
TIMINGS = DATA_DIR / "timings"


def shown(seconds: float) -> str:
    """A wall time as the README writes it: "48 s", "6 min 32 s"."""
    whole = round(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def run_time_table(readme: str) -> str | None:
    """The first table of README's "Measured run times" section."""
    section = re.search(r"^## Measured run times$(.*?)(?=^#{1,3} )", readme, flags=re.M | re.S)
    table = section and re.search(r"^\|.*?(?=\n[^|]|\Z)", section.group(1), flags=re.M | re.S)
    return table.group(0) if table else None


def table_problems(readme: str) -> tuple[list[str], int]:
    """Figures of the run-time table that differ from their timing file (a chapter the file lacks
    must read "not measured"); and how many matched."""
    table = run_time_table(readme)
    if table is None:
        return ["README.md has no '## Measured run times' section with a table"], 0
    rows = table.splitlines()
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    columns = {}
    for i, cell in enumerate(header):
        label = re.search(r"`([\w.-]+)`", cell)
        if label and (TIMINGS / f"{label[1]}.json").is_file():
            columns[i] = json.loads((TIMINGS / f"{label[1]}.json").read_text())
    problems, matched = [] if columns else ["no column names a file of data/timings/"], 0
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        number = cells[0][:2]
        for i, data in columns.items():
            stem = next((k for k in data if k.startswith(number + "_")), None)
            if stem is None and cells[i] != "not measured":
                problems.append(f"chapter {number}, {header[i]}: README {cells[i]}, file has none")
            elif stem is None:
                matched += 1
            elif cells[i] != shown(data[stem]["wall_s"]):
                problems.append(
                    f"chapter {number}, {header[i]}: README {cells[i]}, file {data[stem]}"
                )
            else:
                matched += 1
    return problems, matched


def test_the_run_time_table_is_the_measured_files():
    problems, matched = table_problems(README.read_text())
    assert problems == [] and matched >= 9


def test_the_introductions_range_is_the_quiet_run():
    data = json.loads((TIMINGS / "cpu-tiny.json").read_text())
    times = [v["wall_s"] for k, v in data.items() if not k.startswith("_")]
    low, high = round(min(times)), round(max(times))
    intro = README.read_text().split("## ")[0]
    assert f"{low} to {high} s a chapter on a\nquiet 2-core machine" in intro


def test_a_figure_typed_by_hand_is_caught():
    readme = README.read_text()
    row = next(line for line in run_time_table(readme).splitlines() if line.startswith("| 03 "))
    first = re.search(r"\| (\d+ s|\d+ min \d+ s) \|", row).group(1)
    wrong = readme.replace(row, row.replace(f"| {first} |", "| 1 s |", 1))
    problems, _ = table_problems(wrong)
    assert len(problems) == 1 and "chapter 03" in problems[0]


@pytest.mark.parametrize("seconds, text", [(9.0, "9 s"), (48.4, "48 s"), (391.9, "6 min 32 s")])
def test_times_are_written_one_way(seconds, text):
    assert shown(seconds) == text
