"""iBOT pretraining throughput: ms/step, img/s, peak memory and MFU of one training iteration.

(a) model compute on random tensors (crops + masks already on the device), (b) end to end from
image files through the real loader (``pretrain.engine.build_loader``).

    python benchmarks/pretrain_throughput.py --archs vit_small vit_base --batch 64 --local-crops 10
    python benchmarks/pretrain_throughput.py --data /data/imagenet/train --workers 16   # adds (b)
    python benchmarks/pretrain_throughput.py --tiny --steps 3      # CPU smoke run of the script

Prints a table; record results with the GPU, command and date in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from ibot.distributed import DistEnv  # noqa: E402
from ibot.loss import iBOTLoss  # noqa: E402
from ibot.masking import MaskGenerator, max_masked_tokens  # noqa: E402
from ibot.model import build_student_teacher  # noqa: E402
from ibot.optim import param_groups  # noqa: E402
from ibot.schedules import cosine_scheduler  # noqa: E402
from ibot.train_step import iBOTTrainStep  # noqa: E402
from pretrain.monitor import peak_flops, train_flops_per_image  # noqa: E402

CONFIGS = {"vit_small": "ibot_vit-s16_800e_in1k.py", "vit_base": "ibot_vit-b16_400e_in1k.py",
           "vit_large": "ibot_vit-l16_250e_in1k.py"}
HERE = os.path.dirname(os.path.abspath(__file__))


def make_cfg(arch: str, args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(os.path.join(HERE, "..", "pretrain", "configs", CONFIGS[arch]))
    cfg.augmentation.local_crops_number = args.local_crops
    cfg.data.batch_size_per_gpu = args.batch
    cfg.train.amp = args.amp
    cfg.train.compile = args.compile
    if args.tiny:
        cfg.model.vit_overrides = dict(embed_dim=64, depth=2, num_heads=2)
        cfg.model.update(patch_size=8, img_size=32, out_dim=256, patch_out_dim=256,
                         head_hidden_dim=128, head_bottleneck_dim=64)
        cfg.augmentation.update(global_crop_size=32, local_crop_size=16)
    return cfg


def build_step(cfg: Config, device: torch.device) -> iBOTTrainStep:
    student, teacher = build_student_teacher(**cfg.model)
    student.to(device)
    teacher.to(device)
    a, lo = cfg.augmentation, cfg.loss
    loss = iBOTLoss(cfg.model.out_dim, cfg.model.out_dim, a.global_crops_number, a.local_crops_number,
                    lo.warmup_teacher_temp, lo.teacher_temp, lo.warmup_teacher_patch_temp,
                    lo.teacher_patch_temp, lo.warmup_teacher_temp_epochs, cfg.train.epochs).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(student), **({"fused": True} if cuda else {"foreach": True}))
    sched = cosine_scheduler(1e-4, 1e-6, 1, 10_000)
    grid = a.global_crop_size // cfg.model.patch_size
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if cuda else None
    mom = cosine_scheduler(0.996, 1.0, 1, 10_000)
    step = iBOTTrainStep(student, teacher, loss, opt, sched, sched, mom, freeze_last_layer=0,
                         max_masked=max_masked_tokens((grid, grid), cfg.masking.pred_ratio,
                                                      cfg.masking.pred_ratio_var),
                         autocast_dtype=amp,
                         scaler=torch.amp.GradScaler("cuda") if cuda and cfg.train.amp == "fp16" else None)
    if cfg.train.compile:
        step.student_pass = torch.compile(step.student_pass)
    return step


def random_batch(cfg: Config, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    a, b = cfg.augmentation, cfg.data.batch_size_per_gpu
    gen = MaskGenerator(cfg.masking.pred_ratio, cfg.masking.pred_ratio_var)
    grid = a.global_crop_size // cfg.model.patch_size
    crops = [torch.randn(b, 3, a.global_crop_size, a.global_crop_size, device=device)
             for _ in range(a.global_crops_number)]
    crops += [torch.randn(b, 3, a.local_crop_size, a.local_crop_size, device=device)
              for _ in range(a.local_crops_number)]
    masks = [torch.stack([torch.from_numpy(gen((grid, grid))) for _ in range(b)]).to(device)
             for _ in range(a.global_crops_number)]
    return crops, masks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: iBOTTrainStep, batches, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per iteration after ``warmup`` iterations; ``batches`` yields (crops, masks)."""
    it = iter(batches)
    for i in range(warmup):
        step(*next(it), epoch=1, it=i)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step(*next(it), epoch=1, it=warmup + i)
    sync(device)
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["vit_small", "vit_base"], choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data", help="image folder for the end-to-end measurement (b)")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--tiny", action="store_true", help="toy model sizes (CPU smoke run)")
    args = p.parse_args()
    args.amp = None if args.amp == "none" else args.amp
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for arch in args.archs:
        cfg = make_cfg(arch, args)
        step = build_step(cfg, device)
        imgs = cfg.data.batch_size_per_gpu  # images per iteration (each with all its crops)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        crops, masks = random_batch(cfg, device)
        sec = time_steps(step, iter(lambda: (crops, masks), None), device, args.warmup, args.steps)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        peak = peak_flops(device)
        flops = train_flops_per_image(cfg)
        mfu = imgs / sec * flops / peak if peak else float("nan")
        rows.append((arch, "model compute", sec * 1e3, imgs / sec, mem, mfu))
        if args.data:
            from pretrain.engine import build_loader

            cfg.data.root, cfg.data.num_workers = args.data, args.workers
            loader, _ = build_loader(cfg, DistEnv(0, 1, 0, device))

            def batches():
                while True:
                    for c, m, _ in loader:
                        yield ([x.to(device, non_blocking=True) for x in c],
                               [x.to(device, non_blocking=True) for x in m])

            sec = time_steps(step, batches(), device, args.warmup, args.steps)
            rows.append((arch, f"end to end ({args.workers} workers)", sec * 1e3, imgs / sec, mem,
                         imgs / sec * flops / peak if peak else float("nan")))
        del step
    print(f"\n{name}, batch {args.batch}, 2 global + {args.local_crops} local crops, amp={args.amp}, "
          f"compile={args.compile}, torch {torch.__version__}\n")
    print("| arch | measurement | ms/step | img/s | peak GiB | MFU |\n|---|---|---|---|---|---|")
    for arch, what, ms, ips, mem, mfu in rows:
        print(f"| {arch} | {what} | {ms:.1f} | {ips:.1f} | {mem:.2f} | {mfu:.3f} |")


if __name__ == "__main__":
    main()
