"""The dense harness command line: ``python -m det.cli train|test CONFIG ...`` (``tools/train.py`` and
``tools/test.py`` are shims over it).

    python -m det.cli train CONFIG [--backbone FILE] [--work-dir DIR] [--resume [CKPT]] [--amp [fp16|bf16]]
        [--auto-scale-lr] [--data-root DIR] [--trust-checkpoint] [--cfg-options k=v ...] [--launcher ...]
    python -m det.cli test CONFIG CHECKPOINT [--backbone FILE] [--metrics-json FILE] [same common options]

Both serve MMDetection and MMSegmentation configs: the toolkit is read from the config's ``default_scope``
(``mmdet`` / ``mmseg``, set by the toolkits' ``default_runtime.py``). ``--backbone FILE`` shapes the config from the
file's description (:func:`apply_backbone`), so one config serves every ViT size. Multi-GPU:
``python -m torch.distributed.run --nproc_per_node=N -m det.cli train CONFIG --launcher pytorch ...``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

from mmengine.config import Config, ConfigDict, DictAction

from ibot.checkpoint import read_backbone
from ibot.compat.mmengine import install as install_checkpoint_policy
from ibot.compat.mmengine import trust_checkpoint
from ibot.records import schema_tag, write_record
from ibot.vit import ARCHS

from .checkpoint import resolve_checkpoint

TOOLKITS = ("mmdet", "mmseg")
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
#: Schema tag of ``--metrics-json`` files (the ``ibot.records`` convention).
METRICS_SCHEMA = schema_tag("dense-metrics", 1)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", metavar="FILE",
                        help="pretrained backbone (any format ibot.checkpoint reads; self-describing files from "
                        "pretraining or tools/convert_checkpoint.py need no guessing): sets the backbone's shape "
                        "(arch, patch size, width, depth, heads) and the input widths of the neck / heads from it; "
                        "for train also the init checkpoint. --cfg-options still override")
    parser.add_argument("--work-dir", help="directory for logs and checkpoints "
                        "(default: ./work_dirs/<config name>)")
    parser.add_argument("--data-root", help="replace the config's data_root (every path under it: dataset roots, "
                        "annotation files of the evaluators)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling (torch.load(weights_only=False)) of the checkpoints this run "
                        "reads: --backbone, the backbone init_cfg checkpoint, load_from / --resume, the test "
                        "CHECKPOINT. Only for files you trust (it executes pickled code). Checkpoints inside the "
                        "work dir, written by the runner, are trusted without it")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override config entries, key=value (e.g. train_cfg.max_iters=10, "
                        "model.backbone.init_cfg.checkpoint=PATH, 'key=[a,b]')")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (set by dist_*.sh / slurm_*.sh)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace, init_backbone: bool = True) -> Config:
    """Config with ``--backbone`` and the command-line overrides applied (in that order), work dir and launcher
    set, checkpoint policy installed. ``init_backbone``: ``--backbone`` also sets the init checkpoint (train)."""
    install_checkpoint_policy()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not osp.isfile(args.config):
        raise SystemExit(f"config file {args.config!r} does not exist (det/configs/*.py or seg/configs/*.py)")
    cfg = Config.fromfile(args.config)
    toolkit_of(cfg)
    cfg.launcher = args.launcher
    if args.backbone:
        apply_backbone(cfg, args.backbone, trusted=args.trust_checkpoint, init=init_backbone)
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


# ------------------------------------------------------------------------------------------- backbone shape
def _width_like(current: Any, dim: int) -> int | list[int]:
    """``dim`` in the form of a config's ``in_channels``: one int, or one per feature map (a list)."""
    return [dim] * len(current) if isinstance(current, Sequence) and not isinstance(current, str) else dim


def _config_depth(backbone: Mapping[str, Any]) -> int | None:
    """The depth a config's backbone has before reshaping (explicit, else its arch preset's)."""
    if backbone.get("depth") is not None:
        return int(backbone["depth"])
    return ARCHS.get(backbone.get("arch") or "", {}).get("depth")


