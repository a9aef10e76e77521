"""Command line of the robustness harness: ``python -m robustness.cli <command> ...``.

Classification commands (``imagenet-c``, ``occlusion``, ``backgrounds``, ``ood``) evaluate a backbone + linear head
(or a timm / torchvision classifier) and write one resumable JSON per model (``--out``): re-running skips finished
cells. ``dense`` does the same for an mmdet / mmseg config + checkpoint (COCO-C / ADE20K-C). ``report`` turns one or
several result files into Markdown / HTML / JSON. ``tools/robustness_eval.py``, ``tools/robustness_dense.py`` and
``tools/robustness_report.py`` are the same commands.

Examples::

    # iBOT ViT-S/16 backbone file + linear head (iBOT's ViT-S probe: 4 last [CLS] tokens). A self-describing
    # backbone file (ibot.checkpoint.save_backbone) needs no shape flags, and a head file with a 'feature' entry
    # ({'weight', 'bias', 'feature': FeatureSpec.to_dict()}) no --n-last-blocks / --avgpool.
    M="--backbone ibot_vits16.pth --head linear_vits16.pth --out results/ibot_vits16.json --name iBOT-S/16"
    python -m robustness.cli imagenet-c $M --released /data/ImageNet-C --clean-data /data/imagenet/val
    python -m robustness.cli imagenet-c $M --data /data/imagenet/val --corruptions all   # on the fly
    python -m robustness.cli occlusion  $M --data /data/imagenet/val --modes random salient non_salient
    python -m robustness.cli backgrounds $M --released /data/bg_challenge
    # your own images + foreground masks, labels from class folders (images/<class>/x.jpg, masks/<class>/x.png)
    python -m robustness.cli backgrounds $M --images my/images --masks my/masks --labels-from folders --fg-crop
    python -m robustness.cli ood $M --imagenet-a /data/imagenet-a --imagenet-r /data/imagenet-r
    # a full pretraining checkpoint (shape inferred from its tensors) with an older head file
    python -m robustness.cli imagenet-c --backbone checkpoint.pth --checkpoint-key teacher --head linear.pth \
       --n-last-blocks 4 --avgpool 0 --data /data/imagenet/val --out results/x.json
    # the AlexNet baseline for on-the-fly CE normalisation (report: --baseline results/alexnet.json)
    python -m robustness.cli imagenet-c --torchvision alexnet --weights alexnet-owt-7be5be79.pth \
       --data /data/imagenet/val --out results/alexnet.json
    python -m robustness.cli dense det/configs/my_cascade.py work_dirs/my_cascade/epoch_12.pth \
       --out results/my_cascade_coco_c.json --trust-checkpoint
    python -m robustness.cli report results/ibot_vits16.json results/dino_vits16.json --out-dir report/

Failure behaviour: flags, data layout, the result file and the model files are checked (and the model loaded) before
anything is written, and nothing reaches --out before the first finished cell, so a refused or failed run leaves it
byte-identical. Runs into one --out at the same time merge their cells (a lock on <out>.lock). Model files are
identified by their SHA-256: a changed file is refused for stored cells (--restart or another --out). Bad input exits
with one ``robustness.cli: error:`` line that names the file or flag and the fix (status 2).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibot.checkpoint import (
    CheckpointError,
    CheckpointFormatError,
    StateDictMismatchError,
    describe_backbone,
    extract_backbone_state_dict,
    load_file,
    load_state_dict_report,
)
from ibot.images import BadImageError
from ibot.records import RecordError, file_sha256

from . import backgrounds, imagenet_c, occlusion, ood
from .classifier import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneWithLinearHead,
    ImageClassifier,
    build_ibot_linear_classifier,
    shape_overrides,
)
from .data import DataLayoutError, ImageList, ImageListDataset, list_image_folder
from .engine import Cell, run_cells
from .metrics import SEVERITIES, expand_corruptions
from .store import ANY, ConfigMismatchError, ResultStore

__all__ = ["InputError", "build_classifier", "build_parser", "main", "run_command_line"]

logger = logging.getLogger("robustness.cli")

#: Arguments that do not change results (left out of the stored group configuration).
#: Which cells to run (corruptions, modes, ...) is not part of it either: cells are stored one by one, so a later run
#: may add corruptions or modes to the same file.
_RUN_ONLY = {"out", "name", "batch_size", "workers", "device", "restart", "no_progress", "command", "cache_dir",
             "trust_checkpoint", "log_level", "threads", "corruptions", "severities", "modes", "levels", "variants",
             "imagenet_a", "imagenet_r", "imagenet_sketch"}
#: Files identified by their content (SHA-256, config key ``<flag>_sha256``), not by path: a replaced file of the
#: same size or at another path is recognised as what it is.
_CONTENT_FILES = ("backbone", "head", "weights", "labels")
#: Configuration keys added after result files were written, and what a stored configuration without them stands
#: for (``ANY``: describes the data without changing the cells), so older files keep resuming (ResultStore defaults).
_ADDED_KEYS = {"dataset": ANY, "min_fg": None, "fg_crop": False, "labels_from": None}
#: ``--min-fg`` when masks are used and the flag is not given.
DEFAULT_MIN_FG = 0.01
#: Model flags that are stored resolved instead (``model``: the backbone's description, ``feature``: the spec), so
#: the same weights give the same configuration whether the shape came from the file or from flags.
_RESOLVED = {"arch", "patch_size", "img_size", "embed_dim", "depth", "num_heads", "n_last_blocks", "avgpool"}

CellDone = Callable[..., None]


class InputError(ValueError):
    """A command-line value that cannot work (the message names the flag, the value and what to do)."""


#: Errors of bad input that ``run_command_line`` reports as one line (exit status 2) instead of a traceback.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    InputError, RecordError, ConfigMismatchError, BadImageError, DataLayoutError, CheckpointError,
    CheckpointFormatError, StateDictMismatchError, FileNotFoundError, IsADirectoryError, PermissionError)


# ------------------------------------------------------------------------------------------------ model
def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (iBOT ViT + linear head by default)")
    g.add_argument("--backbone", help="backbone file (any format ibot.checkpoint.load_backbone reads); without it a "
                   "random backbone (pipeline tests only)")
    g.add_argument("--checkpoint-key", default=None, help="teacher / student / state_dict ... (default: auto)")
    g.add_argument("--arch", default=None, help="vit_tiny / vit_small / vit_base / vit_large (default: from the "
                   "backbone file; vit_small without one)")
    g.add_argument("--patch-size", type=int, default=None, help="default: from the backbone file (16 without one)")
    g.add_argument("--img-size", type=int, default=None,
                   help="position-embedding size the backbone is built with (default: the file's; 224 without one)")
    g.add_argument("--depth", type=int, default=None, help="override the depth (default: from the file / --arch)")
    g.add_argument("--embed-dim", type=int, default=None, help="override the width (default: from the file / --arch)")
    g.add_argument("--num-heads", type=int, default=None,
                   help="override the head count (default: from the file / --arch)")
    g.add_argument("--head", help="linear-head file ({weight, bias[, feature]}, eval_linear files, ...)")
    g.add_argument("--n-last-blocks", type=int, default=None,
                   help="[CLS] tokens of the last n blocks (default: the head file's 'feature' entry, else 1)")
    g.add_argument("--avgpool", type=int, default=None, choices=(0, 1, 2),
                   help="0: [CLS] of the last n blocks; 1: mean patch token; 2: both (iBOT ViT-B/L) (default: the "
                   "head file's 'feature' entry, else 0)")
    g.add_argument("--num-classes", type=int, default=None, help="random head with this many classes (tests only)")
    g.add_argument("--timm", metavar="MODEL", help="evaluate a timm model instead (with --weights)")
    g.add_argument("--torchvision", metavar="MODEL", help="evaluate a torchvision model instead (e.g. alexnet)")
    g.add_argument("--weights", help="state dict for --timm / --torchvision (strictly loaded)")
    g.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    g.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that pickle objects (executes code from the file: only for files you trust)")


def _reference_classifier(args: argparse.Namespace) -> ImageClassifier:
    """A timm / torchvision classifier (whole model, strictly loaded from ``--weights``)."""
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    flag, name = ("--timm", args.timm) if args.timm else ("--torchvision", args.torchvision)
    try:
        if args.timm:
            import timm

            model = timm.create_model(args.timm, pretrained=False, **kw)
        else:
            import torchvision

            model = torchvision.models.get_model(args.torchvision, weights=None, **kw)
    except (ValueError, RuntimeError) as exc:  # unknown model name
        raise InputError(f"{flag} {name}: {exc}; pass a model name the library knows") from exc
    if args.weights:
        ckpt = load_file(args.weights, trusted=args.trust_checkpoint)
        load_state_dict_report(model, extract_backbone_state_dict(ckpt, args.checkpoint_key), strict=True)
    else:
        logger.warning("no --weights: evaluating a randomly initialised model")
    return ImageClassifier(model.eval(), args.mean, args.std)


def build_classifier(args: argparse.Namespace) -> ImageClassifier:
    """The classifier the model flags describe: backbone + linear head, or a timm / torchvision model.

    Whatever is randomly initialised (a random head with ``--num-classes``, a random backbone or reference model)
    is drawn from ``--seed``, so the same flags give the same model in every run. A head that does not fit the
    backbone, or a shape flag that cannot work, raises :class:`InputError` (one line on the command line).
    """
    with torch.random.fork_rng(devices=[]):  # seeded here without changing the caller's random state
        torch.manual_seed(getattr(args, "seed", 0))
        if args.timm or args.torchvision:
            return _reference_classifier(args)
        try:
            overrides = shape_overrides(args.arch, patch_size=args.patch_size, img_size=args.img_size,
                                        embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads)
            model = build_ibot_linear_classifier(
                args.backbone, args.head, overrides=overrides, n_last_blocks=args.n_last_blocks,
                avgpool=args.avgpool, num_classes=args.num_classes, checkpoint_key=args.checkpoint_key,
                trusted=args.trust_checkpoint)
        except (InputError, CheckpointFormatError, RecordError):
            raise
        except ValueError as exc:  # a head that does not fit the feature, an unknown --arch, ...
            raise InputError(str(exc)) from exc
    return ImageClassifier(model, args.mean, args.std)  # patch size read from the backbone


def _group_config(args: argparse.Namespace, classifier: ImageClassifier) -> tuple[dict[str, Any], dict[str, str]]:
    """What the group's results depend on: the flags, every input file by the SHA-256 of its content
    (``backbone_sha256``, ``head_sha256``, ``weights_sha256``, ``labels_sha256``) and the resolved model; and
    ``{config key: file path}`` of those files (named when a re-run finds them changed)."""
    config = {k: v for k, v in vars(args).items()
              if k not in _RUN_ONLY | _RESOLVED | set(_CONTENT_FILES) and not callable(v)}
    report = getattr(classifier.model, "backbone_report", None)
    files: dict[str, str] = {}
    for key in _CONTENT_FILES:
        if not hasattr(args, key):  # --labels exists for occlusion / backgrounds only
            continue
        path = getattr(args, key)
        digest = None
        if path is not None:
            files[f"{key}_sha256"] = os.fspath(path)
            digest = report.sha256 if key == "backbone" and report is not None else file_sha256(path)
        config[f"{key}_sha256"] = digest
    if config.get("grid") is not None:
        config["grid"] = "x".join(map(str, config["grid"]))
    if isinstance(classifier.model, BackboneWithLinearHead):
        config["model"] = describe_backbone(classifier.model.backbone)
        config["feature"] = classifier.model.feature.to_dict()
    return config, files


def _run_meta(args: argparse.Namespace, classifier: ImageClassifier) -> dict[str, Any]:
    """Provenance kept in the result file: the backbone file's SHA-256, description and load report, and the paths
    of the other model files (their SHA-256 is in each group's configuration)."""
    report = getattr(classifier.model, "backbone_report", None)
    meta: dict[str, Any] = {"backbone": report.to_dict()} if report is not None else {}
    meta.update({f"{key}_file": os.fspath(getattr(args, key)) for key in ("head", "weights")
                 if getattr(args, key, None) is not None})
    return meta


# ------------------------------------------------------------------------------------------------ benchmarks
def _corruption_list(names: Sequence[str]) -> list[str]:
    try:
        return expand_corruptions(names)
    except ValueError as exc:
        raise InputError(f"--corruptions: {exc}") from exc


def _check_severities(severities: Sequence[int]) -> None:
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise InputError(f"--severities: {bad if bad else 'none given'} not in 1..5 (ImageNet-C severities); "
                         "pass values from 1 2 3 4 5")


def _check_file(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        if os.path.isdir(path):
            raise InputError(f"{flag} {path} is a folder; pass a file")
        raise FileNotFoundError(f"{flag} {path} does not exist; pass an existing file")


def _validate_classification(args: argparse.Namespace) -> None:
    """Every flag checked before any file is read or written (model files: existence; contents load next)."""
    positive = {"--batch-size": args.batch_size, "--per-class": args.per_class, "--limit": args.limit,
                "--threads": args.threads, "--num-classes": args.num_classes}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"--workers": args.workers, "--resize": args.resize, "--crop": args.crop}.items():
        if value is not None and value < 0:
            raise InputError(f"{flag} must be 0 or more, got {value}")
    if min(args.std) <= 0:
        raise InputError(f"--std values must be positive, got {args.std}")
    if args.timm and args.torchvision:
        raise InputError("--timm and --torchvision exclude each other; pass one")
    if (args.timm or args.torchvision) and (args.backbone or args.head):
        raise InputError("--backbone / --head describe the iBOT model; with --timm / --torchvision pass --weights")
    if args.weights and not (args.timm or args.torchvision):
        raise InputError("--weights is for --timm / --torchvision models; an iBOT model takes --backbone / --head")
    if not (args.timm or args.torchvision) and args.head is None and args.num_classes is None:
        raise InputError("no --head: pass a linear-head file (or --num-classes N for a random head, tests only)")
    for flag, path in (("--backbone", args.backbone), ("--head", args.head), ("--weights", args.weights),
                       ("--labels", getattr(args, "labels", None))):
        _check_file(flag, path)
    if args.out and os.path.isdir(args.out):
        raise InputError(f"--out {args.out} is a folder; pass a result file path (e.g. {args.out}/model.json)")
    if args.command == "imagenet-c":
        _corruption_list(args.corruptions)
        _check_severities(args.severities)
        if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
            raise InputError(f"--jpeg-quality must be in 1..100 (the release used 85), got {args.jpeg_quality}")
    if args.command == "occlusion":
        bad = [lv for lv in args.levels if not 0.0 <= lv <= 1.0]
        if bad:
            raise InputError(f"--levels {bad}: information loss is a fraction in [0, 1]")
        if min(args.grid) < 1:
            raise InputError(f"--grid must be two positive numbers, got {args.grid}")
        mask_modes = [m for m in args.modes if m.endswith("_mask")]
        if mask_modes and not args.images:
            raise InputError(f"--modes {mask_modes} need foreground masks: pass --images DIR --masks DIR")
        if args.head_index is not None and args.head_index < 0:
            raise InputError(f"--head-index must be 0 or more, got {args.head_index}")
    if args.command in ("occlusion", "backgrounds"):
        _validate_foregrounds(args)
    if args.command == "imagenet-c" and args.released and (args.per_class or args.limit):
        raise InputError("--per-class / --limit select images of an image folder (--data); the released ImageNet-C "
                         "folders (--released) are evaluated whole: drop them, or evaluate --data on the fly")


def _validate_foregrounds(args: argparse.Namespace) -> None:
    """occlusion / backgrounds: the images + masks flags (labels, --min-fg, --fg-crop) fit together."""
    images, in9 = args.images, getattr(args, "in9_masks", None)
    if images and not args.masks:
        raise InputError("--images needs --masks DIR (foreground masks with the same file stems)")
    if args.masks and not images:
        raise InputError("--masks needs --images DIR (the images the masks belong to)")
    if args.labels and args.labels_from:
        raise InputError("--labels and --labels-from exclude each other; pass one")
    if (args.labels or args.labels_from) and not images:
        raise InputError("--labels / --labels-from label the images of --images DIR; other sources carry their "
                         "labels (class folders)")
    if getattr(args, "in9_labels", False) and not images:
        raise InputError("--in9-labels says the labels of --images are IN-9 labels; pass it with --images")
    if images and not (args.labels or args.labels_from):
        raise InputError(
            f"{args.command} --images needs labels, or every image would be labelled 0 (accuracy against label 0"
            + (", and Mixed-Same = Mixed-Rand" if args.command == "backgrounds" else "") + "): pass --labels FILE "
            "(JSON {\"<image stem>\": <integer label>}), --labels-from folders (images/<class>/<stem>.jpg) or "
            "--labels-from prefix (images/<class>_<rest>.jpg)")
    if (args.min_fg is not None or args.fg_crop) and not (images or in9):
        raise InputError("--min-fg / --fg-crop apply to foreground masks: --images DIR --masks DIR"
                         + (" or --in9-masks ROOT" if args.command == "backgrounds" else ""))
    if args.min_fg is not None and not 0.0 <= args.min_fg < 1.0:
        raise InputError(f"--min-fg is a fraction of the pixels in [0, 1), got {args.min_fg}")
    if images or in9:  # the resolved value is what the results depend on (stored in the configuration)
        min_fg = DEFAULT_MIN_FG if args.min_fg is None else args.min_fg
        args.min_fg = min_fg if min_fg > 0 else None


def _num_outputs(classifier: ImageClassifier) -> int | None:
    """The model's number of logits when it says (a linear head, a timm model), else ``None``."""
    model = classifier.model
    if isinstance(model, BackboneWithLinearHead):
        return int(model.head.out_features)
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None


def _check_model_fits(args: argparse.Namespace, classifier: ImageClassifier) -> None:
    """Fail before evaluating when the model cannot run what was asked (salient occlusion needs attention; IN-9
    label mapping needs 9 or 1000 logits)."""
    in9 = args.command == "backgrounds" and (args.released or args.in9_masks or args.in9_labels)
    outputs = _num_outputs(classifier)
    if in9 and outputs is not None and outputs not in (9, 1000):
        raise InputError(f"the model has {outputs} outputs; IN-9 labels (--released, --in9-masks, --in9-labels) need "
                         "a 9-way or an ImageNet-1k (1000-way) classifier; for your own classes pass --images with "
                         "--labels / --labels-from and no --in9-labels")
    if args.command == "occlusion":
        salient = [m for m in args.modes if m in ("salient", "non_salient")]
        if salient and not classifier.has_attention:
            raise InputError(f"--modes {salient} rank patches by the model's [CLS] attention, which "
                             f"{type(classifier.model).__name__} does not expose; use --modes random (or the *_mask "
                             "modes with --images / --masks)")


def _subset(images: ImageList, args: argparse.Namespace) -> ImageList:
    return images.subset(per_class=args.per_class, limit=args.limit)


def _labels(path: str | None) -> dict[str, int] | None:
    """``--labels``: a JSON object ``{image stem: integer label}``."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if not isinstance(obj, dict):
            raise TypeError(f"a JSON {type(obj).__name__}, not an object")
        return {str(k): int(v) for k, v in obj.items()}
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"--labels {path}: not a JSON object {{image stem: integer label}} ({exc}); "
                         "fix the file or pass another") from exc


def _foregrounds(args: argparse.Namespace, samples: list[backgrounds.ForegroundSample],
                 resize: int | None) -> backgrounds.ForegroundImages:
    """The images with masks to evaluate: --fg-crop geometry, then --min-fg, --per-class and --limit (in order)."""
    base = backgrounds.ForegroundImages(samples, resize, args.crop, fg_crop=args.fg_crop)
    data, scan = backgrounds.select_foregrounds(base, args.min_fg or 0.0, per_class=args.per_class,
                                                limit=args.limit)
    logger.info("%s: %d images with masks evaluated (%d skipped for too little foreground)", args.command,
                len(data), len(scan.skipped))
    if (args.command == "backgrounds" and len(scan.shapes) > 1
            and any(v.startswith("mixed_") for v in args.variants)):
        raise InputError(f"the images have {len(scan.shapes)} different sizes after the resize / crop, and the "
                         "mixed_* variants paste one image's foreground on another's background: pass --crop N")
    return data


def _read_foregrounds(args: argparse.Namespace) -> list[backgrounds.ForegroundSample]:
    return backgrounds.read_image_mask_folder(args.images, args.masks, _labels(args.labels),
                                              labels_from=args.labels_from)


def cells_imagenet_c(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    corruptions = _corruption_list(args.corruptions)
    if args.released:
        cells = imagenet_c.released_cells(args.released, args.clean_data, corruptions, args.severities,
                                          crop=args.crop, clean_resize=args.resize, label_space=args.label_space)
        if args.dataset == "auto":
            args.dataset = "imagenet"
        return imagenet_c.GROUP, cells
    if not args.data:
        raise InputError("imagenet-c needs --released ROOT (the ImageNet-C folders) or --data IMAGE_FOLDER "
                         "(corrupted on the fly)")
    images = list_image_folder(args.data, args.label_space)
    if args.dataset == "auto":
        args.dataset = "imagenet" if imagenet_c.is_imagenet_folder(images) else "other"
    if args.dataset != "imagenet":
        logger.info("--data %s is recorded as not ImageNet (its class folders are not all ImageNet-1k WordNet ids, "
                    "or --dataset other): the report shows CE / mCE as '–' (AlexNet's ImageNet-C errors normalise "
                    "ImageNet only); pass --dataset imagenet if it is ImageNet", args.data)
    images = _subset(images, args)
    return imagenet_c.GROUP, imagenet_c.on_the_fly_cells(
        images, corruptions, args.severities, resize=args.resize, crop=args.crop, seed=args.seed,
        jpeg_quality=args.jpeg_quality, cache_dir=args.cache_dir)


def cells_occlusion(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    if args.images:
        data: Any = _foregrounds(args, _read_foregrounds(args), args.resize)
    elif args.data:
        data = ImageListDataset(_subset(list_image_folder(args.data, args.label_space), args), args.resize, args.crop)
    else:
        raise InputError("occlusion needs --data IMAGE_FOLDER or --images DIR --masks DIR")
    return occlusion.GROUP, occlusion.cells(data, args.modes, args.levels, grid=tuple(args.grid), fill=args.fill,
                                            seed=args.seed, head=args.head_index, threshold=args.threshold)


def cells_backgrounds(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    if args.released:
        return backgrounds.GROUP, backgrounds.released_cells(args.released, args.variants, crop=args.crop,
                                                             per_class=args.per_class, limit=args.limit)
    if args.in9_masks:
        base = _foregrounds(args, backgrounds.read_in9_foregrounds(args.in9_masks), None)
        predict: Callable = backgrounds.in9_predict
    elif args.images:
        base = _foregrounds(args, _read_foregrounds(args), args.resize)
        predict = backgrounds.in9_predict if args.in9_labels else (lambda logits: logits.argmax(dim=1))
    else:
        raise InputError("backgrounds needs --released IN9_ROOT, --in9-masks IN9_ROOT or --images DIR --masks DIR")
    return backgrounds.GROUP, backgrounds.variant_cells(base, args.variants, seed=args.seed, predict=predict)


def cells_ood(args: argparse.Namespace) -> tuple[str, list[Cell]]:
    roots = {k: v for k, v in (("imagenet_a", args.imagenet_a), ("imagenet_r", args.imagenet_r),
                               ("imagenet_sketch", args.imagenet_sketch)) if v}
    if not roots:
        raise InputError("ood needs at least one of --imagenet-a / --imagenet-r / --imagenet-sketch")
    return ood.GROUP, ood.cells(roots, resize=args.resize, crop=args.crop, per_class=args.per_class,
                                limit=args.limit)


def _seed_everything(seed: int) -> None:
    """``--seed`` for everything random in the run (Python, NumPy, torch; the model is seeded in
    :func:`build_classifier`, corruptions / occlusion / partners per image from it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_classification(args: argparse.Namespace, on_cell_done: CellDone | None = None) -> dict:
    """One classification command: build its cells and the classifier, evaluate what the result file lacks."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.resize = args.resize or None
    args.crop = args.crop or None
    if args.command == "backgrounds" and args.released:
        args.resize = None  # the release is evaluated with ToTensor() only
    _validate_classification(args)
    _seed_everything(args.seed)
    group, cells = args.build(args)  # reads the data layout
    ResultStore(args.out)  # an unreadable result file is refused before the model loads
    classifier = build_classifier(args)
    _check_model_fits(args, classifier)
    config, files = _group_config(args, classifier)
    store = ResultStore(args.out, model=args.name, meta=_run_meta(args, classifier))
    # checks only: written with the first cell (keys added since an older file was written: see _ADDED_KEYS)
    store.open_group(group, config, restart=args.restart, files=files, defaults=_ADDED_KEYS)
    cells_done = run_cells(classifier, cells, store, group, batch_size=args.batch_size, num_workers=args.workers,
                           device=args.device, progress=not args.no_progress, on_cell_done=on_cell_done)
    store.flush()  # an older file whose cells were all stored still records the keys added since
    logger.info("%s: %d cells in %s", group, len(cells_done), args.out)
    return cells_done


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _model_args(common)
    g = common.add_argument_group("run")
    g.add_argument("--out", required=True, help="result JSON (created or resumed)")
    g.add_argument("--name", help="model name in reports (default: the result file's stem)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=4, help="data-loader workers (corruptions run there)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds everything random: a random head / model (--num-classes without --head), on-the-fly "
                   "corruptions, occlusion orders, background partners")
    g.add_argument("--resize", type=int, default=256, help="Resize (shorter side) before the crop; 0 = none")
    g.add_argument("--crop", type=int, default=224, help="CenterCrop size; 0 = none")
    g.add_argument("--label-space", default="auto", choices=("auto", "sorted", "imagenet1k"),
                   help="class folders -> labels: ImageNet-1k index for WordNet-id folders (auto), or sorted order")
    g.add_argument("--per-class", type=int, default=None,
                   help="use the first N images of each class (image folders, --images with labels, IN-9, OOD sets)")
    g.add_argument("--limit", type=int, default=None, help="use the first N images (after --per-class)")
    g.add_argument("--restart", action="store_true", help="discard this benchmark's stored cells and recompute")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the main process (CPU runs: 1 avoids competing with workers)")
    g.add_argument("--log-level", default="INFO")
    return common


def _foreground_args(p: argparse.ArgumentParser) -> None:
    """Flags of images + foreground masks (occlusion *_mask modes, background variants on the fly)."""
    p.add_argument("--masks", help="masks folder: <stem>.png / .bmp / .npy next to each image's stem (with "
                   "--labels-from folders: <class>/<stem>.png or flat); grey >= 128 (npy >= 0.5) is foreground")
    p.add_argument("--labels", help="labels of --images: a JSON object {\"<image stem>\": <integer label>, ...}, "
                   "e.g. {\"cat_01\": 0, \"dog_07\": 1}; images without an entry are skipped (and counted)")
    p.add_argument("--labels-from", choices=backgrounds.LABELS_FROM, default=None,
                   help="labels of --images without a file: folders = images/<class>/<stem>.jpg, prefix = "
                   "images/<class>_<rest>.jpg; classes numbered in sorted order (logged)")
    p.add_argument("--min-fg", type=float, default=None,
                   help=f"skip images whose mask covers less than this fraction of the pixels after the resize / "
                   f"crop (counted and named in a warning; default {DEFAULT_MIN_FG}; 0 keeps all)")
    p.add_argument("--fg-crop", action="store_true",
                   help="centre the crop on the mask's bounding box instead of the image centre")


def _add_classification_commands(sub: Any) -> None:
    common = _common_parser()
    p = sub.add_parser("imagenet-c", parents=[common], help="ImageNet-C (released folders or on the fly)")
    p.add_argument("--released", help="<root>/<corruption>/<severity>/<wnid>/*.JPEG")
    p.add_argument("--clean-data", help="clean ImageNet val folder for the clean error (with --released)")
    p.add_argument("--data", help="any ImageFolder, corrupted on the fly")
    p.add_argument("--corruptions", nargs="+", default=["all"],
                   help="names or groups: benchmark (15), extra (4), all (19), noise, blur, weather, digital")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--jpeg-quality", type=int, default=None, help="JPEG-encode corrupted images (release: 85)")
    p.add_argument("--cache-dir", help="keep corrupted images (PNG) here and reuse them")
    p.add_argument("--dataset", default="auto", choices=("auto", *imagenet_c.DATASETS),
                   help="what the data is, recorded for the report: CE / mCE are normalised by AlexNet's ImageNet-C "
                   "errors and shown only for imagenet (or with report --baseline). auto: imagenet for --released "
                   "and for class folders that are ImageNet-1k WordNet ids, else other")
    p.set_defaults(build=cells_imagenet_c, run=run_classification)

    p = sub.add_parser("occlusion", parents=[common], help="PatchDrop: random / salient / non-salient")
    p.add_argument("--data", help="ImageFolder")
    p.add_argument("--images", help="images folder (with --masks, for the *_mask modes)")
    _foreground_args(p)
    p.add_argument("--modes", nargs="+", default=["random", "salient", "non_salient"], choices=occlusion.MODES)
    p.add_argument("--levels", type=float, nargs="+", default=list(occlusion.IL_LEVELS))
    p.add_argument("--grid", type=int, nargs=2, default=[14, 14])
    p.add_argument("--fill", default="black", choices=occlusion.FILLS,
                   help="black (Naseer et al., default) or mean colour (iBOT's Table 8)")
    p.add_argument("--head-index", type=int, default=None, help="attention head for salient modes (default: mean)")
    p.add_argument("--threshold", default="fraction", choices=("fraction", "mass"),
                   help="salient level = fraction of patches (default) or of attention mass (Naseer's λ)")
    p.set_defaults(build=cells_occlusion, run=run_classification)

    p = sub.add_parser("backgrounds", parents=[common], help="ImageNet-9 background variants, BG-gap")
    p.add_argument("--released", help="IN-9 test release: <root>/<variant>/val/<NN_class>/*")
    p.add_argument("--in9-masks", help="IN-9 root with original/ and fg_mask/: build variants on the fly")
    p.add_argument("--images", help="images folder with --masks: build variants on the fly")
    _foreground_args(p)
    p.add_argument("--in9-labels", action="store_true",
                   help="the labels of --images are IN-9 labels 0-8 (map 1000-way logits to IN-9)")
    p.add_argument("--variants", nargs="+", default=list(backgrounds.IN9_VARIANTS), choices=backgrounds.IN9_VARIANTS)
    p.set_defaults(build=cells_backgrounds, run=run_classification)

    p = sub.add_parser("ood", parents=[common], help="ImageNet-A / -R (200 classes) / -Sketch")
    p.add_argument("--imagenet-a")
    p.add_argument("--imagenet-r")
    p.add_argument("--imagenet-sketch")
    p.set_defaults(build=cells_ood, run=run_classification)


# ------------------------------------------------------------------------------------------------ dense
_DENSE_HELP = """COCO-C / ADE20K-C style robustness of any mmdet 3.x or mmseg 1.x config + checkpoint.

Every (corruption, severity) cell runs the config's test loop with the corruption inserted right after image loading
(in RGB order); P / mPC / rPC are printed for each summarised metric (bbox and segm mAP for detection, mIoU for
segmentation). The result JSON is resumable (finished cells are skipped) and feeds the report command.

    python -m robustness.cli dense det/configs/my_cascade.py work_dirs/my_cascade/epoch_12.pth \\
        --out results/my_cascade_coco_c.json --trust-checkpoint
    # several GPUs (as tools/dist_test.sh): every rank evaluates each cell, rank 0 writes the result file
    torchrun --nproc_per_node=8 tools/robustness_dense.py CONFIG CKPT --out results/x.json --launcher pytorch

--trust-checkpoint allows a checkpoint that pickles Python objects (mmengine's own checkpoints do: a HistoryBuffer);
this executes code from the file, so use it only for files you trust. Tensors-only checkpoints load without it.
"""


def _parse_cfg_options(items: Sequence[str] | None) -> dict:
    from mmengine.config import DictAction

    ns = argparse.Namespace()
    DictAction(option_strings=[], dest="opts")(None, ns, list(items or []))
    return dict(ns.opts or {})


def _print_dense_summary(summary: dict) -> None:
    for metric, d in summary.items():
        mpc = "n/a" if d["mPC"] is None else f"{d['mPC']:.4g}"
        rpc = "n/a" if d["rPC"] is None else f"{d['rPC']:.1f} %"
        full = "" if d["complete"] else f"  [partial: {d['n_cells']} of 75 benchmark cells]"
        print(f"{metric}: P = {d['P']:.4g}  mPC = {mpc}  rPC = {rpc}{full}")
    print(json.dumps({m: {k: d[k] for k in ('P', 'mPC', 'rPC', 'complete')} for m, d in summary.items()}))


def run_dense_command(args: argparse.Namespace, on_cell_done: CellDone | None = None) -> dict:
    """``dense``: evaluate the config's cells (mmengine; imported only here) and print P / mPC / rPC on rank 0."""
    corruptions = _corruption_list(args.corruptions)
    _check_severities(args.severities)
    _check_file("config", args.config)
    _check_file("checkpoint", args.checkpoint)
    if os.path.isdir(args.out):
        raise InputError(f"--out {args.out} is a folder; pass a result file path (e.g. {args.out}/model.json)")
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    from mmengine.dist import is_main_process

    from .dense import DenseSettings, run_dense

    settings = DenseSettings(
        corruptions=corruptions, severities=args.severities, seed=args.seed, task=args.task, model_name=args.name,
        work_dir=args.work_dir, cfg_options=_parse_cfg_options(args.cfg_options), launcher=args.launcher,
        trust_checkpoint=args.trust_checkpoint, corrupt_after=args.corrupt_after, restart=args.restart,
        progress=not args.no_progress)
    summary = run_dense(args.config, args.checkpoint, args.out, settings, on_cell_done=on_cell_done)
    if is_main_process():
        _print_dense_summary(summary)
    return summary


def _add_dense_command(sub: Any) -> None:
    p = sub.add_parser("dense", help="COCO-C / ADE20K-C: an mmdet / mmseg config + checkpoint", description=_DENSE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="model weights (omit only to test the pipeline on a random model)")
    p.add_argument("--out", required=True, help="result JSON (created or resumed)")
    p.add_argument("--name", help="model name in reports")
    p.add_argument("--task", choices=("det_c", "seg_c"), help="default: from the config's default_scope")
    p.add_argument("--corruptions", nargs="+", default=["benchmark"],
                   help="names or groups: benchmark (15, default), extra (4), all, noise, blur, weather, digital")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt-after", default=None,
                   help="insert the corruption after this pipeline step type instead of after image loading "
                        "(e.g. Resize: corrupt at test resolution; faster, but not the published protocol)")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", help="override config entries (mmengine syntax)")
    p.add_argument("--launcher", default="none", choices=("none", "pytorch", "slurm", "mpi"))
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--restart", action="store_true", help="discard the stored cells of this task and recompute")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_dense_command)


# ------------------------------------------------------------------------------------------------ report
_REPORT_HELP = """Turn robustness result files (one per model) into report.md, a self-contained report.html (plots
embedded as base64 PNGs), summary.json and plots/*.png.

    python -m robustness.cli report results/ibot_vits16.json results/dino_vits16.json --out-dir report/
    # normalise on-the-fly ImageNet-C CE by an AlexNet evaluated the same way instead of the published table:
    python -m robustness.cli report results/*.json --baseline results/alexnet.json --out-dir report/
"""


def run_report(args: argparse.Namespace, on_cell_done: CellDone | None = None) -> dict:
    """``report``: write the report of the given result files; return its summary."""
    from .report import build_report

    summary = build_report(args.results, args.out_dir, title=args.title, baseline_file=args.baseline)
    out = Path(args.out_dir)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'summary.json'} "
          f"({len(summary['models'])} model(s), {len(summary['plots'])} plot(s))")
    return summary


