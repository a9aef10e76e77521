"""The main job, end to end on data the suite brings (run through ``bash tools/demo.sh``).

1. generate the default scene data set (cached; ``ibot.scenes``);
2. pretrain a small ViT with iBOT on its images (``pretrain/configs/ibot_vit-tiny_demo.py``);
3. the whole evaluation suite (``tools/evaluate_backbone.py``: k-NN, linear probe, robustness, Cascade Mask R-CNN
   detection, UperNet segmentation — the real harnesses, as subprocesses) on the pretrained teacher and on the same
   ViT at random initialisation, with the suite's side-by-side report (``<work-dir>/suite/report/report.html``);
4. write ``<work-dir>/report.md`` and a self-contained ``report.html`` (both backbones side by side, the
   pretraining loss curve, the headline metrics chart) that links the suite, robustness and transfer reports.

Budgets are sized for 2 CPU cores (~15 min in all); with a GPU the model, data and schedules are larger.
Re-running resumes: finished pretraining and evaluations are reused.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from ibot.atomic import atomic_write_text  # noqa: E402
from ibot.scenes import ensure_scenes  # noqa: E402
from pretrain.engine import train  # noqa: E402
from transfer.suite import load_data_config  # noqa: E402
from transfer.suite_report import figure_base64, headline_chart, load_results  # noqa: E402

CONFIG = os.path.join(ROOT, "pretrain", "configs", "ibot_vit-tiny_demo.py")
SUITE_DATA = os.path.join(ROOT, "transfer", "configs", "suite_scenes.py")
HARNESSES = ["knn", "linear", "robustness", "det", "seg"]
BACKBONES = {"iBOT demo": "pretrained", "random init": "random"}  # report name -> which checkpoint


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------- set-up
def scene_params(quick: bool, cuda: bool) -> dict[str, Any]:
    """Size of the generated data set: tiny for tests, larger with a GPU."""
    if quick:
        return dict(n_train_per_class=12, n_val_per_class=6, n_scenes_train=16, n_scenes_val=8)
    if cuda:
        return dict(n_train_per_class=1000, n_val_per_class=50, n_scenes_train=800, n_scenes_val=100)
    return dict(n_train_per_class=250, n_val_per_class=50)


def pretrain_config(data_root: str, workers: int, quick: bool, cuda: bool, epochs: int | None) -> Config:
    cfg = Config.fromfile(CONFIG)
    cfg.data.root = os.path.join(data_root, "train")
    cfg.data.num_workers = workers
    if cuda:  # a larger default where there is a GPU
        cfg.model.vit_overrides = dict(embed_dim=192, depth=6, num_heads=3)
        cfg.train.epochs = 100
    if quick:
        cfg.train.epochs, cfg.data.batch_size_per_gpu, cfg.log.interval = 2, 16, 2
        cfg.loss.warmup_teacher_temp_epochs, cfg.optim.warmup_epochs = 1, 1
    if epochs:
        cfg.train.epochs = epochs
    return cfg


def suite_data_config(scenes: Path, out: Path, quick: bool, cuda: bool) -> Path:
    """``transfer/configs/suite_scenes.py`` on this data set, budgets adjusted, frozen as JSON in the work dir."""
    old = os.environ.get("IBOT_SCENES_ROOT")
    os.environ["IBOT_SCENES_ROOT"] = str(scenes)
    try:
        cfg = load_data_config(SUITE_DATA)
    finally:
        if old is None:
            os.environ.pop("IBOT_SCENES_ROOT")
        else:
            os.environ["IBOT_SCENES_ROOT"] = old
    det, seg = cfg["det"]["cfg_options"], cfg["seg"]["cfg_options"]
    if quick:
        cfg["linear"]["epochs"] = 2
        cfg["robustness"].update(tests=["imagenet-c"], corruptions=["gaussian_noise"], severities=[3])
        det.update({"train_cfg.max_epochs": 1, "param_scheduler.1.milestones": [1]})
        seg.update({"train_cfg.max_iters": 4, "param_scheduler.0.end": 2, "param_scheduler.1.begin": 2,
                    "param_scheduler.1.end": 4, "default_hooks.checkpoint.interval": 4})
    elif cuda:
        cfg["linear"]["epochs"] = 50
        cfg["common"]["num_workers"] = 8
        det.update({"train_cfg.max_epochs": 24, "param_scheduler.1.milestones": [18, 22]})
        seg.update({"train_cfg.max_iters": 4000, "param_scheduler.1.end": 4000,
                    "default_hooks.checkpoint.interval": 4000})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(cfg, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------------ suite
def run_suite(cfg: Config, work: Path, data_config: Path, checkpoints: dict[str, str]) -> list[Path]:
    """tools/evaluate_backbone.py for each backbone (resumable; a failed harness is reported and the rest goes on)."""
    v = cfg.model.vit_overrides
    tool = os.path.join(ROOT, "tools", "evaluate_backbone.py")
    dirs = []
    for name, ckpt in checkpoints.items():
        out = work / "suite" / name.replace(" ", "_")
        say(f"      {name}: {' '.join(HARNESSES)} (logs under {out})")
        cmd = [sys.executable, tool, ckpt, "--arch", cfg.model.arch, "--patch-size", str(cfg.model.patch_size),
               "--img-size", str(cfg.model.img_size), "--set", f"model.embed_dim={v.embed_dim}",
               f"model.depth={v.depth}", f"model.num_heads={v.num_heads}", "--suite", *HARNESSES,
               "--data-config", str(data_config), "--work-dir", str(out), "--name", name]
        # Streamed, so each harness's start and result show up as they happen (a harness can take minutes).
        lines = []
        with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as proc:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("[suite]") and not line.startswith(("[suite] results", "[suite] report")):
                    say("        " + line[len("[suite] "):].rstrip())
        if proc.returncode == 2:  # the checkpoint itself could not be read: nothing ran
            raise SystemExit(f"evaluate_backbone.py could not start for {name}:\n{''.join(lines)[-3000:]}")
        dirs.append(out)
    return dirs


def suite_report(dirs: list[Path], out: Path) -> Path:
    tool = os.path.join(ROOT, "tools", "evaluate_backbone.py")
    subprocess.run([sys.executable, tool, "--report", *map(str, dirs), "--out", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return out / "report.html"


# ----------------------------------------------------------------------------------------------------- report
def loss_curve_png(log_path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log_path)]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key in ("loss", "cls", "patch"):
        ax.plot([r["iteration"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("iBOT loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return figure_base64(fig)


def comparison_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, list[str], str]]:
    """(harness, metric, one cell per backbone, difference first - second) for every harness run."""
    rows = []
    for h in HARNESSES:
        entries = [r["harnesses"].get(h, {}) for r in records]
        if not any(entries):
            continue
        metric = next((e.get("metric", "") for e in entries if e.get("status") == "ok"), "")
        cells = [f"{e['value']:.1f}" if e.get("status") == "ok" else "failed" if e else "—" for e in entries]
        ok = [e.get("value") for e in entries if e.get("status") == "ok"]
        diff = f"{ok[0] - ok[1]:+.1f}" if len(ok) == 2 and len(entries) == 2 else ""
        rows.append((h, metric, cells, diff))
    return rows


def write_report(work: Path, cfg: Config, records: list[dict[str, Any]], scenes: Path, suite_html: Path,
                 data_config: Path, seconds: float, stages: dict[str, float]) -> Path:
    v = cfg.model.vit_overrides
    rel = lambda p: os.path.relpath(p, work)  # noqa: E731
    names = [r["name"] for r in records]
    rows = comparison_rows(records)
    knn = next((d for h, _, _, d in rows if h == "knn"), "")
    intro = (f"A ViT ({v.embed_dim}-d, {v.depth} blocks, patch {cfg.model.patch_size}, {cfg.model.img_size} px) "
             f"pretrained with iBOT for {cfg.train.epochs} epochs on the generated scene images ({scenes}), then "
             f"taken through the evaluation suite — next to the same backbone at random initialisation. "
             f"Budgets are demo-sized (the suite's data config: {rel(data_config)}): every harness runs for real, "
             f"but differences of a point or less are within run-to-run noise at this scale.")
    failed = [(r["name"], h, e) for r in records for h, e in r["harnesses"].items() if e.get("status") != "ok"]
    links = {"Suite report (both backbones)": suite_html}
    for extra, label in (("leaderboard.html", "Transfer leaderboard"),
                         (os.path.join("robustness_report", "report.html"), "Robustness report")):
        if (suite_html.parent / extra).is_file():
            links[label] = suite_html.parent / extra
    timing = ", ".join(f"{k} {s / 60:.1f} min" for k, s in stages.items())

    md = ["# iBOT suite demo report", "", intro, "",
          "| harness | metric | " + " | ".join(names) + " | difference |", "|---|---|" + "---|" * (len(names) + 1),
          *[f"| {h} | {m} | " + " | ".join(c) + f" | {d} |" for h, m, c, d in rows], ""]
    if knn:
        md += [f"Learning signal (k-NN, k=20): **{knn} points** over random initialisation.", ""]
    md += [f"Total time {seconds / 60:.1f} min ({timing}).", "",
           "Pretraining log: `pretrain/log.jsonl`; teacher backbone: `pretrain/teacher_backbone.pth`; per-backbone "
           "results: `suite/<backbone>/results.json` (logs in `suite/<backbone>/<harness>/log.txt`).", "",
           *[f"- [{k}]({rel(p)})" for k, p in links.items()], ""]
    if failed:
        md += ["## Failures", "", *[f"- {n} / {h}: {e.get('error')} — log `{e.get('log')}`" for n, h, e in failed], ""]
    atomic_write_text(work / "report.md", "\n".join(md))

    esc = html.escape
    table = ("<table><tr><th>harness</th><th>metric</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
             + "<th>difference</th></tr>"
             + "".join(f"<tr><td>{esc(h)}</td><td>{esc(m)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells)
                       + f"<td><b>{esc(d)}</b></td></tr>" for h, m, cells, d in rows) + "</table>")
    chart = headline_chart(records, [h for h, *_ in rows])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>iBOT suite demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}</style>
</head><body><h1>iBOT suite demo report</h1>
<p>{esc(intro)}</p>
{table}
{f'<p>Learning signal (k-NN, k=20): <b>{esc(knn)} points</b> over random initialisation.</p>' if knn else ''}
<h2>Headline metrics</h2><img id="headline-chart" alt="headline metric per harness and backbone"
 src="data:image/png;base64,{chart}">
<h2>Pretraining loss</h2><img id="loss-curve" alt="iBOT loss curve"
 src="data:image/png;base64,{loss_curve_png(work / 'pretrain' / 'log.jsonl')}">
<h2>Reports</h2><ul>{''.join(f'<li><a href="{esc(rel(p))}">{esc(k)}</a></li>' for k, p in links.items())}</ul>
{'<h2>Failures</h2><ul>' + ''.join(f'<li>{esc(n)} / {esc(h)}: {esc(str(e.get("error")))}</li>'
                                    for n, h, e in failed) + '</ul>' if failed else ''}
<p>Total time {seconds / 60:.1f} min ({esc(timing)}).</p>
</body></html>
"""
    out = work / "report.html"
    atomic_write_text(out, page)
    return out


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=os.path.join(ROOT, "work_dirs", "demo"))
    p.add_argument("--quick", action="store_true", help="a much shorter run (tests)")
    p.add_argument("--epochs", type=int, help="override the pretraining epochs")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.time()
    stages: dict[str, float] = {}
    cuda = torch.cuda.is_available()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.work_dir).resolve()

    say("1/4 default data: generating (or reusing) the scene data set ...")
    scenes = ensure_scenes(**scene_params(args.quick, cuda))
    data_root = os.path.join(scenes, "classification")
    say(f"      {scenes}")

    cfg = pretrain_config(data_root, args.workers, args.quick, cuda, args.epochs)
    say(f"2/4 iBOT pretraining: {cfg.train.epochs} epochs on {'GPU' if cuda else 'CPU'} -> {work}/pretrain")
    t = time.time()
    train(cfg, str(work / "pretrain"), resume=True)
    stages["pretraining"] = time.time() - t

    say("3/4 evaluation suite on both backbones (k-NN, linear probe, robustness, detection, segmentation) ...")
    t = time.time()
    data_config = suite_data_config(Path(scenes), work / "suite" / "data_config.json", args.quick, cuda)
    ckpts = {name: str(work / "pretrain" / "teacher_backbone.pth") if which == "pretrained" else "random"
             for name, which in BACKBONES.items()}
    dirs = run_suite(cfg, work, data_config, ckpts)
    suite_html = suite_report(dirs, work / "suite" / "report")
    stages["evaluation suite"] = time.time() - t

    say("4/4 report ...")
    records = [load_results(d) for d in dirs]
    out = write_report(work, cfg, records, Path(scenes), suite_html, data_config, time.time() - t0, stages)
    for h, m, cells, d in comparison_rows(records):
        say(f"      {h:<10} {m:<22} " + "  ".join(f"{n} {c}" for n, c in zip(BACKBONES, cells))
            + (f"  ({d})" if d else ""))
    failed = [(r["name"], h) for r in records for h, e in r["harnesses"].items() if e.get("status") != "ok"]
    say(f"done in {(time.time() - t0) / 60:.1f} min: report at {out}")
    if failed:
        say("FAILED harnesses: " + ", ".join(f"{n}/{h}" for n, h in failed) + " (see the report for their logs)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
