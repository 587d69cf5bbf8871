"""Shared fixtures. Every test runs offline: no test may reach a model hub."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _results_elsewhere(tmp_path, monkeypatch):
    """Tests record into a temporary results file, never into build/results.json."""
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, visibly, on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_profile():
    from helpers.profiles import get_profile

    return get_profile("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_profile):
    from helpers.models import load_tokenizer

    return load_tokenizer(tiny_profile)
