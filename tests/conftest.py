"""Shared test configuration: GPU tests fail loudly (never skip) when CUDA is missing."""
from __future__ import annotations

import pytest
import torch


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.fail("this test needs a CUDA device and none is visible (run `bash tools/test.sh -m gpu` "
                    "on a GPU machine)", pytrace=False)
