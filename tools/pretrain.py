"""iBOT pretraining: ``python tools/pretrain.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]``.

Single process (CPU or one GPU) as is; multi-GPU through ``tools/dist_pretrain.sh`` (torchrun).
Resumes automatically from the newest checkpoint in the work dir (``--no-resume`` to refuse,
``--resume PATH`` for a given checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from pretrain.engine import train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmengine config, e.g. pretrain/configs/ibot_vit-s16_800e_in1k.py")
    p.add_argument("--work-dir", help="default: work_dirs/<config name>")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config values, e.g. data.root=/data/imagenet/train train.epochs=100")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", default=True, nargs="?", const=True, metavar="CHECKPOINT",
                   help="resume from CHECKPOINT, or (no value, the default) from the newest in the work dir")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA when available")
    args = p.parse_args(argv)
    if not os.path.isfile(args.config):
        p.error(f"config file {args.config!r} does not exist")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    work_dir = args.work_dir or os.path.join("work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    train(cfg, work_dir, resume=args.resume, device=args.device)


if __name__ == "__main__":
    main()
