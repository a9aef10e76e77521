#!/usr/bin/env python
"""Training-iteration speed of the dense models on one GPU: ms/iter, img/s and peak memory.

Models (random weights, synthetic batches of the recipe's size, one process, no DDP; SyncBN reverted to BN):

* ``upernet-ibot-b16``: our UperNet ViT-B/16 (seg/configs/upernet_vit-b16-ibot_...), 8 x 512² by default;
* ``upernet-mmseg-b16``: mmseg 1.2.2's stock ``vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py``, same batch,
  run in the same process for the side-by-side comparison of the issue's acceptance list;
* ``cascade-ibot-b16``: our Cascade Mask R-CNN ViT-B/16 (det/configs/...ld0.75_8xb2-ms-crop-1x), 2 x 1024² with
  10 boxes + masks per image.

Each model runs ``model.train_step`` (data preprocessor, forward, backward, optimizer step with the config's
optimizer / layer decay, AMP through mmengine's ``AmpOptimWrapper``) ``--warmup`` times, then ``--iters`` timed
iterations (synchronised per iteration; median reported)::

    python benchmarks/dense_throughput.py                                  # all three, bf16
    python benchmarks/dense_throughput.py --models upernet-ibot-b16 upernet-mmseg-b16 --dtype fp16 fp32
    python benchmarks/dense_throughput.py --results benchmarks/RESULTS.md  # append a markdown section
    python benchmarks/dense_throughput.py --device cpu --smoke             # tiny widths: checks the script only

Speed levers (off by default, so the first run compares the recipes as configured): ``--fused-adamw``,
``--channels-last``, ``--compile-backbone``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ibot.records import schema_tag, write_record  # noqa: E402

MODELS = {
    "upernet-ibot-b16": ("seg", ROOT / "seg/configs/upernet_vit-b16-ibot_deconv-ln_ld0.65_8xb2-160k_ade20k-512x512.py"),
    "upernet-mmseg-b16": ("seg", "mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py"),
    "cascade-ibot-b16": ("det", ROOT / "det/configs/cascade-mask-rcnn_vit-b16-ibot_deconv-fpn_4conv1fc-giou_"
                                       "ld0.75_8xb2-ms-crop-1x_coco.py"),
}
BASELINE = {"upernet-ibot-b16": "upernet-mmseg-b16"}
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
TOOLKIT = {"seg": "mmseg", "det": "mmdet"}
#: Schema tag of the --json record (the ``ibot.records`` convention).
SCHEMA = schema_tag("dense-throughput", 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--seg-size", type=int, default=512)
    p.add_argument("--det-batch", type=int, default=2)
    p.add_argument("--det-size", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) for every model")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    p.add_argument("--compile-backbone", action="store_true", help="torch.compile the backbone of every model")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (affects fp32 runs)")
    p.add_argument("--smoke", action="store_true", help="tiny widths and inputs: checks the script, not speed")
    p.add_argument("--json", help=f"write the rows as a JSON record ({{'schema': {SCHEMA!r}, 'rows': [...]}})")
    p.add_argument("--results", help="append a markdown section to this file (e.g. benchmarks/RESULTS.md)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------- models
def _smoke_overrides(name: str) -> dict:
    if name == "upernet-mmseg-b16":
        return {"model.backbone.embed_dims": 64, "model.backbone.num_layers": 4, "model.backbone.num_heads": 2,
                "model.backbone.out_indices": (0, 1, 2, 3), "model.neck.in_channels": [64] * 4,
                "model.neck.out_channels": 64, "model.decode_head.in_channels": [64] * 4,
                "model.decode_head.channels": 32, "model.auxiliary_head.in_channels": 64,
                "model.auxiliary_head.channels": 16}
    opts = {"model.backbone.arch": None, "model.backbone.embed_dim": 64, "model.backbone.depth": 4,
            "model.backbone.num_heads": 2}
    if name.startswith("upernet"):
        opts.update({"model.decode_head.in_channels": [64] * 4, "model.decode_head.channels": 32,
                     "model.auxiliary_head.in_channels": 64, "model.auxiliary_head.channels": 16})
    else:
        w = 32
        opts.update({"model.neck.in_channels": [64] * 4, "model.neck.out_channels": w,
                     "model.rpn_head.in_channels": w, "model.rpn_head.feat_channels": w,
                     "model.roi_head.bbox_roi_extractor.out_channels": w,
                     "model.roi_head.mask_roi_extractor.out_channels": w,
                     "model.roi_head.mask_head.in_channels": w, "model.roi_head.mask_head.conv_out_channels": w,
                     "model.train_cfg.rpn_proposal.max_per_img": 64})
        for i in range(3):
            opts.update({f"model.roi_head.bbox_head.{i}.in_channels": w,
                         f"model.roi_head.bbox_head.{i}.conv_out_channels": w,
                         f"model.roi_head.bbox_head.{i}.fc_out_channels": 2 * w})
    return opts


def build(name: str, args: argparse.Namespace, dtype: str):
    """(model, optim_wrapper, kind) for one entry of MODELS."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    import det  # noqa: F401  (registers our modules in both toolkits)

    kind, path = MODELS[name]
    toolkit = TOOLKIT[kind]
    if "::" in str(path):  # a config shipped in an installed toolkit
        from mmengine.hub import get_config

        cfg = get_config(str(path))
    else:
        cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None  # random weights: speed does not depend on them
    if "pretrained" in cfg.model:
        cfg.model.pretrained = None
    if args.smoke:
        cfg.merge_from_dict(_smoke_overrides(name), allow_list_keys=True)
    if kind == "seg":
        cfg.model.data_preprocessor.size = (args.seg_size, args.seg_size)
    ow = cfg.optim_wrapper
    if args.fused_adamw and ow.optimizer.type == "AdamW":
        ow.optimizer.fused = True
    if dtype != "fp32":
        ow.type = "AmpOptimWrapper"
        ow.dtype = AMP_DTYPES[dtype]
        if dtype == "fp16":
            ow.loss_scale = "dynamic"
    with DefaultScope.overwrite_default_scope(toolkit):
        registry = __import__(f"{toolkit}.registry", fromlist=["MODELS"])
        model = revert_sync_batchnorm(registry.MODELS.build(cfg.model))
        model.init_weights()
        model = model.to(args.device).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.compile_backbone:
            model.backbone = torch.compile(model.backbone)
        optim_wrapper = build_optim_wrapper(model, ow)
    return model, optim_wrapper, kind


