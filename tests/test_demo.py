"""A shortened main job (tools/demo.py --quick) runs end to end and writes its report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, IBOT_CACHE_DIR=str(tmp_path / "cache"))  # fresh default data, as on a new machine
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--quick", "--work-dir", str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report at" in proc.stdout
    page = (work / "report.html").read_text()
    assert "data:image/png;base64," in page and "random initialisation" in page
    md = (work / "report.md").read_text()
    for name in ("knn_ibot", "knn_random"):
        result = json.loads((work / name / "result.json").read_text())
        assert result["protocol"] == "knn" and f"{result['metric']['value']:.1f}" in md
    assert (work / "pretrain" / "teacher_backbone.pth").is_file()
    assert "suite/report/report.html" in page and (work / "suite" / "report" / "report.html").is_file()
    for name in ("iBOT_demo", "random_init"):
        suite = json.loads((work / "suite" / name / "results.json").read_text())
        assert {"knn", "linear", "robustness"} <= set(json.dumps(suite).split('"')), name
    assert (tmp_path / "cache" / "scenes").is_dir()
    # A second run reuses everything (no retraining, no re-evaluation) and rewrites the report.
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--quick", "--work-dir", str(work)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stdout
