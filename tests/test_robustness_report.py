"""The report: Markdown + self-contained HTML + JSON from several models' result files (every benchmark present),
checked with html.parser by default and rendered in headless Chromium in the slow tier."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from headless_browser import render
from robustness_helpers import check_html_report, load_tool

from robustness.metrics import ALEXNET_ERR, ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS
from robustness.store import ResultStore


def _fake_results(path: Path, name: str, base_err: float, dense: bool = True) -> Path:
    """A result file with every benchmark, numbers chosen so summaries are easy to check by hand."""
    store = ResultStore(path, model=name)
    cells = {"clean": {"err": base_err, "acc": 1 - base_err}}
    for k, c in enumerate(ALL_CORRUPTIONS):
        for s in range(1, 6):
            err = min(0.99, base_err + 0.05 * s + 0.005 * k)
            cells[f"{c}/{s}"] = {"err": err, "acc": 1 - err}
    store.open_group("imagenet_c", {"seed": 0, "dataset": "imagenet"})  # AlexNet-normalised CE applies
    store.put_many("imagenet_c", cells)
    store.open_group("occlusion", {"grid": "14x14", "fill": "black"})
    store.put_many("occlusion", {f"{mode}/{i / 10:.2f}": {"acc": max(0.0, 0.8 - slope * i / 10),
                                                          "info_loss": (i * 196 // 10) / 196}
                                 for mode, slope in (("random", 0.3), ("salient", 0.8), ("non_salient", 0.5))
                                 for i in range(10)})
    store.open_group("backgrounds", {})
    store.put_many("backgrounds", {v: {"acc": acc - base_err / 10} for v, acc in zip(
        ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next", "no_fg", "only_bg_b", "only_bg_t"),
        (0.96, 0.9, 0.89, 0.81, 0.8, 0.53, 0.22, 0.17))})
    store.open_group("ood", {})
    store.put_many("ood", {"imagenet_a": {"acc": 0.14}, "imagenet_r": {"acc": 0.4}, "imagenet_sketch": {"acc": 0.3}})
    if dense:
        store.open_group("det_c", {})
        store.put_many("det_c", {"clean": {"coco/bbox_mAP": 0.5, "coco/segm_mAP": 0.44}, **{
            f"{c}/{s}": {"coco/bbox_mAP": 0.5 - 0.05 * s, "coco/segm_mAP": 0.44 - 0.04 * s}
            for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)}})
        store.open_group("seg_c", {})
        seg = {f"{c}/{s}": {"mIoU": 50.0 - 5 * s} for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)}
        store.put_many("seg_c", {"clean": {"mIoU": 50.0}, **seg})
    return path


@pytest.fixture()
def report_dir(tmp_path) -> Path:
    a = _fake_results(tmp_path / "ibot.json", "iBOT ViT-S/16", 0.22)
    b = _fake_results(tmp_path / "dino.json", "DINO ViT-S/16", 0.23, dense=False)
    load_tool("robustness_report").main([str(a), str(b), "--out-dir", str(tmp_path / "report"),
                                         "--title", "iBOT vs DINO"])
    return tmp_path / "report"


def test_report_markdown_html_json(report_dir: Path) -> None:
    summary = json.loads((report_dir / "summary.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["iBOT ViT-S/16", "DINO ViT-S/16"]
    ibot = summary["models"][0]
    # mean error over severities of corruption k: base + 0.15 + 0.005 k
    by_hand = sum(100 * (0.22 + 0.15 + 0.005 * k) / ALEXNET_ERR[c] for k, c in enumerate(BENCHMARK_CORRUPTIONS)) / 15
    assert ibot["imagenet_c"]["mce"] == pytest.approx(by_hand)
    assert ibot["backgrounds"]["bg_gap"] == pytest.approx(0.08)
    assert ibot["det_c"]["coco/bbox_mAP"]["rPC"] == pytest.approx(100 * 0.35 / 0.5)
    assert ibot["seg_c"]["mIoU"]["mPC"] == pytest.approx(35.0) and "det_c" not in summary["models"][1]

    md = (report_dir / "report.md").read_text()
    assert md.startswith("# iBOT vs DINO")
    for header in ("| Model | Clean err | mCE | rel. mCE |", "| Model | mode | IL 0.0 |", "| Model | Original |",
                   "| Model | IN-A | IN-R | IN-Sketch |", "| Model | metric | P | mPC | rPC (%) |"):
        assert header in md, header
    row = next(line for line in md.splitlines() if line.startswith("| iBOT ViT-S/16 | 22.0 |"))
    assert f"| {by_hand:.1f} |" in row
    assert "| iBOT ViT-S/16 | coco/bbox_mAP | 0.500 | 0.350 | 70.0 | yes |" in md
    assert len(summary["plots"]) == 5  # IN-C grid, occlusion, backgrounds, detection (bbox + segm), mIoU

    probe = check_html_report(report_dir / "report.html", min_plots=len(summary["plots"]))
    assert len(probe.images) == len(summary["plots"])
    assert probe.tables >= 10
    assert {"Clean err", "mCE", "rel. mCE", "BG-Gap", "IN-A", "P", "mPC", "rPC (%)", "IL 0.5"} <= set(probe.headers)


def test_report_with_in_harness_baseline(tmp_path) -> None:
    a = _fake_results(tmp_path / "model.json", "model", 0.2, dense=False)
    base = _fake_results(tmp_path / "alexnet.json", "AlexNet", 0.4, dense=False)
    summary = load_tool("robustness_report").main([str(a), "--baseline", str(base),
                                                   "--out-dir", str(tmp_path / "r")])
    inc = summary["models"][0]["imagenet_c"]
    by_hand = sum(100 * (0.35 + 0.005 * k) / min(0.99, 0.55 + 0.005 * k)
                  for k, _ in enumerate(BENCHMARK_CORRUPTIONS)) / 15
    assert inc["mce"] == pytest.approx(by_hand, rel=1e-6)
    assert inc["relative_mce"] == pytest.approx(100 * 0.15 / 0.15)  # same degradation as the baseline
    assert "AlexNet (evaluated in this harness)" in (tmp_path / "r" / "report.md").read_text()


def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path) -> None:
    """Open the HTML page in headless Chromium: no errors, every embedded plot decodes, tables have rows, and
    the screenshot is not blank."""
    page = render(report_dir / "report.html", tmp_path)
    page.assert_ok(min_images=5)
    assert page.images == 5 and page.table_rows > 20
