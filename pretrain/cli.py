"""iBOT pretraining command line: ``python -m pretrain.cli CONFIG [--work-dir DIR] [--cfg-options k=v ...]``
(``tools/pretrain.py`` is the same).

Single process (CPU or one GPU) as is; multi-GPU through ``tools/dist_pretrain.sh`` (torchrun). Resumes
automatically from the newest usable checkpoint in the work dir (``--no-resume`` to refuse, ``--resume PATH`` for a
given checkpoint). A resume whose result-changing settings differ from the checkpoint's is refused, listing each
differing key, unless ``--force-resume``. The merged config is validated before anything runs or is written
(unknown keys, value kinds, ranges); a refused run leaves the work dir as it was.
"""
from __future__ import annotations

import argparse
import os

from mmengine.config import Config, DictAction

from pretrain.checkpointing import ResumeError
from pretrain.engine import train
from pretrain.settings import PretrainConfigError, validate_config


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="mmengine config, e.g. pretrain/configs/ibot_vit-s16_800e_in1k.py")
    p.add_argument("--work-dir", help="default: work_dirs/<config name>")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config values, e.g. data.root=/data/imagenet/train train.epochs=100 "
                        "(keys of pretrain/configs/_base_/default.py)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", default=True, nargs="?", const=True, metavar="CHECKPOINT",
                   help="resume from CHECKPOINT, or (no value, the default) from the newest usable one in the work dir")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even if result-changing settings (batch size, lr, epochs, ...) differ from the "
                        "checkpoint's; config.py is rewritten with the new ones")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA when available")
    return p


def load_config(path: str, options: dict) -> Config:
    """``path`` with ``options`` (``--cfg-options``) merged, validated (raises :class:`PretrainConfigError`)."""
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    validate_config(cfg)
    return cfg


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = build_parser(prog or "python -m pretrain.cli")
    args = p.parse_args(argv)
    if not os.path.isfile(args.config):
        p.error(f"config file {args.config!r} does not exist")
    if args.force_resume and args.resume is False:
        p.error("--force-resume resumes; it cannot be combined with --no-resume")
    work_dir = args.work_dir or os.path.join("work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    try:
        cfg = load_config(args.config, args.cfg_options)
        train(cfg, work_dir, resume=args.resume, device=args.device, force_resume=args.force_resume)
    except (PretrainConfigError, ResumeError) as e:  # refused before anything was written: no traceback
        p.exit(2, f"{p.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
