"""Helpers for the robustness tests: the shared real-data folder and a tiny ViT classifier."""
from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from ibot.vit import build_vit

from .classifier import BackboneWithLinearHead, ImageClassifier

__all__ = ["REPO", "check_html_report", "shared_data", "single_thread", "tiny_vit_classifier"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    """Run a test with one intra-op thread: tiny models on a busy 2-core machine are 10-50x slower with two
    (OpenMP threads competing with data-loader workers and other processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def shared_data(*parts: str) -> Path:
    """``<repo>/../shared/data/<parts>``; fails the calling test (never skips) when it is missing."""
    path = REPO.parent / "shared" / "data"
    path = path.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing: these tests need the real images under <repo>/../shared/data "
                    "(CIFAR-10 test, GrabCut, tiny COCO, ADE20K sample, CamVid); see that folder's README")
    return path


def tiny_vit_classifier(num_classes: int = 10, img_size: int = 32, patch_size: int = 4, depth: int = 2,
                        seed: int = 0) -> ImageClassifier:
    """A random ViT-Tiny (depth 2) + linear head, wrapped for the benchmarks."""
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny", depth=depth, patch_size=patch_size, img_size=img_size, pos_interp="size")
    return ImageClassifier(BackboneWithLinearHead(vit, num_classes).eval(), patch_size=patch_size)


class _HTMLProbe(HTMLParser):
    """Collects <img> sources, the number of tables and the table header texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.headers: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        elif tag == "table":
            self.tables += 1
        elif tag == "th":
            self._in_th = True

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)


def check_html_report(path: Path, min_plots: int) -> _HTMLProbe:
    """The page is self-contained: every plot is an embedded base64 PNG, and the field's tables are there."""
    probe = _HTMLProbe()
    text = path.read_text()
    probe.feed(text)
    assert len(probe.images) >= min_plots
    for src in probe.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing external
    return probe
