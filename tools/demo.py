"""The main job, end to end on data the suite brings (run through ``bash tools/demo.sh``).

1. generate the default scene data set (cached; ``ibot.scenes``);
2. pretrain a small ViT with iBOT on its images (``pretrain/configs/ibot_vit-tiny_demo.py``);
3. k-NN transfer of the pretrained teacher and of the same ViT at random initialisation
   (``tools/transfer_knn.py``, the real harness);
4. the evaluation suite (``tools/evaluate_backbone.py``: k-NN, linear probe, robustness) on both
   backbones, with its side-by-side report (``<work-dir>/suite/report.html``);
5. write ``<work-dir>/report.md`` and a self-contained ``report.html`` that links the suite report.

Re-running resumes: finished pretraining and evaluations are reused.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from ibot.atomic import atomic_write_text  # noqa: E402
from ibot.scenes import ensure_scenes  # noqa: E402
from pretrain.engine import train  # noqa: E402

CONFIG = os.path.join(ROOT, "pretrain", "configs", "ibot_vit-tiny_demo.py")


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def knn(cfg: Config, data_root: str, out_dir: str, checkpoint: str | None, name: str, workers: int) -> dict:
    """Run the k-NN harness (a subprocess, as a user would) unless its result already exists."""
    result = os.path.join(out_dir, "result.json")
    if os.path.isfile(result):
        with open(result) as f:
            return json.load(f)
    v = cfg.model.vit_overrides
    cmd = [sys.executable, os.path.join(ROOT, "tools", "transfer_knn.py"), "--dataset", "imagefolder",
           "--data-root", data_root, "--arch", cfg.model.arch, "--patch-size", str(cfg.model.patch_size),
           "--img-size", str(cfg.model.img_size), "--model-name", name, "--pretrain-data", "demo scenes",
           "--num-workers", str(workers), "--output-dir", out_dir, "--no-progress",
           "--set", f"model.embed_dim={v.embed_dim}", f"model.depth={v.depth}", f"model.num_heads={v.num_heads}",
           "data.test_split=val", "data.tag=scenes", "ks=[10,20]", "report_k=20"]
    if checkpoint:
        cmd += ["--pretrained", checkpoint]
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(result) as f:
        return json.load(f)


def suite(cfg: Config, work: str, scenes: str, checkpoints: dict[str, str]) -> str:
    """Run tools/evaluate_backbone.py for each backbone (resumable), then its side-by-side report."""
    v = cfg.model.vit_overrides
    tool = os.path.join(ROOT, "tools", "evaluate_backbone.py")
    dirs = []
    for name, ckpt in checkpoints.items():
        out = os.path.join(work, "suite", name.replace(" ", "_"))
        cmd = [sys.executable, tool, ckpt, "--arch", cfg.model.arch, "--patch-size", str(cfg.model.patch_size),
               "--img-size", str(cfg.model.img_size), "--set", f"model.embed_dim={v.embed_dim}",
               f"model.depth={v.depth}", f"model.num_heads={v.num_heads}", "--suite", "knn", "linear",
               "robustness", "--data-config", os.path.join(ROOT, "transfer", "configs", "suite_scenes.py"),
               "--work-dir", out, "--name", name]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, IBOT_SCENES_ROOT=scenes))  # the demo's data set
        dirs.append(out)
    report = os.path.join(work, "suite", "report")
    subprocess.run([sys.executable, tool, "--report", *dirs, "--out", report], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return os.path.join(report, "report.html")


def loss_curve_png(log_path: str) -> bytes:
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def top1(result: dict) -> float:
    return float(result["metric"]["value"])


def write_report(work_dir: str, cfg: Config, results: dict[str, dict], data_root: str, seconds: float,
                 suite_report: str) -> str:
    rows = [(name, top1(r), r["metric"]) for name, r in results.items()]
    gain = rows[0][1] - rows[1][1]
    v = cfg.model.vit_overrides
    lines = [
        "# iBOT suite demo report", "",
        f"ViT ({v.embed_dim}-d, {v.depth} blocks, patch {cfg.model.patch_size}) pretrained with iBOT for "
        f"{cfg.train.epochs} epochs on the generated scene images ({data_root}), then evaluated by k-NN "
        f"(k=20, T=0.07) on their held-out split — next to the same backbone at random initialisation.", "",
        "| backbone | k-NN top-1 (%) |", "|---|---|",
        *[f"| {name} | {acc:.1f} |" for name, acc, _ in rows], "",
        f"Learning signal: **{gain:+.1f} points** over random initialisation. Total time {seconds / 60:.1f} min.", "",
        "Pretraining log: `pretrain/log.jsonl`; teacher backbone: `pretrain/teacher_backbone.pth`; "
        "k-NN results: `knn_*/result.json`.", "",
        f"Evaluation suite (k-NN, linear probe, robustness) of both backbones: "
        f"[{os.path.relpath(suite_report, work_dir)}]({os.path.relpath(suite_report, work_dir)}).",
    ]
    atomic_write_text(os.path.join(work_dir, "report.md"), "\n".join(lines) + "\n")
    png = base64.b64encode(loss_curve_png(os.path.join(work_dir, "pretrain", "log.jsonl"))).decode()
    table = "".join(f"<tr><td>{html.escape(n)}</td><td>{a:.1f}</td></tr>" for n, a, _ in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>iBOT suite demo</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>iBOT suite demo report</h1>
<p>{html.escape(lines[2])}</p>
<table><tr><th>backbone</th><th>k-NN top-1 (%)</th></tr>{table}</table>
<p>Learning signal: <b>{gain:+.1f} points</b> over random initialisation.</p>
<p>Evaluation suite (k-NN, linear probe, robustness) of both backbones:
<a href="{html.escape(os.path.relpath(suite_report, work_dir))}">suite report</a>.</p>
<h2>Pretraining loss</h2><img alt="iBOT loss curve" src="data:image/png;base64,{png}">
</body></html>"""
    out = os.path.join(work_dir, "report.html")
    atomic_write_text(out, page)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=os.path.join(ROOT, "work_dirs", "demo"))
    p.add_argument("--quick", action="store_true", help="a much shorter run (tests)")
    p.add_argument("--epochs", type=int, help="override the pretraining epochs")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.time()
    cuda = torch.cuda.is_available()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    sizes = dict(n_train_per_class=12, n_val_per_class=6) if args.quick else dict(
        n_train_per_class=250 if not cuda else 1000, n_val_per_class=50)
    say("1/5 default data: generating (or reusing) the scene data set ...")
    scenes = ensure_scenes(**sizes)
    data_root = os.path.join(scenes, "classification")
    say(f"      {scenes}")

    cfg = Config.fromfile(CONFIG)
    cfg.data.root = os.path.join(data_root, "train")
    cfg.data.num_workers = args.workers
    if cuda:  # a larger default where there is a GPU
        cfg.model.vit_overrides = dict(embed_dim=192, depth=6, num_heads=3)
        cfg.train.epochs = 100
    if args.quick:
        cfg.train.epochs, cfg.data.batch_size_per_gpu, cfg.log.interval = 2, 16, 2
        cfg.loss.warmup_teacher_temp_epochs, cfg.optim.warmup_epochs = 1, 1
    if args.epochs:
        cfg.train.epochs = args.epochs
    work = os.path.abspath(args.work_dir)
    say(f"2/5 iBOT pretraining: {cfg.train.epochs} epochs on {'GPU' if cuda else 'CPU'} -> {work}/pretrain")
    train(cfg, os.path.join(work, "pretrain"), resume=True)

    say("3/5 k-NN transfer of the pretrained teacher and of the random-init backbone ...")
    results = {
        "iBOT-pretrained (demo)": knn(cfg, data_root, os.path.join(work, "knn_ibot"),
                                      os.path.join(work, "pretrain", "teacher_backbone.pth"), "iBOT (demo)",
                                      args.workers),
        "random initialisation": knn(cfg, data_root, os.path.join(work, "knn_random"), None, "random init",
                                     args.workers),
    }
    say("4/5 evaluation suite (k-NN, linear probe, robustness) on both backbones ...")
    suite_report = suite(cfg, work, str(scenes), {"iBOT demo": os.path.join(work, "pretrain", "teacher_backbone.pth"),
                                     "random init": "random"})
    say("5/5 report ...")
    out = write_report(work, cfg, results, data_root, time.time() - t0, suite_report)
    for name, r in results.items():
        say(f"      k-NN top-1 {top1(r):5.1f} %  {name}")
    say(f"done in {(time.time() - t0) / 60:.1f} min: report at {out}")


if __name__ == "__main__":
    main()
