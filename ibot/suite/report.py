"""The suite report: one or several work dirs of :func:`ibot.suite.runner.run_suite` side by side, as one
:class:`ibot.report.Page` (Markdown + self-contained HTML), with the transfer leaderboard and the robustness report
of every backbone built next to it and linked. The demo's page is this page with the pretraining section added.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ibot.records import read_record
from ibot.report import Page, Strong
from ibot.suite.runner import RESULTS, order

__all__ = ["comparison_rows", "headline_chart", "load_results", "suite_page", "write_report"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def load_results(work_dir: PathLike) -> dict[str, Any]:
    """The ``results.json`` of a suite work dir, with ``_dir`` set to the work dir."""
    path = Path(work_dir) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run tools/evaluate_backbone.py with --work-dir {work_dir} first")
    return {**read_record(path, kind="suite"), "_dir": Path(work_dir)}


def _harnesses(records: Sequence[dict[str, Any]]) -> list[str]:
    return order(sorted({h for r in records for h in r["harnesses"]}))


def comparison_rows(records: Sequence[dict[str, Any]], digits: int = 2) -> list[list[str]]:
    """``[harness, metric, one cell per backbone (, difference first - second)]`` for every harness run; the
    difference column is there when exactly two backbones are compared."""
    rows = []
    for h in _harnesses(records):
        entries = [r["harnesses"].get(h) for r in records]
        metric = next((e.get("metric", "") for e in entries if e and e.get("status") == "ok"), "")
        cells = ["—" if e is None else f"{e['value']:.{digits}f}" if e.get("status") == "ok"
                 else f"FAILED (log: {e.get('log')})" for e in entries]
        row = [h, str(metric), *cells]
        if len(records) == 2:
            ok = [e["value"] for e in entries if e and e.get("status") == "ok"]
            row.append(Strong(f"{ok[0] - ok[1]:+.{digits}f}") if len(ok) == 2 else "")
        rows.append(row)
    return rows


def headline_chart(records: Sequence[dict[str, Any]]) -> Any:
    """Grouped bars of each harness's headline metric per backbone (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    harnesses = _harnesses(records)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(harnesses) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(records))
    x = np.arange(len(harnesses))
    for i, rec in enumerate(records):
        vals = [rec["harnesses"][h]["value"] if rec["harnesses"].get(h, {}).get("status") == "ok" else np.nan
                for h in harnesses]
        bars = ax.bar(x + (i - (len(records) - 1) / 2) * width, vals, width, label=rec["name"])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    metric = {h: next((r["harnesses"][h].get("metric") for r in records
                       if r["harnesses"].get(h, {}).get("status") == "ok"), "") for h in harnesses}
    ax.set_xticks(x, [f"{h}\n{metric[h]}" for h in harnesses], fontsize=8)
    ax.set_ylabel("headline metric (%)")
    ax.set_title("Headline metric per harness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _sub_reports(records: Sequence[dict[str, Any]], out: Path) -> list[tuple[str, Path]]:
    """Build the transfer leaderboard and (for several backbones) the joint robustness report in ``out``; return
    ``(label, path)`` links to them and to each backbone's own robustness report. A sub-report that cannot be
    built is logged and left out, never fatal."""
    links: list[tuple[str, Path]] = []
    transfer = [str(r["_dir"] / h / "result.json") for r in records for h in ("knn", "linear", "finetune")
                if r["harnesses"].get(h, {}).get("status") == "ok"]
    if transfer:
        from transfer.leaderboard import main as leaderboard

        try:
            leaderboard([*transfer, "--out", str(out / "leaderboard"), "--formats", "md", "html", "csv"])
            links.append(("Transfer leaderboard", out / "leaderboard.html"))
        except (SystemExit, Exception) as exc:  # noqa: BLE001 - the main report is still written
            log.warning("transfer leaderboard not built: %s", exc)
    robust = [r["harnesses"]["robustness"] for r in records
              if r["harnesses"].get("robustness", {}).get("status") == "ok"]
    if len(robust) > 1:
        from robustness.report import build_report

        try:
            build_report([e["result"] for e in robust], out / "robustness_report",
                         title="Robustness: " + " vs ".join(r["name"] for r in records))
            links.append(("Robustness report (all backbones)", out / "robustness_report" / "report.html"))
        except Exception as exc:  # noqa: BLE001 - the main report is still written
            log.warning("joint robustness report not built: %s", exc)
    links += [(f"Robustness report of {r['name']}", Path(r["harnesses"]["robustness"]["report"])) for r in records
              if r["harnesses"].get("robustness", {}).get("status") == "ok"
              and r["harnesses"]["robustness"].get("report")]
    return links


def suite_page(records: Sequence[dict[str, Any]], out: PathLike, title: str = "Backbone evaluation",
               digits: int = 2) -> Page:
    """The suite's page for ``records`` (:func:`load_results`), sub-reports built in ``out`` and linked."""
    out = Path(out)
    page = Page(title)
    names = [r["name"] for r in records]
    header = ["harness", "metric", *names] + (["difference"] if len(records) == 2 else [])
    page.table(header, comparison_rows(records, digits))
    if records and any(r["harnesses"] for r in records):
        page.heading("Headline metrics")
        page.figure(headline_chart(records), "headline", "headline metric per harness and backbone")
    links = _sub_reports(records, out)
    if links:
        page.heading("Reports")
        page.links([(label, os.path.relpath(path, out)) for label, path in links])
    page.heading("Backbones")
    page.bullets([f"{r['name']}: {r['checkpoint']} ({_shape(r.get('model', {}))}), work dir "
                  f"{os.path.relpath(r['_dir'], out)}" for r in records])
    failures = [(r["name"], h, e) for r in records for h, e in r["harnesses"].items() if e.get("status") != "ok"]
    if failures:
        page.heading("Failures")
        page.bullets([f"FAILED {n} / {h}: {e.get('error')} — log: {e.get('log')}" for n, h, e in failures])
    return page


def _shape(model: dict[str, Any]) -> str:
    if not model:
        return "shape unknown"
    name = model.get("arch") or f"ViT {model.get('embed_dim')}-d × {model.get('depth')}"
    return f"{name}/{model.get('patch_size')}, {model.get('img_size')} px"


def write_report(work_dirs: Sequence[PathLike], out_dir: PathLike) -> dict[str, Path]:
    """Write ``<out>/report.md`` and ``<out>/report.html`` (+ leaderboard and robustness report when available)."""
    records = [load_results(w) for w in work_dirs]
    return suite_page(records, out_dir).write(out_dir)
