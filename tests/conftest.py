"""Shared test configuration: GPU tests fail loudly (never skip) when CUDA is missing."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.usefixtures("_require_cuda"))


@pytest.fixture()
def _require_cuda() -> None:
    pytest.fail("this test needs a CUDA device and none is visible (run it on a GPU machine)")
