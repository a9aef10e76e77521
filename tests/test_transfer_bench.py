"""transfer.bench: the throughput probes run (tiny model on CPU) and report what they measured."""
from __future__ import annotations

import torch

from transfer.bench import bench_features, bench_finetune, markdown_rows

TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, steps=2, warmup=1)


def test_bench_finetune_and_features() -> None:
    cpu = torch.device("cpu")
    ft = bench_finetune("vit_tiny", 4, cpu, amp=False, num_classes=5, **TINY)
    fe = bench_features("vit_small", 4, cpu, amp=False, **{**TINY, "depth": 4})
    assert ft["mode"] == "finetune" and ft["img_per_s"] > 0 and ft["peak_mem_gib"] is None
    assert fe["features"] == "cls4" and fe["img_per_s"] > 0  # the ViT-S linear-probe features
    table = markdown_rows([ft, fe], "cpu")
    assert "| vit_tiny/8 @32 | finetune | 4 | fp32 |" in table and "| vit_small/8 @32 | features | 4 |" in table
