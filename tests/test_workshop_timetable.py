"""The timetable prints measured times only: a platform or chapter without a measurement says
"not measured", and chapters come from the folder as it is (a new chapter shows up)."""

from __future__ import annotations

import json

import pytest

from tools.workshop.__main__ import main
from tools.workshop.timetable import chapter_stems, load_timings, measure, timetable


def write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def chapters(tmp_path):
    folder = tmp_path / "chapters"
    folder.mkdir()
    for stem in ("00_setup", "01_quantization", "09_your_data"):
        (folder / f"{stem}.ipynb").write_text("{}")
    (folder / "notes.ipynb").write_text("{}")  # not a numbered chapter
    return folder


def test_measured_cells_totals_and_not_measured(tmp_path, chapters):
    stems = chapter_stems(chapters)
    assert stems == ["00_setup", "01_quantization", "09_your_data"]
    cpu = write(
        tmp_path / "cpu-tiny.json",
        {
            "_platform": {"cores": 2, "load_at_start": 0.1},
            "00_setup": {"wall_s": 11.2, "status": "ok", "exact_match": 0.0},
            "01_quantization": {"wall_s": 10.4, "status": "ok"},
            "09_your_data": {"wall_s": 95.0, "status": "ok"},
        },
    )
    t4 = write(tmp_path / "colab-t4.json", {"00_setup": {"wall_s": 30.0}, "01_quantization": {}})
    bad = write(
        tmp_path / "laptop.json",
        {"_platform": {"gpu": "none"}, "00_setup": {"wall_s": 20, "status": "failed: OSError"}},
    )
    table = timetable(stems, load_timings([cpu, t4, bad])).splitlines()
    assert (
        table[0]
        == "| chapter | cpu-tiny | colab-t4 | kaggle-t4x2 | kaggle-p100 | gpu-4gb | laptop |"
    )
    assert table[2] == (
        "| 00_setup | 11 s | 30 s | not measured | not measured | not measured | 20 s (failed: OSError) |"
    )
    assert table[3].startswith("| 01_quantization | 10 s | not measured |")
    assert table[4].startswith("| 09_your_data | 1 min 35 s | not measured |")
    # cpu-tiny measured every chapter: a sum; the others did not: no total is made up.
    assert table[5] == (
        "| total | 1 min 57 s | not measured | not measured | not measured | not measured | not measured |"
    )
    assert any(line.startswith("cpu-tiny: ") and "cores 2" in line for line in table)


def test_a_timing_file_with_a_wrong_wall_time_is_named(tmp_path):
    bad = write(tmp_path / "x.json", {"02_lora": {"wall_s": "fast"}})
    with pytest.raises(ValueError, match=r"x.json: 02_lora.wall_s='fast'"):
        load_timings([bad])
    (tmp_path / "y.json").write_text("{oops")
    with pytest.raises(ValueError, match="y.json: not a readable timing file"):
        load_timings([tmp_path / "y.json"])


def test_the_command_lists_every_chapter_on_disk(tmp_path, capsys):
    from tools.workshop.timetable import chapter_stems as real

    assert main(["timetable", str(write(tmp_path / "none.json", {}))]) == 0
    out = capsys.readouterr().out
    for stem in real():
        assert f"| {stem} | not measured |" in out


def test_measure_records_each_chapter_as_it_goes(tmp_path, monkeypatch, chapters):
    import tools.course

    def fake_execute(path, out, parameters):
        if path.stem == "01_quantization":
            raise RuntimeError("cell 3 raised")

    monkeypatch.setattr(tools.course, "chapters", lambda names: sorted(chapters.glob("0*.ipynb")))
    monkeypatch.setattr(tools.course, "execute", fake_execute)
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    out = measure("laptop", "tiny", None, tmp_path / "laptop.json")
    data = json.loads(out.read_text())
    assert data["_platform"]["profile"] == "tiny" and data["_platform"]["cores"] >= 1
    assert data["00_setup"]["status"] == "ok" and data["00_setup"]["wall_s"] >= 0
    assert data["01_quantization"]["status"] == "failed: RuntimeError"
    assert "laptop" in load_timings([out])