def _add_report_command(sub: Any) -> None:
    p = sub.add_parser("report", help="Markdown / HTML / JSON report of result files", description=_REPORT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result JSON files written by the other commands")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--title", default="Robustness report")
    p.add_argument("--baseline", help="result file of a baseline model (e.g. AlexNet) to normalise ImageNet-C CE")
    p.set_defaults(run=run_report)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robustness.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_classification_commands(sub)
    _add_dense_command(sub)
    _add_report_command(sub)
    return parser


def main(argv: Sequence[str] | None = None, on_cell_done: CellDone | None = None) -> dict:
    """Run one command; return its cells (classification), P / mPC / rPC summary (``dense``) or report summary.

    ``on_cell_done(key, record)`` (``dense``: ``(key, record, runner)``) is called after each cell is stored.
    Errors are raised (see :func:`run_command_line` for the command-line behaviour).
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return args.run(args, on_cell_done)


def run_command_line(argv: Sequence[str] | None = None) -> int:
    """:func:`main` for a shell: bad input (an unreadable or mismatched result file, a bad image, model file or
    flag) is printed as one ``error:`` line naming the file and the fix, with exit status 2; other errors keep their
    traceback."""
    try:
        main(argv)
    except _INPUT_ERRORS as exc:
        print(f"robustness.cli: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line())
