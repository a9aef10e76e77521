"""The dense harness command line: ``python -m det.cli train|test CONFIG ...`` (``tools/train.py`` and
``tools/test.py`` are shims over it).

    python -m det.cli train CONFIG [--backbone FILE] [--work-dir DIR] [--resume [CKPT]] [--amp [fp16|bf16]]
        [--auto-scale-lr] [--data-root DIR] [--trust-checkpoint] [--allow-partial] [--skip-invalid]
        [--cfg-options k=v ...] [--launcher ...]
    python -m det.cli test CONFIG CHECKPOINT [--backbone FILE] [--metrics-json FILE] [same common options]

Both serve MMDetection and MMSegmentation configs: the toolkit is read from the config's ``default_scope``
(``mmdet`` / ``mmseg``, set by the toolkits' ``default_runtime.py``). ``--backbone FILE`` shapes the config from the
file's description (:func:`apply_backbone`), so one config serves every ViT size. Multi-GPU:
``python -m torch.distributed.run --nproc_per_node=N -m det.cli train CONFIG --launcher pytorch ...``.

Failure behaviour (before the runner starts, so nothing is written and earlier results stay as they are):

* checkpoints are trusted by content, never by location: tensors-only files and mmengine runner checkpoints load
  weights-only from anywhere (:mod:`ibot.compat.mmengine`); a file pickling anything else is refused naming the
  file and ``--trust-checkpoint`` (which trusts exactly the files this run names);
* the data is validated (:mod:`det.validate`): invalid annotations / label maps are an error naming the file, kind,
  count and ids, unless ``--skip-invalid`` drops them (counts logged);
* a test / load_from / resume checkpoint that leaves any model tensor missing or mis-shaped (or matches nothing) is
  an error listing the keys, unless ``--allow-partial`` (or ``load_strict = False`` in the config).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import os.path as osp
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

from mmengine.config import Config, ConfigDict, DictAction

from ibot.checkpoint import CheckpointError, CheckpointFormatError, StateDictMismatchError, read_backbone
from ibot.compat.mmengine import check_checkpoint, runner_safe_globals, trust_checkpoint
from ibot.compat.mmengine import install as install_checkpoint_policy
from ibot.records import schema_tag, write_record
from ibot.vit import ARCHS

from .checkpoint import resolve_checkpoint
from .validate import DataValidationError, validate_data

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
                        "names: --backbone, the backbone init_cfg checkpoint, load_from / --resume, the test "
                        "CHECKPOINT. Only for files you trust (it executes pickled code). Not needed for tensors-only "
                        "files and mmengine runner checkpoints (epoch_N.pth / iter_N.pth), which load weights-only "
                        "from any directory; where a file lies never makes it trusted")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a test / load_from / resume checkpoint even when model tensors are missing or "
                        "mis-shaped (they keep their random / init values; what loaded is logged). Without it "
                        "(and without load_strict = False in the config) that is an error listing the keys")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="drop invalid annotations / images found by the data validation (unknown category, "
                        "empty or out-of-image box, polygon of < 3 points, label above the class count, label map "
                        "of another size than its image, ...) instead of stopping; the counts are logged and "
                        "cleaned copies are written under WORK_DIR/validated/")
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


def trust_checkpoints(trust: bool, files: Sequence[str]) -> list[str]:
    """Allow-list ``files`` for full unpickling when ``trust`` (``--trust-checkpoint``); returns the trusted ones.

    Trust is per named file and only by the flag: no directory (the work dir included) makes a file trusted.
    Runner checkpoints need no trust (:func:`ibot.compat.mmengine.load_checkpoint_file` reads them weights-only).
    """
    trusted = [p for p in files if p and trust]
    for p in trusted:
        trust_checkpoint(p)
    return trusted


def preflight_checkpoints(files: Sequence[str], *, what: str = "checkpoint") -> None:
    """Refuse, before anything is built, a named checkpoint that does not exist or would need trust
    (:func:`ibot.compat.mmengine.check_checkpoint`; URLs are checked when downloaded)."""
    for path in files:
        if not path or "://" in str(path):
            continue
        if not osp.isfile(osp.expanduser(path)):
            raise SystemExit(f"{what} {path!r} does not exist")
        check_checkpoint(path)


def resolve_resume(cfg: Config, resume: str | None) -> None:
    """``--resume`` (``auto``: latest checkpoint of the work dir, as mmengine finds it) -> ``cfg.load_from``."""
    if resume is None:
        return
    cfg.resume = True
    if resume == "auto":
        from mmengine.runner import find_latest_checkpoint

        latest = find_latest_checkpoint(cfg.work_dir) if osp.isdir(cfg.work_dir) else None
        if latest == "":  # an interrupted write of last_checkpoint: do not silently start from scratch
            raise SystemExit(f"--resume: {osp.join(cfg.work_dir, 'last_checkpoint')} is empty (an interrupted run?); "
                             "pass --resume CKPT with the checkpoint to resume from")
        if latest and not osp.isfile(latest):
            raise SystemExit(f"--resume: {osp.join(cfg.work_dir, 'last_checkpoint')} names {latest!r}, which does "
                             "not exist; pass --resume CKPT with the checkpoint to resume from")
        cfg.load_from = latest
    else:
        cfg.load_from = resume


# -------------------------------------------------------------------------------------------- partial loads
class PartialCheckpointError(CheckpointError):
    """A checkpoint leaves model tensors missing or mis-shaped (or matches nothing) and partial loads were not
    allowed. ``missing``, ``unexpected``, ``mismatched``: the keys."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


