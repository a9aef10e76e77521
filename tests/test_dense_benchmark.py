"""benchmarks/dense_throughput.py runs end to end (CPU, tiny widths: checks the script, not speed)."""
from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from ibot.records import read_record

ROOT = REPO


def test_benchmark_script_smoke(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("dense_throughput", ROOT / "benchmarks/dense_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "RESULTS.md"
    rows = bench.main(["--device", "cpu", "--smoke", "--dtype", "fp32", "--results", str(results),
                       "--json", str(tmp_path / "rows.json")])
    assert [r["model"] for r in rows] == list(bench.MODELS)
    assert all(r["ms_per_iter"] > 0 and r["img_per_s"] > 0 for r in rows)
    assert read_record(tmp_path / "rows.json", schema="ibot-suite/dense-throughput/1")["rows"] == rows
    text = results.read_text()
    assert "| upernet-ibot-b16 | fp32 | 2 x 64² |" in text and "x |" in text  # ratio to the stock model
    with pytest.raises(SystemExit, match="AMP needs a GPU"):
        bench.main(["--device", "cpu", "--smoke", "--dtype", "bf16"])
