"""Plain helpers of the robustness tests (fixtures live in conftest.py): a tiny ViT classifier, a check of the
self-contained HTML report, and the tools / data paths."""
from __future__ import annotations

import base64
import importlib.util
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import torch
from conftest import REPO, shared_data_path

from ibot.features import FeatureSpec
from ibot.vit import build_vit
from robustness.classifier import BackboneWithLinearHead, ImageClassifier

__all__ = ["REPO", "check_html_report", "load_tool", "shared_data_path", "tiny_vit_classifier"]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_vit_classifier(num_classes: int = 10, img_size: int = 32, patch_size: int = 4, depth: int = 2,
                        seed: int = 0) -> ImageClassifier:
    """A random ViT-Tiny (depth 2) + linear head on the last [CLS] token, wrapped for the benchmarks."""
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny", depth=depth, patch_size=patch_size, img_size=img_size, pos_interp="size")
    model = BackboneWithLinearHead(vit, num_classes, FeatureSpec(1, "cls")).eval()
    return ImageClassifier(model, patch_size=patch_size)


class _HTMLProbe(HTMLParser):
    """Collects <img> sources, the number of tables and the table header texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.headers: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        elif tag == "table":
            self.tables += 1
        elif tag == "th":
            self._in_th = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
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
