"""Chapters 06 (GPTQ and AWQ) and 07 (deploy) on the GPU profiles' path, on a real GPU capped at the card's memory.

Each chapter runs top to bottom through papermill on the shape twin of each profile's model
(``helpers.shapes``: Qwen2.5's shapes, random weights, no hub), with the set-up cell's cap
``COURSE_GPU_MEMORY_GIB`` at the card's memory and the profile's 16-bit dtype. It checks that
the GPU path runs and fits, and prints the chapter's peak GPU memory and time (``pytest -s``;
appended to ``$COURSE_GPU_REPORT`` when set). Its quality numbers mean nothing (random
weights). Skipped, and reported as skipped, without a CUDA GPU.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from helpers.paths import CHAPTERS_DIR
from tools.memory_guard import CARD_GIB

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


# Each chapter's short run: its parameters beyond the profile, the steps and the adapter.
CHAPTERS = {
    "06_gptq_awq": {"EVAL_EXAMPLES": 16},
    "07_deploy": {"EVAL_EXAMPLES": 16, "CPP_PROMPTS": 2},
}


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
@pytest.mark.parametrize("profile_name", ["gpu-4gb", "t4"])
def test_chapter_runs_a_twin_within_the_card(chapter, profile_name, tmp_path, monkeypatch):
    import papermill

    from helpers.shapes import build_twin, profile_model

    twin = build_twin(profile_model(profile_name), tmp_path / "twin")
    results = tmp_path / "results.json"
    monkeypatch.setenv("COURSE_MODEL_DIR", str(twin))
    monkeypatch.setenv("COURSE_GPU_MEMORY_GIB", str(CARD_GIB[profile_name]))
    monkeypatch.setenv("COURSE_RESULTS", str(results))
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))  # the tiny run's outputs stay
    start = time.perf_counter()
    papermill.execute_notebook(
        str(CHAPTERS_DIR / f"{chapter}.ipynb"),
        str(tmp_path / f"{chapter}.ipynb"),
        parameters={
            "PROFILE": profile_name,
            "MAX_STEPS": 10,
            "USE_SAVED_ADAPTER": False,
            **CHAPTERS[chapter],
        },  # fmt: skip
        cwd=str(CHAPTERS_DIR),
        progress_bar=False,
    )
    records = json.loads(results.read_text())[chapter]
    row = {
        "chapter": chapter,
        "profile": profile_name,
        "card_gib": CARD_GIB[profile_name],
        "peak_gib": records["gpu_peak_gib"],
        "seconds": round(time.perf_counter() - start, 1),
        "gpu": torch.cuda.get_device_name(0),
    }
    print(json.dumps(row))
    if os.environ.get("COURSE_GPU_REPORT"):
        with open(os.environ["COURSE_GPU_REPORT"], "a") as f:
            f.write(json.dumps(row) + "\n")
    if chapter == "07_deploy":
        assert records["gguf_q8_0_equal_to_reference"] is True
    else:
        assert records["gptq_layer_rel_error_naive"] < records["rtn_layer_rel_error"]
    assert records["gpu_peak_gib"] < CARD_GIB[profile_name]
