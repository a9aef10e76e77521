"""Command line of the three protocols: ``python -m transfer.cli knn|linear|finetune ARGS...`` (the module entry
point the suite launches), or the thin shims ``tools/transfer_{knn,linear,finetune}.py ARGS...``.

Common options map onto config keys; anything else is set with ``--set key=value`` (dotted keys of the
resolved config, printed by ``--print-config``). Under ``torchrun`` every process runs the same command
(``torchrun --nproc_per_node 8 -m transfer.cli linear ...``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from transfer.recipes import DATASET_NAMES, PROTOCOLS, parse_overrides, resolve

__all__ = ["build_parser", "config_from_args", "main", "module_main"]

DESCRIPTIONS = {
    "finetune": "Fine-tune a pretrained ViT end to end (DeiT recipe as in the iBOT paper).",
    "knn": "Weighted k-NN (cosine, exp(sim/T) votes) on frozen [CLS] features.",
    "linear": "Linear probing: a sweep of learning rates trained together on frozen features.",
}

#: option -> config key, for the options every protocol has
COMMON_OPTIONS = {
    "data_root": "data.root", "layout": "data.layout", "arch": "model.arch", "patch_size": "model.patch_size",
    "img_size": "model.img_size", "pretrained": "model.pretrained", "checkpoint_key": "model.checkpoint_key",
    "model_name": "model.name", "pretrain_data": "model.pretrain_data", "seed": "seed", "output_dir": "output_dir",
    "device": "device", "num_workers": "num_workers", "batch_size": "batch_size", "num_heads": "model.num_heads",
    "train_split": "data.train_split", "test_split": "data.test_split", "tag": "data.tag",
}


def build_parser(protocol: str) -> argparse.ArgumentParser:
    """The options of one protocol's command line."""
    p = argparse.ArgumentParser(
        description=DESCRIPTIONS[protocol],
        epilog="Example: --dataset cifar10 --data-root /data/cifar --pretrained ibot_vits16.pth "
               "--set optim.lr=1e-5 epochs=100. Multi-GPU: torchrun --nproc_per_node 8 -m transfer.cli "
               f"{protocol} ...")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--data-root", help="folder holding the data set in its published layout")
    p.add_argument("--layout", help="force a layout: pickle | imagefolder (CIFAR), devkit | annos | imagefolder (Cars)")
    p.add_argument("--train-split", help="ImageFolder: the training folder under --data-root (data.train_split, "
                                         "default train)")
    p.add_argument("--test-split", help="ImageFolder: the folder evaluated (data.test_split, default test; without "
                                        "test/, the val/ or validation/ folder that exists)")
    p.add_argument("--tag", help="leaderboard column of the data set (data.tag; default: the data set name, or the "
                                 "--data-root folder name for --dataset imagefolder)")
    p.add_argument("--arch", help="vit_tiny | vit_small | vit_base | vit_large: overrides the checkpoint's "
                                  "description (default: the checkpoint's; vit_small without --pretrained)")
    p.add_argument("--patch-size", type=int,
                   help="overrides the checkpoint's description (default: the checkpoint's; 16 without --pretrained)")
    p.add_argument("--num-heads", type=int, help="head count of a non-standard ViT whose checkpoint does not say it "
                                                 "(default: the checkpoint's description)")
    p.add_argument("--img-size", type=int, help="input resolution (default 224)")
    p.add_argument("--pretrained", help="backbone checkpoint (any format ibot.checkpoint reads); omit = random init")
    p.add_argument("--checkpoint-key", help="entry holding the weights, e.g. teacher (default: auto)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects in the checkpoint (official full checkpoints); runs code from the file")
    p.add_argument("--model-name", help="row name in the leaderboard")
    p.add_argument("--pretrain-data", help="pretraining data for the leaderboard, e.g. IN-1k")
    p.add_argument("--batch-size", type=int, help="per process")
    if protocol in ("finetune", "linear"):
        p.add_argument("--epochs", type=int)
    if protocol == "finetune":
        p.add_argument("--lr", type=float, help="base lr per 512 images (optim.lr)")
        p.add_argument("--layer-decay", type=float, help="layer-wise lr decay, e.g. 0.75 (default off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-dir", "--work-dir", dest="output_dir",
                   help="run folder (default work_dirs/transfer/<protocol>/<dataset>/<model>/seed<seed>)")
    p.add_argument("--device", help="cuda | cpu | auto")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    amp.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--set", "--cfg-options", dest="set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. optim.lr=1e-5 aug.mixup=0 (see --print-config)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def config_from_args(protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    """Options first, then ``--set`` on top; every value is checked against the resolved default config (its key
    must exist, its type must match) and the result by :func:`transfer.recipes.validate` — before anything runs."""
    overrides: dict[str, Any] = {}
    for opt, key in COMMON_OPTIONS.items():
        if getattr(args, opt) is not None:
            _deep_update(overrides, _nested(key, getattr(args, opt)))
    if args.trust_checkpoint:
        overrides.setdefault("model", {})["trust_checkpoint"] = True
    if args.amp is not None:
        overrides["amp"] = args.amp
    if args.no_progress:
        overrides["progress"] = False
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = args.epochs
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("optim", {})["lr"] = args.lr
    if getattr(args, "layer_decay", None) is not None:
        overrides.setdefault("optim", {})["layer_decay"] = args.layer_decay
    reference = resolve(protocol, args.dataset)  # the defaults: what --set keys and value types are checked against
    _deep_update(overrides, parse_overrides(args.set, reference))
    return resolve(protocol, args.dataset, overrides)


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``'model.arch', 'vit_base'`` -> ``{'model': {'arch': 'vit_base'}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _deep_update(base: dict[str, Any], delta: dict[str, Any]) -> None:
    """Recursive in-place update of nested dicts (a leaf of ``delta`` replaces the whole value)."""
    for k, v in delta.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def main(protocol: str, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Parse, resolve, run; returns the result record (``None`` for ``--print-config``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    args = build_parser(protocol).parse_args(argv)
    cfg = config_from_args(protocol, args)
    if args.print_config:
        print(json.dumps(cfg, indent=2))
        return None
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transfer import finetune, knn, linear
    from transfer.datasets import SplitNotFoundError

    try:
        return {"finetune": finetune, "knn": knn, "linear": linear}[protocol].run(cfg)
    except SplitNotFoundError as exc:  # a plain user error: one line, no traceback
        raise SystemExit(f"transfer.cli {protocol}: error: {exc}") from None


def module_main(argv: Sequence[str]) -> dict[str, Any] | None:
    """``python -m transfer.cli <protocol> ARGS...``: the protocol is the first argument."""
    if not argv or argv[0] not in PROTOCOLS:
        raise SystemExit(f"usage: python -m transfer.cli {{{','.join(PROTOCOLS)}}} ARGS... (--help after the "
                         f"protocol lists its options); got {list(argv[:1])}")
    return main(argv[0], argv[1:])


if __name__ == "__main__":
    module_main(sys.argv[1:])
