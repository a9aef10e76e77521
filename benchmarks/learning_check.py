"""Learning check of iBOT pretraining: k-NN (k=20, T=0.07) of the pretrained teacher vs the same ViT at random
initialisation on a held-out split, after a short pretraining run.

Splits an ImageFolder (default: the CIFAR-10 test images in ../shared/data) class-balanced into a pretraining /
k-NN-memory part and a held-out part, pretrains with ``pretrain/configs/ibot_vit-s4_cifar10-check.py`` (the
real engine), then runs the weighted k-NN of the transfer harness with both backbones and prints a table.

    python benchmarks/learning_check.py --epochs 60                 # one H100: the pretraining issue's check
    python benchmarks/learning_check.py --tiny                      # CPU smoke run of the script (seconds)

Writes the record ``<work-dir>/learning_check.json`` (schema ``ibot-suite/learning-check/1``); record the result
with the machine and command in RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from torch import nn  # noqa: E402

from ibot.checkpoint import build_backbone, load_backbone  # noqa: E402
from ibot.records import schema_tag, write_record  # noqa: E402
from pretrain.engine import TEACHER_BACKBONE, train  # noqa: E402
from pretrain.knn_monitor import KNNMonitor  # noqa: E402
from transfer.subset import make_imagefolder_subset  # noqa: E402

CONFIG = os.path.join(ROOT, "pretrain", "configs", "ibot_vit-s4_cifar10-check.py")
#: Schema tag of ``learning_check.json`` (the ``ibot.records`` convention).
SCHEMA = schema_tag("learning-check", 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10", "test"),
                   help="ImageFolder <data>/<class>/<image>")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "work_dirs", "learning_check"))
    p.add_argument("--train-per-class", type=int, default=900)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, help="pretraining epochs (default: the config's)")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--tiny", action="store_true", help="toy model, few images and iterations (CPU smoke run)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, root: str) -> Config:
    cfg = Config.fromfile(CONFIG)
    cfg.data.root = os.path.join(root, "train")
    if args.tiny:
        cfg.model.arch, cfg.model.vit_overrides = "vit_tiny", dict(embed_dim=64, depth=2, num_heads=2)
        cfg.model.out_dim = cfg.model.patch_out_dim = 64
        cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim = 64, 32
        cfg.augmentation.local_crops_number = 2
        cfg.data.batch_size_per_gpu, cfg.data.num_workers = 16, 0
        cfg.train.epochs, cfg.optim.warmup_epochs, cfg.log.interval = 1, 0, 1
    if args.epochs:
        cfg.train.epochs = args.epochs
    for kv in args.cfg_options:
        key, value = kv.split("=", 1)
        cfg.merge_from_dict({key: json.loads(value) if value[:1] in "[{0123456789-" or value in
                             ("true", "false", "null") else value})
    return cfg


def knn_top1(cfg: Config, root: str, vit: nn.Module, device: torch.device) -> float:
    """Weighted k-NN top-1 (%) of ``vit``'s [CLS] features: memory ``root/train``, queries ``root/test``."""
    monitor = KNNMonitor(root, cfg.model.img_size, train_split="train", val_split="test", k=20, temperature=0.07,
                         batch_size=256, num_workers=cfg.data.num_workers)
    return float(monitor(vit.to(device), device))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        args.train_per_class, args.test_per_class = min(args.train_per_class, 20), min(args.test_per_class, 5)
    os.makedirs(args.work_dir, exist_ok=True)
    split = os.path.join(args.work_dir, "split")
    if not os.path.isdir(split):
        make_imagefolder_subset(args.data, split, args.train_per_class, args.test_per_class, seed=0)
    cfg = build_config(args, split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    t0 = time.time()
    train(cfg, os.path.join(args.work_dir, "pretrain"), resume=False)
    minutes = (time.time() - t0) / 60
    pretrained, report = load_backbone(os.path.join(args.work_dir, "pretrain", TEACHER_BACKBONE))
    torch.manual_seed(cfg.train.seed)  # the baseline: a seeded random initialisation of the same ViT
    random_init = build_backbone(report.model)
    result = {
        "schema": SCHEMA, "data": os.path.abspath(args.data), "train_per_class": args.train_per_class,
        "test_per_class": args.test_per_class, "epochs": cfg.train.epochs, "pretrain_minutes": round(minutes, 2),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "knn_top1_pretrained": knn_top1(cfg, split, pretrained, device),
        "knn_top1_random_init": knn_top1(cfg, split, random_init, device),
        "backbone": report.to_dict(),
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
    }
    result["gain_points"] = round(result["knn_top1_pretrained"] - result["knn_top1_random_init"], 2)
    write_record(os.path.join(args.work_dir, "learning_check.json"), result, schema=SCHEMA)
    print("| backbone | k-NN top-1 (k=20, T=0.07) |\n|---|---|")
    print(f"| iBOT, {cfg.train.epochs} epochs ({minutes:.1f} min on {result['device']}) | "
          f"{result['knn_top1_pretrained']:.2f} |")
    print(f"| random initialisation | {result['knn_top1_random_init']:.2f} |")
    print(f"gain: {result['gain_points']:+.2f} points")
    return result


if __name__ == "__main__":
    main()
