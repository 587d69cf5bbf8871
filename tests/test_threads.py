"""`import helpers` sets torch's CPU threads once for every chapter, overridable."""

from __future__ import annotations

import pytest
import torch

from helpers import default_cpu_threads, set_cpu_threads


def test_default_env_override_and_omp_respected():
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads({}) == torch.get_num_threads() >= 1
        assert set_cpu_threads({"COURSE_TORCH_THREADS": "2"}) == 2
        assert torch.get_num_threads() == 2
        assert set_cpu_threads({"OMP_NUM_THREADS": "2"}) is None  # left to torch
        assert set_cpu_threads({"OMP_NUM_THREADS": "2", "COURSE_TORCH_THREADS": "1"}) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="COURSE_TORCH_THREADS"):
        set_cpu_threads({"COURSE_TORCH_THREADS": bad})


def test_default_follows_the_idle_cores():
    assert default_cpu_threads(cores=2, load=0.1) == 2  # quiet: both cores
    assert default_cpu_threads(cores=2, load=1.2) == 1  # one other busy process
    assert default_cpu_threads(cores=2, load=20.0) == 1  # never below one
    assert default_cpu_threads(cores=8, load=3.0) == 5
