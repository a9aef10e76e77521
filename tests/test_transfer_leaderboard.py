"""transfer.leaderboard on crafted result JSONs: missing cells, several seeds (mean ± std), duplicates, best per
column, reference rows, and the four output formats."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from transfer.leaderboard import build_table, main, to_csv, to_html, to_latex, to_markdown
from transfer.results import SCHEMA, ResultFormatError, find_result_files, load_result, write_result

A, B = "iBOT vit_small <ours>", "DINO_b&w"


def rec(model: str, dataset: str, protocol: str, seed: int, value: float, params: int = 21_700_000,
        pretrain: str = "IN-1k", finished: str = "2026-01-01T00:00:00+00:00", metric: str = "top1") -> dict:
    return {"schema": SCHEMA, "protocol": protocol, "seed": seed, "finished": finished,
            "model": {"name": model, "params": params, "pretrain_data": pretrain},
            "dataset": {"name": dataset}, "metric": {"name": metric, "value": value}}


@pytest.fixture()
def records() -> list[dict]:
    return [
        rec(A, "cifar10", "finetune", 0, 99.0), rec(A, "cifar10", "finetune", 1, 99.2),
        rec(A, "cifar10", "finetune", 2, 99.4),
        rec(A, "cars", "finetune", 0, 90.0),
        rec(A, "cifar10", "knn", 0, 80.0, metric="top1@k=20"),
        # duplicate of seed 0 on cars: the later one (91.0) must win
        rec(A, "cars", "finetune", 0, 91.0, finished="2026-02-01T00:00:00+00:00"),
        rec(B, "cifar10", "finetune", 0, 99.5, params=85_800_000, pretrain="IN-22k"),
        rec(B, "cifar10", "knn", 0, 85.0, params=85_800_000, pretrain="IN-22k", metric="top1@k=20"),
        # B has no cars result -> missing cell, no mean
    ]


def test_table_structure(records: list[dict]) -> None:
    t = build_table(records)
    assert t.columns == [("cifar10", "knn"), ("cifar10", "finetune"), ("cars", "finetune")]
    rows = {r.name: r for r in t.rows}
    a = rows[A].cells[("cifar10", "finetune")]
    assert a.values == [99.0, 99.2, 99.4] and a.mean == pytest.approx(99.2)
    assert a.std == pytest.approx(statistics.stdev([99.0, 99.2, 99.4]))  # sample std
    assert rows[A].cells[("cars", "finetune")].values == [91.0]
    assert rows[A].cells[("cars", "finetune")].std is None
    assert ("cars", "finetune") not in rows[B].cells
    assert rows[A].mean(t.columns) == pytest.approx((80.0 + 99.2 + 91.0) / 3)
    assert rows[B].mean(t.columns) is None
    best = t.best()
    assert best[("cifar10", "finetune")] == 99.5 and best[("cifar10", "knn")] == 85.0
    assert best[("cars", "finetune")] == 91.0 and best["mean"] == pytest.approx(90.0666, abs=1e-3)


def test_markdown(records: list[dict]) -> None:
    md = to_markdown(build_table(records))
    lines = md.splitlines()
    assert lines[0] == "| Model | Params | Pretrain data | CIFAR-10 k-NN | CIFAR-10 fine-tune | Cars fine-tune | Mean |"
    row_a = next(line for line in lines if line.startswith(f"| {A}"))
    row_b = next(line for line in lines if line.startswith(f"| {B}"))
    assert row_a == f"| {A} | 21.7M | IN-1k | 80.0 | 99.2 ± 0.2 (3) | **91.0** | **90.1** |"
    assert row_b == f"| {B} | 85.8M | IN-22k | **85.0** | **99.5** | – | – |"
    assert "CIFAR-10 k-NN: top1@k=20" in md


def test_csv(records: list[dict]) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(build_table(records)))))
    a = next(r for r in rows if r["model"] == A)
    b = next(r for r in rows if r["model"] == B)
    assert float(a["cifar10/finetune"]) == pytest.approx(99.2)
    assert float(a["cifar10/finetune_std"]) == pytest.approx(0.2)
    assert a["cifar10/finetune_seeds"] == "3" and a["cifar10/finetune_best"] == "0"
    assert b["cifar10/finetune_best"] == "1" and b["cars/finetune"] == "" and b["cars/finetune_seeds"] == "0"
    assert a["mean_best"] == "1" and b["mean"] == "" and a["params"] == "21700000"


def test_html_escapes_and_marks_best(records: list[dict]) -> None:
    page = to_html(build_table(records))
    assert "iBOT vit_small &lt;ours&gt;" in page and "DINO_b&amp;w" in page and "<ours>" not in page
    assert '<th colspan="2">CIFAR-10</th>' in page and "<th>Cars</th>" in page  # ibot.report.Page's group row
    assert "<td><b>99.5</b></td>" in page and "<td>99.2 ± 0.2 (3)</td>" in page and "<td>–</td>" in page


def test_latex(records: list[dict]) -> None:
    tex = to_latex(build_table(records))
    assert tex.startswith(r"\begin{tabular}{lrlrrrr}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"\multicolumn{2}{c}{CIFAR-10}" in tex and r"\cmidrule(lr){4-5} \cmidrule(lr){6-6}" in tex
    assert r"iBOT vit\_small \textless{}ours\textgreater{}" in tex and r"DINO\_b\&w" in tex
    assert r"99.2 $\pm$ 0.2 (3)" in tex and r"\textbf{99.5}" in tex and r"\textbf{91.0}" in tex
    body = [line for line in tex.splitlines() if line.startswith("DINO")][0]
    assert body.endswith(r"-- & -- \\")  # missing cell and mean


def test_paper_rows_are_cited_and_limited_to_measured_columns(records: list[dict]) -> None:
    t = build_table(records, references=True)
    paper = [r for r in t.rows if r.reference]
    assert [r.name for r in paper] == ["iBOT ViT-S/16 (paper)", "iBOT ViT-B/16 (paper)"]
    assert paper[0].cells[("cifar10", "finetune")].mean == 99.1 and paper[1].cells[("cars", "finetune")].mean == 94.3
    assert all(c in t.columns for r in paper for c in r.cells)  # ImageNet k-NN/linear are not columns here
    md = to_markdown(t)
    assert "| iBOT ViT-B/16 (paper)† | 85.0M | IN-1k | – | 99.2 | **94.3** | – |" in md
    assert "† Zhou et al., \"iBOT: Image BERT Pre-Training with Online Tokenizer\", ICLR 2022" in md
    # with no results at all, the paper's own columns are shown
    only_paper = build_table([], references=True)
    assert ("imagenet", "linear") in only_paper.columns and len(only_paper.columns) == 8


def test_tool_reads_folders_and_writes_four_formats(tmp_path: Path, records: list[dict]) -> None:
    for i, r in enumerate(records):
        write_result(tmp_path / "runs" / f"run{i}" / "result.json", r)
    (tmp_path / "runs" / "other.json").write_text(json.dumps({"not": "a result"}))  # ignored in folders
    out = main([str(tmp_path / "runs"), "--out", str(tmp_path / "board"), "--paper"])
    assert sorted(out) == ["csv", "html", "md", "tex"]
    for fmt in out:
        assert (tmp_path / f"board.{fmt}").read_text() == out[fmt]
    assert "99.2 ± 0.2 (3)" in out["md"] and "iBOT ViT-S/16 (paper)" in out["csv"]


def test_result_validation(tmp_path: Path) -> None:
    good = rec(A, "cifar10", "knn", 0, 1.0)
    write_result(tmp_path / "ok.json", good)
    assert load_result(tmp_path / "ok.json")["model"]["name"] == A
    bad = dict(good, metric={"name": "top1"})
    write_result(tmp_path / "bad.json", bad)
    with pytest.raises(ResultFormatError, match="lacks metric.value"):
        load_result(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ResultFormatError, match="is not a transfer result"):
        load_result(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_result_files([tmp_path / "missing"])
