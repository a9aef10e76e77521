"""The main job, end to end on data the suite brings (``bash tools/demo.sh`` runs ``tools/demo.py``).

1. generate the default scene data set (cached; ``ibot.scenes``);
2. pretrain a small ViT with iBOT on its images (``pretrain/configs/ibot_vit-tiny_demo.py``);
3. the whole evaluation suite, in process (:func:`ibot.suite.run_suite`: k-NN, linear probe, robustness, Cascade Mask
   R-CNN detection, UperNet segmentation — the real harnesses, each as a subprocess) on the pretrained teacher and on
   the same ViT at random initialisation;
4. write ``<work-dir>/report.md`` and a self-contained ``report.html``: the suite report of both backbones side by
   side with the pretraining section added (loss curve, learning signal), linking the robustness and transfer
   reports.

Budgets are sized for 2 CPU cores (~10 min in all); with a GPU the model, data and schedules are larger.
Re-running resumes: finished pretraining and evaluations are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ibot.atomic import atomic_write_text
from ibot.checkpoint import read_backbone
from ibot.report import Page, Strong
from ibot.suite.harnesses import project_root
from ibot.suite.report import comparison_rows, load_results, suite_page
from ibot.suite.runner import SuiteRequest, load_data_config, run_suite

__all__ = ["main"]

CONFIG = project_root() / "pretrain" / "configs" / "ibot_vit-tiny_demo.py"
SUITE_DATA = Path(__file__).resolve().parent / "configs" / "scenes.py"
HARNESSES = ["knn", "linear", "robustness", "det", "seg"]
PRETRAINED, RANDOM = "iBOT demo", "random init"


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


def pretrain_config(data_root: str, workers: int, quick: bool, cuda: bool, epochs: int | None) -> Any:
    """The demo's pretraining config, adjusted to the machine and the run's length."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIG))
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


def suite_data_config(scenes: Path, out: Path, quick: bool, cuda: bool) -> dict[str, Any]:
    """``ibot/suite/configs/scenes.py`` on this data set, budgets adjusted, frozen as JSON in the work dir."""
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
    return cfg


# ------------------------------------------------------------------------------------------------------ suite
def evaluate(work: Path, data_config: dict[str, Any], teacher: Path) -> list[Path]:
    """The suite on the pretrained teacher and on the same ViT at random initialisation (resumable; a failed
    harness is reported and the rest goes on). Returns the two work dirs."""
    requests = [SuiteRequest(backbone=str(teacher), work_dir=work / "suite" / "iBOT_demo", data_config=data_config,
                             harnesses=HARNESSES, name=PRETRAINED),
                SuiteRequest(backbone="random", like=str(teacher), work_dir=work / "suite" / "random_init",
                             data_config=data_config, harnesses=HARNESSES, name=RANDOM)]
    for req in requests:
        say(f"      {req.name}: {' '.join(HARNESSES)} (logs under {req.work_dir})")
        run_suite(req, log=lambda line: say("        " + line))
    return [Path(r.work_dir) for r in requests]


# ----------------------------------------------------------------------------------------------------- report
def loss_curve(log_path: Path) -> Any:
    """The pretraining loss (total, [CLS], patch) per logged iteration, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log_path)]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key in ("loss", "cls", "patch"):
        ax.plot([r["iteration"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("iBOT loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def demo_page(work: Path, cfg: Any, records: list[dict[str, Any]], scenes: Path, seconds: float,
              stages: dict[str, float]) -> Page:
    """The suite report of both backbones with the pretraining section in front."""
    model = read_backbone(work / "pretrain" / "teacher_backbone.pth").model
    rows = comparison_rows(records, digits=1)
    knn = next((row[-1] for row in rows if row[0] == "knn"), "")
    page = Page("iBOT suite demo report")
    page.para(f"A ViT ({model['embed_dim']}-d, {model['depth']} blocks, patch {model['patch_size']}, "
              f"{model['img_size']} px) pretrained with iBOT for {cfg.train.epochs} epochs on the generated scene "
              f"images ({scenes}), then taken through the evaluation suite — next to the same backbone at random "
              "initialisation. Budgets are demo-sized (the suite's data config: suite/data_config.json): every harness "
              "runs for real, but differences of a point or less are within run-to-run noise at this scale.")
    if knn:
        page.para(Strong(f"Learning signal (k-NN, k=20): {knn} points over random initialisation."))
    page.heading("Pretraining loss")
    page.figure(loss_curve(work / "pretrain" / "log.jsonl"), "loss_curve", "iBOT loss curve")
    timing = ", ".join(f"{k} {s / 60:.1f} min" for k, s in stages.items())
    page.para(f"Total time {seconds / 60:.1f} min ({timing}). Pretraining log: pretrain/log.jsonl; teacher backbone: "
              "pretrain/teacher_backbone.pth; per-backbone results: suite/<backbone>/results.json (logs in "
              "suite/<backbone>/<harness>/log.txt).")
    page.extend(suite_page(records, work, title="Evaluation suite", digits=1))
    return page


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from ibot.scenes import ensure_scenes
    from pretrain.engine import train

    p = argparse.ArgumentParser(prog="tools/demo.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=str(project_root() / "work_dirs" / "demo"))
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
    scenes = Path(ensure_scenes(**scene_params(args.quick, cuda)))
    say(f"      {scenes}")

    cfg = pretrain_config(str(scenes / "classification"), args.workers, args.quick, cuda, args.epochs)
    say(f"2/4 iBOT pretraining: {cfg.train.epochs} epochs on {'GPU' if cuda else 'CPU'} -> {work}/pretrain")
    t = time.time()
    train(cfg, str(work / "pretrain"), resume=True)
    stages["pretraining"] = time.time() - t

    say("3/4 evaluation suite on both backbones (k-NN, linear probe, robustness, detection, segmentation) ...")
    t = time.time()
    data_config = suite_data_config(scenes, work / "suite" / "data_config.json", args.quick, cuda)
    dirs = evaluate(work, data_config, work / "pretrain" / "teacher_backbone.pth")
    stages["evaluation suite"] = time.time() - t

    say("4/4 report ...")
    records = [load_results(d) for d in dirs]
    out = demo_page(work, cfg, records, scenes, time.time() - t0, stages).write(work)["html"]
    for row in comparison_rows(records, digits=1):
        say(f"      {row[0]:<10} {row[1]:<22} {PRETRAINED} {row[2]}  {RANDOM} {row[3]}"
            + (f"  ({row[4]})" if len(row) > 4 and row[4] else ""))
    failed = [(r["name"], h) for r in records for h, e in r["harnesses"].items() if e.get("status") != "ok"]
    say(f"done in {(time.time() - t0) / 60:.1f} min: report at {out}")
    if failed:
        say("FAILED harnesses: " + ", ".join(f"{n}/{h}" for n, h in failed) + " (see the report for their logs)")
        return 1
    return 0
