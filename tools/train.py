#!/usr/bin/env python
"""Train an MMDetection 3 or MMSegmentation 1 model from a config (the toolkit is chosen by its default_scope).

    python tools/train.py det/configs/<config>.py [--work-dir DIR] [--resume [CKPT]] [--amp [fp16|bf16]]
        [--data-root DIR] [--trust-checkpoint] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Multi-GPU / multi-node: tools/dist_train.sh; Slurm: tools/slurm_train.sh.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # configs import the repository's packages (custom_imports=['det'] / ['seg'])
    sys.path.insert(0, ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from det.cli import AMP_DTYPES, add_common_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="config file (det/configs/... or seg/configs/...)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="resume from CKPT, or without a value from the latest checkpoint in the work dir")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="automatic mixed precision (default fp16, as the paper's apex O1; bf16 on Ampere+)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the lr by total batch / auto_scale_lr.base_batch_size")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from det.cli import load_config, pretrained_checkpoints, resolve_resume, set_amp, toolkit_of, trust_checkpoints

    cfg = load_config(args)
    if toolkit_of(cfg) == "mmdet":
        from mmdet.utils import setup_cache_size_limit_of_dynamo

        setup_cache_size_limit_of_dynamo()
    if args.amp:
        set_amp(cfg, args.amp)
    if args.auto_scale_lr:
        if "base_batch_size" not in cfg.get("auto_scale_lr", {}):
            raise SystemExit("--auto-scale-lr: the config has no auto_scale_lr.base_batch_size")
        cfg.auto_scale_lr.enable = True
    resolve_resume(cfg, args.resume)
    trust_checkpoints(cfg, args.trust_checkpoint, [cfg.get("load_from") or ""], list(pretrained_checkpoints(cfg)))
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == "__main__":
    main()
