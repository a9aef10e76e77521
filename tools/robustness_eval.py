#!/usr/bin/env python
"""Classification robustness of a backbone + linear head (or a timm / torchvision classifier).

Results go to one resumable JSON per model (``--out``): re-running skips finished (corruption, severity) cells;
``tools/robustness_report.py`` turns one or several of them into Markdown / HTML / JSON.

Examples::

    # iBOT ViT-S/16 teacher + linear head (iBOT's ViT-S probe: 4 last [CLS] tokens)
    M="--arch vit_small --patch-size 16 --backbone ibot_vits16.pth --checkpoint-key teacher \
       --head linear_vits16.pth --n-last-blocks 4 --avgpool 0 --out results/ibot_vits16.json --name iBOT-S/16"
    python tools/robustness_eval.py imagenet-c $M --released /data/ImageNet-C --clean-data /data/imagenet/val
    python tools/robustness_eval.py imagenet-c $M --data /data/imagenet/val --corruptions all   # on the fly
    python tools/robustness_eval.py occlusion  $M --data /data/imagenet/val --modes random salient non_salient
    python tools/robustness_eval.py backgrounds $M --released /data/bg_challenge
    python tools/robustness_eval.py ood $M --imagenet-a /data/imagenet-a --imagenet-r /data/imagenet-r
    # the AlexNet baseline for on-the-fly CE normalisation (report: --baseline results/alexnet.json)
    python tools/robustness_eval.py imagenet-c --torchvision alexnet --weights alexnet-owt-7be5be79.pth \
       --data /data/imagenet/val --out results/alexnet.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from robustness import backgrounds, imagenet_c, occlusion, ood  # noqa: E402
from robustness.classifier import (IMAGENET_MEAN, IMAGENET_STD, ImageClassifier,  # noqa: E402
                                   build_ibot_linear_classifier)
from robustness.data import ImageListDataset, list_image_folder  # noqa: E402
from robustness.engine import Cell, run_cells  # noqa: E402
from robustness.metrics import (ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS,  # noqa: E402
                                EXTRA_CORRUPTIONS)
from robustness.store import ResultStore  # noqa: E402

logger = logging.getLogger("robustness_eval")

#: Arguments that do not change results (left out of the stored group configuration).
#: Which cells to run (corruptions, modes, ...) is not part of it either: cells are stored one by one, so a later run
#: may add corruptions or modes to the same file.
_RUN_ONLY = {"out", "name", "batch_size", "workers", "device", "restart", "no_progress", "command", "cache_dir",
             "trust_checkpoint", "log_level", "threads", "corruptions", "severities", "modes", "levels", "variants",
             "imagenet_a", "imagenet_r", "imagenet_sketch"}


# ------------------------------------------------------------------------------------------------ model
def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (iBOT ViT + linear head by default)")
    g.add_argument("--arch", default="vit_small", help="vit_tiny / vit_small / vit_base / vit_large")
    g.add_argument("--patch-size", type=int, default=16)
    g.add_argument("--img-size", type=int, default=224, help="position-embedding size the backbone is built with")
    g.add_argument("--depth", type=int, default=None, help="override the arch's depth (toy models)")
    g.add_argument("--embed-dim", type=int, default=None, help="override the arch's width (toy models)")
    g.add_argument("--num-heads", type=int, default=None, help="override the arch's head count (toy models)")
    g.add_argument("--backbone", help="backbone checkpoint (any format ibot.checkpoint understands)")
    g.add_argument("--checkpoint-key", default=None, help="teacher / student / state_dict ... (default: auto)")
    g.add_argument("--head", help="linear-head checkpoint ({weight, bias}, eval_linear files, ...)")
    g.add_argument("--n-last-blocks", type=int, default=1)
    g.add_argument("--avgpool", type=int, default=0, choices=(0, 1, 2),
                   help="0: [CLS] of the last n blocks; 1: mean patch token; 2: both (iBOT ViT-B/L)")
    g.add_argument("--num-classes", type=int, default=None, help="random head with this many classes (tests only)")
    g.add_argument("--timm", metavar="MODEL", help="evaluate a timm model instead (with --weights)")
    g.add_argument("--torchvision", metavar="MODEL", help="evaluate a torchvision model instead (e.g. alexnet)")
    g.add_argument("--weights", help="state dict for --timm / --torchvision (strictly loaded)")
    g.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    g.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that pickle objects (executes code from the file: only for files you trust)")


def _file_id(path: str | None) -> str | None:
    if path is None:
        return None
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}"


def build_classifier(args: argparse.Namespace) -> ImageClassifier:
    from ibot.checkpoint import extract_backbone_state_dict, load_file, load_state_dict_report

    if args.timm or args.torchvision:
        if args.timm:
            import timm

            kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
            model = timm.create_model(args.timm, pretrained=False, **kw)
        else:
            import torchvision

            kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
            model = torchvision.models.get_model(args.torchvision, weights=None, **kw)
        if args.weights:
            ckpt = load_file(args.weights, trusted=args.trust_checkpoint)
            sd = extract_backbone_state_dict(ckpt, args.checkpoint_key)
            load_state_dict_report(model, sd, strict=True)
        else:
            logger.warning("no --weights: evaluating a randomly initialised model")
        return ImageClassifier(model.eval(), args.mean, args.std)
    model = build_ibot_linear_classifier(
        args.arch, args.patch_size, args.backbone, args.head, num_classes=args.num_classes,
        n_last_blocks=args.n_last_blocks, avgpool=args.avgpool, img_size=args.img_size,
        checkpoint_key=args.checkpoint_key, trusted=args.trust_checkpoint, depth=args.depth,
        embed_dim=args.embed_dim, num_heads=args.num_heads)
    return ImageClassifier(model, args.mean, args.std, patch_size=args.patch_size)


# ------------------------------------------------------------------------------------------------ benchmarks
def _corruption_list(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n == "benchmark":
            out += BENCHMARK_CORRUPTIONS
        elif n == "extra":
            out += EXTRA_CORRUPTIONS
        elif n == "all":
            out += ALL_CORRUPTIONS
        elif n in CORRUPTION_GROUPS:
            out += CORRUPTION_GROUPS[n]
        elif n in ALL_CORRUPTIONS:
            out.append(n)
        else:
            raise SystemExit(f"unknown corruption or group {n!r}; names: {list(ALL_CORRUPTIONS)}, groups: "
                             f"benchmark, extra, all, {', '.join(CORRUPTION_GROUPS)}")
    return list(dict.fromkeys(out))


def _subset(images, args):
    return images.subset(per_class=args.per_class, limit=args.limit)


def _labels(path: str | None) -> dict[str, int] | None:
    if path is None:
        return None
    with open(path) as f:
        return {str(k): int(v) for k, v in json.load(f).items()}


def cells_imagenet_c(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    corruptions = _corruption_list(args.corruptions)
    if args.released:
        cells = imagenet_c.released_cells(args.released, args.clean_data, corruptions, args.severities,
                                          crop=args.crop, clean_resize=args.resize, label_space=args.label_space)
        if args.per_class or args.limit:
            raise SystemExit("--per-class / --limit apply to on-the-fly evaluation only")
        return imagenet_c.GROUP, cells
    if not args.data:
        raise SystemExit("imagenet-c needs --released ROOT or --data IMAGE_FOLDER")
    images = _subset(list_image_folder(args.data, args.label_space), args)
    return imagenet_c.GROUP, imagenet_c.on_the_fly_cells(
        images, corruptions, args.severities, resize=args.resize, crop=args.crop, seed=args.seed,
        jpeg_quality=args.jpeg_quality, cache_dir=args.cache_dir)


def cells_occlusion(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    if args.images:
        samples = backgrounds.read_image_mask_folder(args.images, args.masks, _labels(args.labels))
        data = backgrounds.ForegroundImages(samples[: args.limit] if args.limit else samples, args.resize, args.crop)
    elif args.data:
        data = ImageListDataset(_subset(list_image_folder(args.data, args.label_space), args), args.resize, args.crop)
    else:
        raise SystemExit("occlusion needs --data IMAGE_FOLDER or --images DIR --masks DIR")
    return occlusion.GROUP, occlusion.cells(data, args.modes, args.levels, grid=tuple(args.grid), fill=args.fill,
                                            seed=args.seed, head=args.head_index, threshold=args.threshold)


def cells_backgrounds(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    if args.released:
        return backgrounds.GROUP, backgrounds.released_cells(args.released, args.variants, crop=args.crop)
    if args.in9_masks:
        base = backgrounds.ForegroundImages(backgrounds.read_in9_foregrounds(args.in9_masks), None, args.crop)
        predict: Callable = backgrounds.in9_predict
    elif args.images:
        samples = backgrounds.read_image_mask_folder(args.images, args.masks, _labels(args.labels))
        base = backgrounds.ForegroundImages(samples[: args.limit] if args.limit else samples, args.resize, args.crop)
        predict = backgrounds.in9_predict if args.in9_labels else (lambda logits: logits.argmax(dim=1))
    else:
        raise SystemExit("backgrounds needs --released IN9_ROOT, --in9-masks IN9_ROOT or --images DIR --masks DIR")
    return backgrounds.GROUP, backgrounds.variant_cells(base, args.variants, seed=args.seed, predict=predict)


def cells_ood(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    roots = {k: v for k, v in (("imagenet_a", args.imagenet_a), ("imagenet_r", args.imagenet_r),
                               ("imagenet_sketch", args.imagenet_sketch)) if v}
    if not roots:
        raise SystemExit("ood needs at least one of --imagenet-a / --imagenet-r / --imagenet-sketch")
    return ood.GROUP, ood.cells(roots, resize=args.resize, crop=args.crop)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _model_args(common)
    g = common.add_argument_group("run")
    g.add_argument("--out", required=True, help="result JSON (created or resumed)")
    g.add_argument("--name", help="model name in reports (default: the result file's stem)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=4, help="data-loader workers (corruptions run there)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resize", type=int, default=256, help="Resize (shorter side) before the crop; 0 = none")
    g.add_argument("--crop", type=int, default=224, help="CenterCrop size; 0 = none")
    g.add_argument("--label-space", default="auto", choices=("auto", "sorted", "imagenet1k"),
                   help="class folders -> labels: ImageNet-1k index for WordNet-id folders (auto), or sorted order")
    g.add_argument("--per-class", type=int, default=None, help="use the first N images of each class")
    g.add_argument("--limit", type=int, default=None, help="use the first N images")
    g.add_argument("--restart", action="store_true", help="discard this benchmark's stored cells and recompute")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the main process (CPU runs: 1 avoids competing with workers)")
    g.add_argument("--log-level", default="INFO")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("imagenet-c", parents=[common], help="ImageNet-C (released folders or on the fly)")
    p.add_argument("--released", help="<root>/<corruption>/<severity>/<wnid>/*.JPEG")
    p.add_argument("--clean-data", help="clean ImageNet val folder for the clean error (with --released)")
    p.add_argument("--data", help="any ImageFolder, corrupted on the fly")
    p.add_argument("--corruptions", nargs="+", default=["all"],
                   help="names or groups: benchmark (15), extra (4), all (19), noise, blur, weather, digital")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--jpeg-quality", type=int, default=None, help="JPEG-encode corrupted images (release: 85)")
    p.add_argument("--cache-dir", help="keep corrupted images (PNG) here and reuse them")
    p.set_defaults(build=cells_imagenet_c)

    p = sub.add_parser("occlusion", parents=[common], help="PatchDrop: random / salient / non-salient")
    p.add_argument("--data", help="ImageFolder")
    p.add_argument("--images", help="images folder (with --masks, for the *_mask modes)")
    p.add_argument("--masks", help="masks folder, <stem>.png / .npy")
    p.add_argument("--labels", help="JSON {image stem: label} for --images")
    p.add_argument("--modes", nargs="+", default=["random", "salient", "non_salient"], choices=occlusion.MODES)
    p.add_argument("--levels", type=float, nargs="+", default=list(occlusion.IL_LEVELS))
    p.add_argument("--grid", type=int, nargs=2, default=[14, 14])
    p.add_argument("--fill", default="black", choices=occlusion.FILLS,
                   help="black (Naseer et al., default) or mean colour (iBOT's Table 8)")
    p.add_argument("--head-index", type=int, default=None, help="attention head for salient modes (default: mean)")
    p.add_argument("--threshold", default="fraction", choices=("fraction", "mass"),
                   help="salient level = fraction of patches (default) or of attention mass (Naseer's λ)")
    p.set_defaults(build=cells_occlusion)

    p = sub.add_parser("backgrounds", parents=[common], help="ImageNet-9 background variants, BG-gap")
    p.add_argument("--released", help="IN-9 test release: <root>/<variant>/val/<NN_class>/*")
    p.add_argument("--in9-masks", help="IN-9 root with original/ and fg_mask/: build variants on the fly")
    p.add_argument("--images", help="images folder with --masks: build variants on the fly")
    p.add_argument("--masks")
    p.add_argument("--labels", help="JSON {image stem: label} for --images")
    p.add_argument("--in9-labels", action="store_true", help="--labels are IN-9 labels (map 1000-way logits)")
    p.add_argument("--variants", nargs="+", default=list(backgrounds.IN9_VARIANTS), choices=backgrounds.IN9_VARIANTS)
    p.set_defaults(build=cells_backgrounds)

    p = sub.add_parser("ood", parents=[common], help="ImageNet-A / -R (200 classes) / -Sketch")
    p.add_argument("--imagenet-a")
    p.add_argument("--imagenet-r")
    p.add_argument("--imagenet-sketch")
    p.set_defaults(build=cells_ood)
    return parser


def main(argv: Sequence[str] | None = None, on_cell_done: Callable[[str, dict], None] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.resize = args.resize or None
    args.crop = args.crop or None
    if args.command == "backgrounds" and args.released:
        args.resize = None  # the release is evaluated with ToTensor() only
    group, cells = args.build(args)
    config = {k: v for k, v in vars(args).items() if k not in _RUN_ONLY and not callable(v)}
    for key in ("backbone", "head", "weights"):
        config[key] = _file_id(config.get(key))
    if config.get("grid") is not None:
        config["grid"] = "x".join(map(str, config["grid"]))
    store = ResultStore(args.out, model=args.name)
    store.open_group(group, config, restart=args.restart)
    classifier = build_classifier(args)
    cells_done = run_cells(classifier, cells, store, group, batch_size=args.batch_size, num_workers=args.workers,
                           device=args.device, progress=not args.no_progress, on_cell_done=on_cell_done)
    logger.info("%s: %d cells in %s", group, len(cells_done), args.out)
    return cells_done


if __name__ == "__main__":
    main()
