"""Each core idea has its figure in its chapter, drawn from the chapter's own tensors by
``helpers.figures`` (tests/test_figures.py checks each function draws its input), and the
chapter's stored outputs hold the image a reader of the website sees."""

from __future__ import annotations

import nbformat
import pytest

from helpers.paths import REPO_ROOT

FIGURES = {
    "nf4_block": "01_quantization",
    "lora_shapes": "02_lora",
    "gptq_sweep": "06_gptq_awq",
    "gguf_superblock": "07_deploy",
    "ddp_allreduce": "08_two_gpus",
    "fsdp_shards": "08_two_gpus",
    "packed_mask": "09_your_data",
}


def figure_cells(chapter: str, function: str) -> list:
    nb = nbformat.read(REPO_ROOT / "chapters" / f"{chapter}.ipynb", as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and f"figures.{function}(" in c.source]


@pytest.mark.parametrize("function", sorted(FIGURES))
def test_the_chapter_draws_the_figure_and_stores_the_image(function):
    cells = figure_cells(FIGURES[function], function)
    assert cells, f"chapters/{FIGURES[function]}.ipynb has no cell calling figures.{function}"
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, (
        f"chapters/{FIGURES[function]}.ipynb calls figures.{function} but its stored output has "
        "no image: re-run the chapter (python -m tools.course refresh)"
    )
