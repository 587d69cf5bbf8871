"""``COURSE_GPU_MEMORY_GIB``: the set-up cell's cap that makes a large GPU behave like a T4."""

from __future__ import annotations

import pytest
import torch

from helpers import notebook


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf"])
def test_a_bad_cap_names_the_variable(value):
    with pytest.raises(SystemExit, match="COURSE_GPU_MEMORY_GIB"):
        notebook.cap_gpu_memory(value)


def test_unset_means_no_cap(monkeypatch):
    monkeypatch.delenv(notebook.GPU_CAP_ENV, raising=False)
    assert notebook.cap_gpu_memory() is None
    assert notebook.cap_gpu_memory("  ") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_without_a_gpu_it_says_the_cap_does_nothing(monkeypatch, capsys):
    monkeypatch.setenv(notebook.GPU_CAP_ENV, "14.7")
    assert notebook.cap_gpu_memory() is None
    assert "no effect" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cap_stops_an_allocation_above_it():
    cap = notebook.cap_gpu_memory("1.0")
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(1.5 * 2**30), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert cap == pytest.approx(1.0)