def _group(keys: Sequence[str], limit: int = 8) -> str:
    """``backbone.vit.* (150), neck.* (8), conv1.weight``: keys grouped by module (at most two levels deep)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        groups.setdefault(".".join(parts[:max(1, min(2, len(parts) - 1))]), []).append(key)
    items = [ks[0] if len(ks) == 1 else f"{p}.* ({len(ks)})" for p, ks in groups.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more groups)" if len(items) > limit else "")


def compare_state_dict(model: Any, state_dict: Mapping[str, Any]) -> tuple[list[str], list[str], list[str], int]:
    """(missing, unexpected, mis-shaped keys, number of model tensors that load) of ``state_dict`` into ``model``
    (BatchNorm's ``num_batches_tracked`` is not required, as in mmengine)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and hasattr(state_dict[k], "shape")
                  and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    matched = sum(1 for k in own if k in state_dict and k not in mismatched)
    return missing, unexpected, mismatched, matched


def partial_load_allowed(cfg: Config, allow_partial: bool) -> bool:
    """``--allow-partial`` or ``load_strict = False`` in the config."""
    return bool(allow_partial) or cfg.get("load_strict", True) is False


def install_load_policy(runner: Any, allow_partial: bool) -> None:
    """Make ``runner.load_checkpoint`` (mmengine's path for ``load_from`` and resume) refuse a checkpoint that
    leaves any model tensor missing or mis-shaped, or matches nothing, unless ``allow_partial``; in every case log
    how many model tensors loaded from which file."""
    import re

    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

    def load_checkpoint(filename: str, map_location: Any = "cpu", strict: bool = False,
                        revise_keys: Sequence[tuple[str, str]] = ((r"^module.", ""),)) -> dict:
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        runner.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else {}
        for pattern, repl in revise_keys:
            state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
        missing, unexpected, mismatched, matched = compare_state_dict(model, state_dict)
        total = matched + len(missing) + len(mismatched)
        report = (f"'{filename}' into {type(model).__name__}: {matched} of {total} model tensors load; "
                  f"{len(missing)} missing, {len(mismatched)} mis-shaped, {len(unexpected)} unexpected keys")
        details = "".join(f"\n  {name} ({len(keys)}): {_group(keys)}" for name, keys in
                          (("missing", missing), ("mis-shaped", mismatched), ("unexpected", unexpected)) if keys)
        if (missing or mismatched or not matched) and not allow_partial:
            raise PartialCheckpointError(
                f"Refusing a partial load of checkpoint {report}{details}\nThe model would run with random "
                "weights where tensors are missing. Fix: give the checkpoint of this config (same --backbone / "
                "--cfg-options as when it was written), or pass --allow-partial (config: load_strict = False) to "
                "load what matches.", missing, unexpected, mismatched)
        _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=list(revise_keys))
        runner._has_loaded = True
        level = logging.WARNING if (missing or mismatched or unexpected) else logging.INFO
        runner.logger.log(level, f"loaded checkpoint {report}{details}")
        return checkpoint

    runner.load_checkpoint = load_checkpoint


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
    with runner_safe_globals():  # a det / seg runner checkpoint of this backbone is a backbone file too
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
        "runner and tensors-only files load weights-only from any directory; a file that pickles anything else is "
        "refused unless --trust-checkpoint. A checkpoint that leaves model tensors missing is refused unless "
        "--allow-partial; invalid test data is refused unless --skip-invalid.")
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
    load_from = cfg.get("load_from") or ""
    init_files = list(pretrained_checkpoints(cfg))
    trust_checkpoints(args.trust_checkpoint, [load_from, *init_files])
    init_files = [p for p in init_files if osp.isfile(osp.expanduser(p))]  # a missing one: the backbone says so
    preflight_checkpoints([load_from], what="--resume / load_from checkpoint")
    preflight_checkpoints(init_files, what="backbone init checkpoint")
    validate_data(cfg, "train", skip_invalid=args.skip_invalid)
    runner = _build_runner(cfg)
    install_load_policy(runner, partial_load_allowed(cfg, args.allow_partial))
    runner.train()


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
    trust_checkpoints(args.trust_checkpoint, [args.checkpoint])
    preflight_checkpoints([args.checkpoint])
    validate_data(cfg, "test", skip_invalid=args.skip_invalid)
    runner = _build_runner(cfg)
    install_load_policy(runner, partial_load_allowed(cfg, args.allow_partial))
    metrics = runner.test()
    if args.metrics_json and is_main_process():
        write_record(args.metrics_json, {k: _plain(v) for k, v in metrics.items()}, schema=METRICS_SCHEMA)
    return metrics


#: Errors about the user's input (files, data, flags) that the command lines report as one message, exit status 1.
INPUT_ERRORS = (CheckpointError, CheckpointFormatError, StateDictMismatchError, DataValidationError)


def _reporting_errors(command: Any) -> Any:
    """``command`` with :data:`INPUT_ERRORS` turned into ``SystemExit('error: ...')`` (no stack trace)."""
    @functools.wraps(command)
    def run(argv: list[str] | None = None) -> Any:
        try:
            return command(argv)
        except INPUT_ERRORS as exc:
            raise SystemExit(f"error: {exc}") from exc
    return run


#: The command-line entry points (``tools/train.py``, ``tools/test.py``, ``python -m det.cli``).
cli_train = _reporting_errors(main_train)
cli_test = _reporting_errors(main_test)
COMMANDS = {"train": cli_train, "test": cli_test}


def main(argv: list[str] | None = None) -> Any:
    """``python -m det.cli {train,test} ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m det.cli {{{','.join(COMMANDS)}}} CONFIG ... (-h for a command's options)")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
