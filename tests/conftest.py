"""Shared test configuration: the real-data folder, one intra-op thread, and GPU tests that fail loudly (never
skip) when CUDA is missing."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: The small real data sets next to the checkout (``../shared/data``, see its README).
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_path(*parts: str) -> Path:
    """``<repo>/../shared/data/<parts>``; fails the calling test (never skips) when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing: these tests need the real images under <repo>/../shared/data "
                    "(CIFAR-10 test, GrabCut, tiny COCO, ADE20K sample, CamVid); see that folder's README",
                    pytrace=False)
    return path


@pytest.fixture
def shared_data() -> Callable[..., Path]:
    """``shared_data('cifar10', 'test')`` -> the path under ``../shared/data``; fails when it is missing."""
    return shared_data_path


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    """Run the whole session with one intra-op thread: tiny models on a busy 2-core machine are 10-50x slower with
    two (OpenMP threads spin-waiting against data-loader workers and other processes); results were checked to hold
    for 1-8 threads. Session-scoped, so module-scoped fixtures (runs that are resumed later) see the same count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.fail("this test needs a CUDA device and none is visible (run `bash tools/test.sh -m gpu` "
                    "on a GPU machine)", pytrace=False)
