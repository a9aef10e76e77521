"""Shared logic of ``tools/train.py`` and ``tools/test.py`` (kept here so it can be imported and tested).

Both scripts serve MMDetection and MMSegmentation configs: the toolkit is read from the config's
``default_scope`` (``mmdet`` / ``mmseg``, set by the toolkits' ``default_runtime.py``).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Any, Iterator

from mmengine.config import Config, ConfigDict, DictAction

from ibot.compat.mmengine import install as install_checkpoint_policy
from ibot.compat.mmengine import trust_checkpoint

TOOLKITS = ("mmdet", "mmseg")
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", help="directory for logs and checkpoints "
                        "(default: ./work_dirs/<config name>)")
    parser.add_argument("--data-root", help="replace the config's data_root (every path under it: dataset roots, "
                        "annotation files of the evaluators)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling (torch.load(weights_only=False)) of the checkpoints this run "
                        "reads: the backbone init_cfg checkpoint, load_from / --resume, the test CHECKPOINT. Only "
                        "for files you trust (it executes pickled code). Checkpoints inside the work dir, written "
                        "by the runner, are trusted without it")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override config entries, key=value (e.g. train_cfg.max_iters=10, "
                        "model.backbone.init_cfg.checkpoint=PATH, 'key=[a,b]')")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (set by dist_*.sh / slurm_*.sh)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace) -> Config:
    """Config with command-line overrides applied, work dir and launcher set, checkpoint policy installed."""
    install_checkpoint_policy()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not osp.isfile(args.config):
        raise SystemExit(f"config file {args.config!r} does not exist (det/configs/*.py or seg/configs/*.py)")
    cfg = Config.fromfile(args.config)
    toolkit_of(cfg)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


def toolkit_of(cfg: Config) -> str:
    scope = cfg.get("default_scope")
    if scope not in TOOLKITS:
        raise ValueError(f"config default_scope is {scope!r}; expected one of {TOOLKITS} (inherit the toolkit's "
                         "default_runtime.py, e.g. _base_ = 'mmdet::_base_/default_runtime.py')")
    return scope


def _walk(obj: Any, fn) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        for key in list(obj.keys()):
            obj[key] = _walk(obj[key], fn)
        return obj
    if isinstance(obj, list):
        return [_walk(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, fn) for v in obj)
    return obj


def set_data_root(cfg: Config, root: str) -> None:
    """Point every config string that starts with the config's ``data_root`` at ``root`` instead."""
    old = cfg.get("data_root")
    if not isinstance(old, str) or not old:
        raise ValueError("--data-root: the config has no top-level data_root string")
    new = root.rstrip("/") + "/" if old.endswith("/") else root.rstrip("/")
    replace = lambda s: new + s[len(old):] if s.startswith(old) else s  # noqa: E731
    for key in list(cfg.keys()):
        if key != "data_root":
            cfg[key] = _walk(cfg[key], replace)
    cfg.data_root = new


def _inside(path: str, directory: str) -> bool:
    path, directory = osp.realpath(path), osp.realpath(directory)
    return osp.commonpath([path, directory]) == directory


def pretrained_checkpoints(cfg: Config) -> Iterator[str]:
    """Local ``checkpoint`` entries of every ``init_cfg=dict(type='Pretrained', ...)`` under ``cfg.model``."""
    def visit(obj: Any) -> Iterator[str]:
        if isinstance(obj, dict):
            init = obj.get("init_cfg")
            for item in (init if isinstance(init, list) else [init]):
                if isinstance(item, dict) and item.get("type") == "Pretrained" and item.get("checkpoint"):
                    yield str(item["checkpoint"])
            for value in obj.values():
                yield from visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                yield from visit(value)
    yield from visit(cfg.get("model", ConfigDict()))


def trust_checkpoints(cfg: Config, trust: bool, runner_files: list[str], other_files: list[str] = ()) -> list[str]:
    """Allow-list checkpoints for full unpickling; returns the trusted ones.

    With ``trust`` (``--trust-checkpoint``) every given file is trusted. Without it only ``runner_files`` (resume /
    test checkpoints) that lie inside ``cfg.work_dir`` are, as files this project's runner wrote there.
    """
    trusted = [p for p in runner_files if p and (trust or _inside(p, cfg.work_dir))]
    trusted += [p for p in other_files if p and trust]
    for p in trusted:
        trust_checkpoint(p)
    return trusted


def resolve_resume(cfg: Config, resume: str | None) -> None:
    """``--resume`` (``auto``: latest checkpoint of the work dir, as mmengine finds it) -> ``cfg.load_from``."""
    if resume is None:
        return
    cfg.resume = True
    if resume == "auto":
        from mmengine.runner import find_latest_checkpoint

        cfg.load_from = find_latest_checkpoint(cfg.work_dir) if osp.isdir(cfg.work_dir) else None
    else:
        cfg.load_from = resume


def set_amp(cfg: Config, amp: str) -> None:
    """``--amp fp16|bf16``: mmengine's ``AmpOptimWrapper`` (autocast + dynamic loss scaling for fp16)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--amp needs a CUDA device (mmengine's AmpOptimWrapper refuses to run on CPU)")
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.dtype = AMP_DTYPES[amp]
    if amp == "fp16":
        cfg.optim_wrapper.loss_scale = "dynamic"
