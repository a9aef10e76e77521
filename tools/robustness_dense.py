#!/usr/bin/env python
"""COCO-C / ADE20K-C style robustness of any mmdet 3.x or mmseg 1.x config + checkpoint.

Every (corruption, severity) cell runs the config's test loop with the corruption inserted right after image loading
(in RGB order); P / mPC / rPC are printed for each summarised metric (bbox and segm mAP for detection, mIoU for
segmentation). The result JSON is resumable (finished cells are skipped) and feeds ``tools/robustness_report.py``.

    # one process
    python tools/robustness_dense.py det/configs/my_cascade.py work_dirs/my_cascade/epoch_12.pth \
        --out results/my_cascade_coco_c.json --trust-checkpoint
    # several GPUs (as tools/dist_test.sh): every rank evaluates each cell, rank 0 writes the result file
    torchrun --nproc_per_node=8 tools/robustness_dense.py CONFIG CKPT --out results/x.json --launcher pytorch

``--trust-checkpoint`` allows a checkpoint that pickles Python objects (mmengine's own checkpoints do: a
``HistoryBuffer``); this executes code from the file, so use it only for files you trust. Tensors-only checkpoints
load without it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _parse_cfg_options(items: Sequence[str] | None) -> dict:
    from mmengine.config import DictAction

    ns = argparse.Namespace()
    DictAction(option_strings=[], dest="opts")(None, ns, list(items or []))
    return dict(ns.opts or {})


def main(argv: Sequence[str] | None = None, on_cell_done: Callable[[str, dict, Any], None] | None = None) -> dict:
    from robustness.metrics import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS, EXTRA_CORRUPTIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="model weights (omit only to test the pipeline on a random model)")
    p.add_argument("--out", required=True, help="result JSON (created or resumed)")
    p.add_argument("--name", help="model name in reports")
    p.add_argument("--task", choices=("det_c", "seg_c"), help="default: from the config's default_scope")
    p.add_argument("--corruptions", nargs="+", default=["benchmark"],
                   help="names or groups: benchmark (15, default), extra (4), all, noise, blur, weather, digital")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt-after", default=None,
                   help="insert the corruption after this pipeline step type instead of after image loading "
                        "(e.g. Resize: corrupt at test resolution; faster, but not the published protocol)")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", help="override config entries (mmengine syntax)")
    p.add_argument("--launcher", default="none", choices=("none", "pytorch", "slurm", "mpi"))
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--restart", action="store_true", help="discard the stored cells of this task and recompute")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)

    corruptions: list[str] = []
    for n in args.corruptions:
        groups = {"benchmark": BENCHMARK_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, "all": ALL_CORRUPTIONS,
                  **CORRUPTION_GROUPS}
        if n in groups:
            corruptions += groups[n]
        elif n in ALL_CORRUPTIONS:
            corruptions.append(n)
        else:
            raise SystemExit(f"unknown corruption or group {n!r}")
    corruptions = list(dict.fromkeys(corruptions))

    from mmengine.dist import is_main_process

    from robustness.dense import run_dense

    summary = run_dense(
        args.config, args.checkpoint, args.out, corruptions=corruptions, severities=args.severities, seed=args.seed,
        task=args.task, model_name=args.name, work_dir=args.work_dir, cfg_options=_parse_cfg_options(args.cfg_options),
        launcher=args.launcher, trust_checkpoint=args.trust_checkpoint, corrupt_after=args.corrupt_after,
        restart=args.restart, progress=not args.no_progress, on_cell_done=on_cell_done)
    if is_main_process():
        for metric, d in summary.items():
            mpc = "n/a" if d["mPC"] is None else f"{d['mPC']:.4g}"
            rpc = "n/a" if d["rPC"] is None else f"{d['rPC']:.1f} %"
            full = "" if d["complete"] else f"  [partial: {d['n_cells']} of 75 benchmark cells]"
            print(f"{metric}: P = {d['P']:.4g}  mPC = {mpc}  rPC = {rpc}{full}")
        print(json.dumps({m: {k: d[k] for k in ('P', 'mPC', 'rPC', 'complete')} for m, d in summary.items()}))
    return summary


if __name__ == "__main__":
    main()
