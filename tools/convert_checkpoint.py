#!/usr/bin/env python
"""Write a tensors-only ViT backbone file from any checkpoint format the dense backbones read.

    python tools/convert_checkpoint.py SRC DST [--key teacher|student|state_dict|...] [--trust-checkpoint]
    python tools/convert_checkpoint.py --timm vit_small_patch16_224.augreg_in21k DST   (downloads via timm)

SRC: our pre-training checkpoint or an official iBOT / DINO full checkpoint (teacher by default), an official
backbone file, a DINO / timm flat state dict (.pth / .safetensors), an mmengine det/seg checkpoint of
iBOTViTBackbone, or an http(s) URL. DST: ``.pth`` (``{'state_dict': backbone}``, loadable with
``torch.load(weights_only=True)``) or ``.safetensors`` (flat). Keys are iBOT/timm ViT names; the mask token and
classifier/projection heads are dropped. Full checkpoints pickle an ``argparse.Namespace``: reading them needs
``--trust-checkpoint`` (only for files you trust), the written file never does.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", help="checkpoint path or URL (omit with --timm)")
    parser.add_argument("dst", help="output file (.pth or .safetensors)")
    parser.add_argument("--key", default=None,
                        help="entry to take (default: teacher, then student, then state_dict/model/module)")
    parser.add_argument("--timm", metavar="MODEL", help="take the pretrained weights of this timm model instead")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of SRC (executes pickled code: only for files you trust)")
    args = parser.parse_args(argv)
    if (args.src is None) == (args.timm is None):
        parser.error("give exactly one of SRC or --timm MODEL")
    return args


def describe(sd: dict) -> str:
    """One line: width, depth, patch size and position grid of a ViT state dict."""
    parts = [f"{len(sd)} tensors"]
    if "pos_embed" in sd:
        parts.append(f"width {sd['pos_embed'].shape[-1]}, pos_embed {tuple(sd['pos_embed'].shape)}")
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if blocks:
        parts.append(f"depth {max(blocks) + 1}")
    if "patch_embed.proj.weight" in sd:
        parts.append(f"patch {sd['patch_embed.proj.weight'].shape[-1]}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ibot.checkpoint import save_file
    from ibot.compat.mmengine import trust_checkpoint

    from det.checkpoint import backbone_state_dict, read_checkpoint, split_ignored

    if args.timm:
        import timm

        ckpt = timm.create_model(args.timm, pretrained=True, num_classes=0).state_dict()
    else:
        if args.trust_checkpoint:
            trust_checkpoint(args.src)
        ckpt = read_checkpoint(args.src)
    sd, dropped = split_ignored(backbone_state_dict(ckpt, args.key))
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    save_file(sd if args.dst.lower().endswith(".safetensors") else {"state_dict": sd}, args.dst)
    print(f"wrote {args.dst}: {describe(sd)}" + (f"; dropped {dropped}" if dropped else ""))
    return sd


if __name__ == "__main__":
    main()