def backbone_shape_options(cfg: Config, model: Mapping[str, Any]) -> dict[str, Any]:
    """``--cfg-options``-style entries that give ``cfg`` the backbone ``model`` (a backbone description,
    :data:`ibot.checkpoint.BACKBONE_MODEL_KEYS`) and the matching input widths of the modules that read it.

    Every feature map of :class:`~det.backbone.iBOTViTBackbone` has ``embed_dim`` channels, so: det, the neck's
    ``in_channels``; seg, the decode head's and the auxiliary head's (when there is one). A head without
    convolutions (the linear probe: ``FCNHead`` with ``num_convs=0``) maps its concatenated input straight to the
    classes, so its ``channels`` follow. A fully frozen backbone (``frozen_stages`` >= the config's depth, the
    linear probe) stays fully frozen at the new depth.
    """
    dim, m = int(model["embed_dim"]), cfg.model
    opts: dict[str, Any] = {f"model.backbone.{k}": model[k] for k in ("arch", "patch_size", "embed_dim", "depth",
                                                                         "num_heads")}
    depth = _config_depth(m.backbone)
    if depth is not None and m.backbone.get("frozen_stages", -1) >= depth:
        opts["model.backbone.frozen_stages"] = int(model["depth"])
    if toolkit_of(cfg) == "mmdet":
        opts["model.neck.in_channels"] = _width_like(m.neck.in_channels, dim)
        return opts
    head = m.decode_head
    opts["model.decode_head.in_channels"] = _width_like(head.in_channels, dim)
    if head.get("type") == "FCNHead" and head.get("num_convs") == 0:
        width = opts["model.decode_head.in_channels"]
        opts["model.decode_head.channels"] = sum(width) if isinstance(width, list) else width
    if m.get("auxiliary_head"):
        opts["model.auxiliary_head.in_channels"] = _width_like(m.auxiliary_head.in_channels, dim)
    return opts


def apply_backbone(cfg: Config, path: str, *, trusted: bool = False, init: bool = True) -> dict[str, Any]:
    """Shape ``cfg`` for the backbone in ``path`` (a file or URL) and return the applied options.

    The file's description is read without building a model (:func:`ibot.checkpoint.read_backbone`: from the file
    itself when it is self-describing, else inferred from its tensor shapes); :func:`backbone_shape_options` sets
    the backbone and the widths of the modules reading it, and with ``init`` the backbone's init checkpoint is the
    file. Call it before ``--cfg-options`` are merged, so that explicit options win.
    """
    local, allowed = resolve_checkpoint(path)
    found = read_backbone(local, trusted=trusted or allowed)
    if found.model.get("num_heads") is None:
        raise SystemExit(f"--backbone {path}: the head count of this ViT (width {found.model['embed_dim']}) is not "
                         "stored in its weights; convert it once with tools/convert_checkpoint.py --num-heads H "
                         "(a self-describing file), or pass --cfg-options model.backbone.num_heads=H")
    opts = backbone_shape_options(cfg, found.model)
    if init:
        opts["model.backbone.init_cfg.checkpoint"] = path
    cfg.merge_from_dict(opts)
    return opts


# ---------------------------------------------------------------------------------------------- commands
def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m det.cli train",
                                     description="Train an MMDetection 3 or MMSegmentation 1 model from a config.")
    parser.add_argument("config", help="config file (det/configs/... or seg/configs/...)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="resume from CKPT, or without a value from the latest checkpoint in the work dir")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="automatic mixed precision (default fp16, as the paper's apex O1; bf16 on Ampere+)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the lr by total batch / auto_scale_lr.base_batch_size")
    add_common_args(parser)
    return parser


def _test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m det.cli test",
        description="Evaluate an MMDetection 3 or MMSegmentation 1 checkpoint. Checkpoints written by mmengine's "
        "runner pickle a HistoryBuffer and load only when trusted: pass --trust-checkpoint, or keep them inside the "
        "work dir. Tensors-only files need no trust.")
    parser.add_argument("config", help="config file (det/configs/... or seg/configs/...)")
    parser.add_argument("checkpoint", help="checkpoint to evaluate")
    parser.add_argument("--metrics-json", help=f"also write the metrics (rank 0) to this JSON record "
                        f"(schema {METRICS_SCHEMA!r})")
    add_common_args(parser)
    return parser


def _build_runner(cfg: Config) -> Any:
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def main_train(argv: list[str] | None = None) -> None:
    """``python -m det.cli train ...`` (and ``tools/train.py``)."""
    args = _train_parser().parse_args(argv)
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
    _build_runner(cfg).train()


def _plain(value: Any) -> float | str:
    """JSON-friendly metric value (mmdet / mmseg return numpy scalars)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def main_test(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m det.cli test ...`` (and ``tools/test.py``); returns the metrics."""
    from mmengine.dist import is_main_process

    args = _test_parser().parse_args(argv)
    cfg = load_config(args, init_backbone=False)  # the tested checkpoint holds every weight
    cfg.load_from = args.checkpoint
    cfg.resume = False
    trust_checkpoints(cfg, args.trust_checkpoint, [args.checkpoint])
    metrics = _build_runner(cfg).test()
    if args.metrics_json and is_main_process():
        write_record(args.metrics_json, {k: _plain(v) for k, v in metrics.items()}, schema=METRICS_SCHEMA)
    return metrics


COMMANDS = {"train": main_train, "test": main_test}


def main(argv: list[str] | None = None) -> Any:
    """``python -m det.cli {train,test} ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m det.cli {{{','.join(COMMANDS)}}} CONFIG ... (-h for a command's options)")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
