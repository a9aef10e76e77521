"""A shortened main job (tools/demo.py --quick) runs end to end — default data, iBOT pretraining, the whole suite
(k-NN, linear, robustness, detection, segmentation) on the pretrained and the random-init backbone — and writes a
report that renders in headless Chromium with its plots."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from headless_browser import render

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("knn", "linear", "robustness", "det", "seg")


@pytest.mark.slow  # ~4 min on 2 cores (8 mmdet / mmseg processes): over the default tier's 10-minute budget
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, IBOT_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")  # a new machine's data
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--quick", "--work-dir", str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report at" in proc.stdout
    assert (work / "pretrain" / "teacher_backbone.pth").is_file() and (tmp_path / "cache" / "scenes").is_dir()

    md = (work / "report.md").read_text()
    for name in ("iBOT_demo", "random_init"):
        suite = json.loads((work / "suite" / name / "results.json").read_text())
        for h in HARNESSES:
            entry = suite["harnesses"][h]
            assert entry["status"] == "ok", (name, h, entry)
            assert f"{entry['value']:.1f}" in md, (name, h)
        det = json.loads(Path(suite["harnesses"]["det"]["result"]).read_text())
        assert {"coco/bbox_mAP", "coco/segm_mAP"} <= set(det)  # COCO box + mask metrics of the real evaluator
        seg = json.loads(Path(suite["harnesses"]["seg"]["result"]).read_text())
        assert {"mIoU", "aAcc"} <= set(seg)
    page = (work / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "random init" in page  # loss curve + headline chart
    # one report: the suite's page (its table, sub-report links) with the pretraining section added
    assert "<h2>Evaluation suite</h2>" in page and 'href="leaderboard.html"' in page
    assert 'href="suite/iBOT_demo/robustness/report/report.html"' in page
    assert not (work / "suite" / "report").exists()

    # The report opens in headless Chromium without errors, its plots decode, the screenshot is not blank.
    shots = tmp_path / "shots"
    shots.mkdir()
    rendered = render(work / "report.html", shots)
    rendered.assert_ok(min_images=2)
    assert rendered.table_rows == 1 + len(HARNESSES)

    # A second run reuses everything (no retraining, no re-evaluation) and rewrites the report.
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--quick", "--work-dir", str(work)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("done before, skipped") == 2 * len(HARNESSES), again.stdout[-3000:]
    for name in ("iBOT_demo", "random_init"):
        log = (work / "suite" / name / "det" / "log.txt").read_text()
        assert log.count("-m det.cli train") == 1, "detection was trained again on resume"
