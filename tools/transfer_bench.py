#!/usr/bin/env python
"""Fine-tuning and feature-extraction throughput (img/s) of ViT backbones, on synthetic inputs.

    python tools/transfer_bench.py                                   # ViT-S/16 and ViT-B/16, bf16 on CUDA
    python tools/transfer_bench.py --archs vit_small --batch-size 64 --out work_dirs/bench.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from ibot.records import schema_tag, write_record  # noqa: E402
from transfer.bench import bench_features, bench_finetune, markdown_rows  # noqa: E402
from transfer.runtime import amp_enabled, environment, resolve_device  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["vit_small", "vit_base"])
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch (features use 2x)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="auto")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    amp.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--out", help="also write the results (and environment) to this JSON record "
                                 "(schema ibot-suite/transfer-bench/1)")
    a = p.parse_args()
    device = resolve_device(a.device)
    use_amp = amp_enabled(a.amp, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores, as training would
        torch.backends.cudnn.allow_tf32 = True
    results = []
    for arch in a.archs:
        kw = dict(device=device, amp=use_amp, steps=a.steps, warmup=a.warmup, img_size=a.img_size,
                  patch_size=a.patch_size)
        results.append(bench_finetune(arch, a.batch_size, **kw))
        results.append(bench_features(arch, 2 * a.batch_size, **kw))
        print(json.dumps(results[-2:]), flush=True)
    env = environment(device, 1, use_amp)
    print(markdown_rows(results, env.get("gpu", str(device))))
    if a.out:
        write_record(a.out, {"results": results, "env": env}, schema=schema_tag("transfer-bench", 1))
