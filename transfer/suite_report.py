"""The combined report of one or several ``tools/evaluate_backbone.py`` work dirs (``report.md`` + ``report.html``).

The HTML is self-contained (matplotlib PNGs embedded as base64) and links the robustness report and the transfer
leaderboard, both produced by the existing tools (``tools/robustness_report.py``, ``tools/transfer_leaderboard.py``)
over every work dir's results, so several backbones (e.g. pretrained vs random init) sit side by side.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from transfer.suite import HARNESSES, ROOT

__all__ = ["figure_base64", "headline_chart", "load_results", "write_report"]


def load_results(work_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(work_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run tools/evaluate_backbone.py with --work-dir {work_dir} first")
    return json.loads(path.read_text())


def headline_chart(records: list[dict[str, Any]], harnesses: list[str]) -> str:
    """Grouped bars of each harness's headline metric per backbone, as a base64 PNG (for ``data:`` URLs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(harnesses) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(records))
    x = np.arange(len(harnesses))
    for i, rec in enumerate(records):
        vals = [rec["harnesses"].get(h, {}).get("value", np.nan) if rec["harnesses"].get(h, {}).get("status") == "ok"
                else np.nan for h in harnesses]
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
    return figure_base64(fig)


def figure_base64(fig) -> str:
    """A matplotlib figure as a base64 PNG (for ``data:`` URLs in self-contained HTML); closes the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _tool(args: list[str], log: Path) -> bool:
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    return proc.returncode == 0


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def write_report(work_dirs: list[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``<out>/report.md`` and ``<out>/report.html`` (+ leaderboard and robustness report when available)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [load_results(w) for w in work_dirs]
    for rec, w in zip(records, work_dirs):
        rec["_dir"] = Path(w)
    harnesses = [h for h in HARNESSES if any(h in r["harnesses"] for r in records)]
    log = out / "report_tools.log"
    links: dict[str, Path] = {}

    transfer = [str(r["_dir"] / h / "result.json") for r in records for h in ("knn", "linear", "finetune")
                if r["harnesses"].get(h, {}).get("status") == "ok"]
    if transfer and _tool(["tools/transfer_leaderboard.py", *transfer, "--out", str(out / "leaderboard"),
                           "--formats", "md", "html", "csv"], log):
        links["Transfer leaderboard"] = out / "leaderboard.html"
    robust = [r["harnesses"]["robustness"]["result"] for r in records
              if r["harnesses"].get("robustness", {}).get("status") == "ok"]
    if len(robust) > 1 and _tool(["tools/robustness_report.py", *robust, "--out-dir", str(out / "robustness_report"),
                                  "--title", "Robustness: " + " vs ".join(r["name"] for r in records)], log):
        links["Robustness report (all backbones)"] = out / "robustness_report" / "report.html"

    names = [r["name"] for r in records]
    rows = []
    for h in harnesses:
        metric = next((r["harnesses"][h].get("metric") for r in records
                       if r["harnesses"].get(h, {}).get("status") == "ok"), "")
        cells = []
        for r in records:
            e = r["harnesses"].get(h)
            cells.append("—" if e is None else f"{e['value']:.2f}" if e.get("status") == "ok"
                         else f"FAILED (log: {e.get('log')})")
        rows.append((h, metric, cells))

    md = ["# Backbone evaluation", "", "| harness | metric | " + " | ".join(names) + " |",
          "|---|---|" + "---|" * len(names)]
    md += [f"| {h} | {m} | " + " | ".join(c) + " |" for h, m, c in rows]
    md += ["", "## Backbones", ""]
    md += [f"- **{r['name']}**: `{r['checkpoint']}` ({r['arch']}/{r['patch_size']}, {r['img_size']} px), "
           f"work dir `{r['_dir']}`" for r in records]
    md += ["", "## Reports", ""]
    md += [f"- [{k}]({_rel(v, out)})" for k, v in links.items()]
    for r in records:
        rob = r["harnesses"].get("robustness", {})
        if rob.get("status") == "ok" and rob.get("report"):
            md.append(f"- [Robustness report of {r['name']}]({_rel(Path(rob['report']), out)})")
    failures = [(r["name"], h, e) for r in records for h, e in r["harnesses"].items() if e.get("status") != "ok"]
    if failures:
        md += ["", "## Failures", ""]
        md += [f"- {n} / {h}: {e.get('error')} — log: `{e.get('log')}`" for n, h, e in failures]
    md.append("")
    (out / "report.md").write_text("\n".join(md))

    png = headline_chart(records, harnesses) if harnesses else None
    esc = html.escape
    table = ("<table><tr><th>harness</th><th>metric</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
             + "".join(f"<tr><td>{esc(h)}</td><td>{esc(str(m))}</td>"
                       + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for h, m, cells in rows)
             + "</table>")
    link_items = [(k, v) for k, v in links.items()] + [
        (f"Robustness report of {r['name']}", Path(r["harnesses"]["robustness"]["report"])) for r in records
        if r["harnesses"].get("robustness", {}).get("status") == "ok" and r["harnesses"]["robustness"].get("report")]
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Backbone evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Backbone evaluation</h1>
{table}
{f'<h2>Headline metrics</h2><img alt="headline metric per harness" src="data:image/png;base64,{png}">' if png else ''}
<h2>Reports</h2><ul>{''.join(f'<li><a href="{esc(_rel(v, out))}">{esc(k)}</a></li>' for k, v in link_items)}</ul>
<h2>Backbones</h2><ul>{''.join(f"<li><b>{esc(r['name'])}</b>: {esc(str(r['checkpoint']))} ({esc(r['arch'])}/"
                                 f"{r['patch_size']}, {r['img_size']} px)</li>" for r in records)}</ul>
{'<h2>Failures</h2><ul>' + ''.join(f'<li>{esc(n)} / {esc(h)}: {esc(str(e.get("error")))} (log: '
                                    f'{esc(str(e.get("log")))})</li>' for n, h, e in failures) + '</ul>'
     if failures else ''}
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"md": out / "report.md", "html": out / "report.html", **{k: v for k, v in links.items()}}