# ------------------------------------------------------------------------------------------------------ batches
def seg_batch(n: int, size: int, device: str, num_classes: int = 150) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).to(device))
        label = torch.randint(0, num_classes, (1, size, size), generator=g).to(device)
        samples.append(SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                   pad_shape=(size, size)), gt_sem_seg=PixelData(data=label)))
    return dict(inputs=inputs, data_samples=samples)


def det_batch(n: int, size: int, device: str, boxes_per_image: int = 10) -> dict:
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(0)
    inputs, samples = [], []
    for _ in range(n):
        xy = rng.uniform(0, size * 0.7, (boxes_per_image, 2))
        wh = rng.uniform(size * 0.05, size * 0.3, (boxes_per_image, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], axis=1).astype(np.float32)
        masks = np.zeros((boxes_per_image, size, size), dtype=np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            masks[i, y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.from_numpy(boxes).to(device),
                                           labels=torch.from_numpy(rng.integers(0, 80, boxes_per_image)).to(device),
                                           masks=BitmapMasks(masks, size, size))
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)).to(device))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


# ---------------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(name: str, dtype: str, args: argparse.Namespace) -> dict:
    model, optim_wrapper, kind = build(name, args, dtype)
    batch, size = (args.seg_batch, args.seg_size) if kind == "seg" else (args.det_batch, args.det_size)
    data = seg_batch(batch, size, args.device) if kind == "seg" else det_batch(batch, size, args.device)
    if args.channels_last:
        data["inputs"] = [x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
                          for x in data["inputs"]]
    cuda = args.device.startswith("cuda")
    times = []
    for i in range(args.warmup + args.iters):
        if i == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        _sync(args.device)
        t = time.perf_counter()
        model.train_step(data, optim_wrapper)
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    row = dict(model=name, dtype=dtype, batch=batch, size=size, ms_per_iter=round(ms, 1),
               img_per_s=round(batch / (ms / 1000), 2),
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
    del model, optim_wrapper, data
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    import mmcv
    import mmdet
    import mmengine
    import mmseg

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    lines = [f"### Dense training throughput, {datetime.date.today().isoformat()}, {device}", "",
             f"torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, "
             f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}; command: "
             f"`python benchmarks/dense_throughput.py {' '.join(sys.argv[1:])}`", "",
             "| model | dtype | batch | ms/iter | img/s | peak GiB | params (M) | vs stock |",
             "|---|---|---|---|---|---|---|---|"]
    by_key = {(r["model"], r["dtype"]): r for r in rows}
    for r in rows:
        base = by_key.get((BASELINE.get(r["model"], ""), r["dtype"]))
        ratio = f"{base['ms_per_iter'] / r['ms_per_iter']:.2f}x" if base else ""
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} x {r['size']}² | {r['ms_per_iter']} | "
                     f"{r['img_per_s']} | {r['peak_gib']} | {r['params_m']} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.smoke:
        args.seg_batch, args.seg_size, args.det_batch, args.det_size = 2, 64, 1, 128
        args.warmup, args.iters = min(args.warmup, 1), min(args.iters, 1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU training speed (use --device cpu --smoke "
                         "to check the script)")
    if not args.device.startswith("cuda") and any(d != "fp32" for d in args.dtype):
        raise SystemExit("AMP needs a GPU: pass --dtype fp32 with --device cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    from mmdet.utils import register_all_modules as register_mmdet
    from mmseg.utils import register_all_modules as register_mmseg

    register_mmdet(init_default_scope=False)
    register_mmseg(init_default_scope=False)
    rows = []
    for dtype in args.dtype:
        for name in args.models:
            row = run_one(name, dtype, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = markdown(rows, args)
    print(table)
    if args.json:
        write_record(args.json, {"command": " ".join(sys.argv), "rows": rows}, schema=SCHEMA)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)
    return rows


if __name__ == "__main__":
    main()
