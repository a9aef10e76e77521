#!/usr/bin/env python
"""Evaluate an MMDetection 3 or MMSegmentation 1 checkpoint (the toolkit is chosen by the config's default_scope).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--data-root DIR] [--trust-checkpoint]
        [--metrics-json FILE] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Checkpoints written by mmengine's runner pickle a HistoryBuffer and load only when trusted: pass
--trust-checkpoint, or keep them inside the work dir (then they are trusted as files the runner wrote). Tensors-only
files ({'state_dict': ...}) need no trust. Multi-GPU: tools/dist_test.sh; Slurm: tools/slurm_test.sh.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from det.cli import add_common_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="config file (det/configs/... or seg/configs/...)")
    parser.add_argument("checkpoint", help="checkpoint to evaluate")
    parser.add_argument("--metrics-json", help="also write the metrics (rank 0) to this JSON file")
    add_common_args(parser)
    return parser.parse_args(argv)


def _plain(value):
    """JSON-friendly metric value (mmdet / mmseg return numpy scalars)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from mmengine.dist import is_main_process
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from det.cli import load_config, trust_checkpoints

    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    trust_checkpoints(cfg, args.trust_checkpoint, [args.checkpoint])
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    if args.metrics_json and is_main_process():
        with open(args.metrics_json, "w", encoding="utf-8") as fh:
            json.dump({k: _plain(v) for k, v in metrics.items()}, fh, indent=2)
    return metrics


if __name__ == "__main__":
    main()
