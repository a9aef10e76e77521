#!/usr/bin/env python
"""Write a self-describing, tensors-only ViT backbone file from any checkpoint format the project reads.

    python tools/convert_checkpoint.py SRC DST [--key teacher|student|state_dict|...] [--trust-checkpoint]
        [--num-heads H] [--timm MODEL]
    python tools/convert_checkpoint.py --timm vit_small_patch16_224.augreg_in21k DST   (downloads via timm)

SRC: our pre-training checkpoint or an official iBOT / DINO full checkpoint (teacher by default), an official
backbone file, a DINO / timm flat state dict (.pth / .safetensors), an mmengine det/seg checkpoint of
iBOTViTBackbone, or an http(s) URL. DST (``ibot.checkpoint.save_backbone``): ``.pth`` (``{'schema', 'state_dict',
'model', 'source'}``, loadable with ``torch.load(weights_only=True)``) or ``.safetensors`` (the description in its
metadata); ``ibot.checkpoint.load_backbone(DST)`` rebuilds the model with no further flags. The mask token and
classifier/projection heads are dropped. The description is inferred from the tensor shapes, except the head
count of a non-standard width (not stored in the weights): give --num-heads, or --timm MODEL to describe SRC as
that timm model. Full checkpoints pickle an ``argparse.Namespace``: reading them needs ``--trust-checkpoint`` (only
for files you trust), the written file never does.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import tempfile
from typing import Any
from urllib.parse import urlparse

from torch import Tensor

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ibot.checkpoint import describe_backbone, export_backbone, read_backbone, save_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", help="checkpoint path or URL (omit with --timm: its pretrained weights)")
    parser.add_argument("dst", help="output file (.pth or .safetensors)")
    parser.add_argument("--key", default=None,
                        help="entry to take (default: teacher, then student, then state_dict/model/module)")
    parser.add_argument("--timm", metavar="MODEL", help="describe SRC as this timm model (without SRC: take the "
                        "model's pretrained weights, downloaded by timm)")
    parser.add_argument("--num-heads", type=int, help="head count of a ViT whose width is not a preset's")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of SRC (executes pickled code: only for files you trust)")
    args = parser.parse_args(argv)
    if args.src is None and args.timm is None:
        parser.error("give SRC, or --timm MODEL for that model's pretrained weights")
    return args


def _description(args: argparse.Namespace, src: str, trusted: bool) -> dict[str, Any] | None:
    """The description to write: from --timm / --num-heads, else ``None`` (export_backbone infers it)."""
    if args.timm:
        import timm

        desc = describe_backbone(timm.create_model(args.timm, pretrained=False, num_classes=0))
    elif args.num_heads is not None:
        desc = read_backbone(src, trusted=trusted, key=args.key).model
    else:
        return None
    return {**desc, **({"num_heads": args.num_heads} if args.num_heads is not None else {})}


def main(argv: list[str] | None = None) -> dict[str, Tensor]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.src is None:  # a timm model's pretrained weights, through the same export as a file
            import timm

            src, trusted = osp.join(tmp, f"{args.timm}.safetensors"), False
            save_file(timm.create_model(args.timm, pretrained=True, num_classes=0).state_dict(), src)
        elif urlparse(args.src).scheme in ("http", "https"):  # downloaded once, as the dense backbones do
            from det.checkpoint import resolve_checkpoint

            src, allowed = resolve_checkpoint(args.src)
            trusted = args.trust_checkpoint or allowed
        else:
            src, trusted = args.src, args.trust_checkpoint
        sd = export_backbone(src, args.dst, key=args.key, trusted=trusted, model=_description(args, src, trusted))
    print(f"wrote {args.dst}: {len(sd)} tensors, {read_backbone(args.dst).model}")
    return sd


if __name__ == "__main__":
    main()
