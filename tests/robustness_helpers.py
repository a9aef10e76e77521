"""Plain helpers of the robustness tests (fixtures live in conftest.py): a tiny ViT classifier, tiny model files and
image folders for command-line runs, a check of the self-contained HTML report, and the tools / data paths."""
from __future__ import annotations

import base64
import importlib.util
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from conftest import REPO, shared_data_path
from PIL import Image

from ibot.checkpoint import describe_backbone, save_backbone, save_file
from ibot.features import FeatureSpec
from ibot.vit import build_vit
from robustness.classifier import BackboneWithLinearHead, ImageClassifier

__all__ = ["REPO", "check_html_report", "foreground_folder", "load_tool", "png_folder", "shared_data_path",
           "tiny_model_files", "tiny_vit_classifier"]


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


def tiny_model_files(folder: Path, seed: int = 0, num_classes: int = 10) -> tuple[Path, Path]:
    """``(backbone.pth, head.pth)`` in ``folder``: a self-describing ViT-Tiny (depth 2, patch 4, 32 px) and a linear
    head with a 'feature' entry, so ``--backbone B --head H`` needs no shape flag. Another ``seed`` gives files of
    the same size with other weights."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny", depth=2, patch_size=4, img_size=32)
    backbone, head = folder / "backbone.pth", folder / "head.pth"
    save_backbone(backbone, vit.state_dict(), describe_backbone(vit))
    save_file({"weight": torch.randn(num_classes, 192), "bias": torch.randn(num_classes),
               "feature": FeatureSpec(1, "cls").to_dict()}, head)
    return backbone, head


def png_folder(root: Path, classes: tuple[str, ...] = ("ant", "bee"), per_class: int = 2, size: int = 32,
               seed: int = 0) -> Path:
    """An ImageFolder ``root/<class>/<i>.png`` of random RGB images."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def foreground_folder(root: Path, layout: str = "folders", classes: tuple[str, ...] = ("ant", "bee"),
                      per_class: int = 3, size: int = 32,
                      boxes: dict[str, tuple[int, int, int, int]] | None = None, seed: int = 0) -> tuple[Path, Path]:
    """``(images, masks)`` folders of random RGB images with a square foreground each (mask 255 inside, 0 outside).

    ``layout``: ``'folders'`` (``images/<class>/<i>.png``, ``masks/<class>/<i>.png``) or ``'prefix'``
    (``images/<class>_<i>.png``, ``masks/<class>_<i>.png``). The foreground is the centre half of the image unless
    ``boxes`` gives ``(y0, y1, x0, x1)`` for an image's stem (``'<class>_<i>'`` in both layouts).
    """
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    for name in classes:
        for i in range(per_class):
            stem = f"{name}_{i}"
            rel = Path(name) / f"{i}.png" if layout == "folders" else Path(f"{stem}.png")
            for folder in (images, masks):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            y0, y1, x0, x1 = (boxes or {}).get(stem, (size // 4, 3 * size // 4, size // 4, 3 * size // 4))
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y1, x0:x1] = 255
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(images / rel)
            Image.fromarray(mask).save(masks / rel)
    return images, masks


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
