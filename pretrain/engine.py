"""The iBOT pretraining loop: builds everything from a config, trains, checkpoints, resumes.

One iteration is ``ibot.train_step.iBOTTrainStep`` (the official step, parity-tested). Around it:
data parallelism over processes, seeded per-sample data, atomic checkpoints with the full training
state (bit-identical resume), logging at an interval (the only host sync), a non-finite-loss stop that
keeps the last good checkpoint, and an export of the teacher backbone at the end.

``train.parallel``: ``'ddp'`` (default) wraps the student pass in DDP, each process holding full
replicas; ``'fsdp'`` shards student, teacher, gradients and optimizer state with FSDP2
(``pretrain/fsdp.py``) to save the memory of those replicas (ViT-L). Both give the same losses up to
float rounding and write the same checkpoint files (full state dicts), so a run resumes under either.
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ibot.augment import MultiCropAugmentation
from ibot.checkpoint import save_file
from ibot.loss import iBOTLoss
from ibot.masking import MaskGenerator, max_masked_tokens
from ibot.model import build_student_teacher
from ibot.optim import param_groups
from ibot.schedules import cosine_scheduler
from ibot.train_step import StudentPass, TeacherPass, iBOTTrainStep
from ibot.vit import build_vit, iBOTViT
from pretrain.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from pretrain.data import PretrainDataset, ResumableBatchSampler, collate, sample_seed, scan_images
from pretrain.gpu_augment import BatchedMultiCrop
from pretrain.distributed import DistEnv, all_reduce_mean, barrier, init_distributed, shutdown
from pretrain.fsdp import (
    PARALLEL_MODES,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    shard_student_teacher,
)
from pretrain.knn_monitor import KNNMonitor
from pretrain.monitor import Monitor, train_flops_per_image

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def _amp(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, use GradScaler); mixed precision only on CUDA."""
    amp = cfg.train.amp
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"train.amp must be 'bf16', 'fp16' or None, got {amp!r}")
    if amp is None or device.type != "cuda":
        return None, False
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


def _sharded(cfg: Config, env: DistEnv) -> bool:
    """Whether this run shards with FSDP (``train.parallel='fsdp'`` and more than one process)."""
    mode = cfg.train.get("parallel", "ddp")  # configs dumped before the option existed lack it
    if mode not in PARALLEL_MODES:
        raise ValueError(f"train.parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    if mode == "fsdp" and env.world == 1:
        log.warning("train.parallel='fsdp' with one process: nothing to shard, training unwrapped")
    return mode == "fsdp" and env.world > 1


def _wrap(student: torch.nn.Module, teacher: torch.nn.Module, head_on_masked_only: bool, sharded: bool,
          env: DistEnv) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(student pass, teacher pass) as the step calls them: DDP over the student pass, or both
    sharded in place (FSDP), or plain for one process."""
    spass, tpass = StudentPass(student, head_on_masked_only), TeacherPass(teacher)
    if sharded:
        shard_student_teacher(spass, tpass, env.device, env.world)
    elif env.world > 1:
        cuda = env.device.type == "cuda"
        return DistributedDataParallel(spass, device_ids=[env.local_rank] if cuda else None), tpass
    return spass, tpass


def build_loader(cfg: Config, env: DistEnv) -> tuple[DataLoader, ResumableBatchSampler]:
    a, d = cfg.augmentation, cfg.data
    paths, _, _ = scan_images(d.root, d.layout)
    aug = MultiCropAugmentation(
        global_crops_scale=tuple(a.global_crops_scale), local_crops_scale=tuple(a.local_crops_scale),
        global_crops_number=a.global_crops_number, local_crops_number=a.local_crops_number,
        global_crop_size=a.global_crop_size, local_crop_size=a.local_crop_size)
    masks = MaskGenerator(cfg.masking.pred_ratio, cfg.masking.pred_ratio_var,
                          pred_shape=cfg.masking.pred_shape, pred_start_epoch=cfg.masking.pred_start_epoch)
    side = round(a.global_crop_size * 8 / 7) if d.get("gpu_augment") else None
    ds = PretrainDataset(paths, aug, masks, cfg.model.patch_size, a.global_crops_number,
                         seed=cfg.train.seed, on_bad_file=d.on_bad_file, gpu_augment_side=side)
    sampler = ResumableBatchSampler(len(ds), d.batch_size_per_gpu, env.rank, env.world, seed=cfg.train.seed)
    # A generator of its own: each new iterator (every epoch, and on resume mid-epoch) would otherwise
    # draw from the global RNG and shift the drop-path stream, so a resumed run would diverge.
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=d.num_workers, collate_fn=collate,
                        pin_memory=env.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if d.num_workers else None,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    return loader, sampler


def train(cfg: Config, work_dir: str, resume: bool | str = True, device: str | None = None) -> dict:
    """Run pretraining as configured; returns the last logged record.

    ``resume``: True = continue from the newest checkpoint in ``work_dir`` if any, a path = from
    that checkpoint, False = start fresh (refuses to overwrite a work dir that has checkpoints).
    """
    env = init_distributed(device)
    try:
        return _train(cfg, work_dir, resume, env)
    finally:
        shutdown(env)


def _train(cfg: Config, work_dir: str, resume: bool | str, env: DistEnv) -> dict:
    os.makedirs(work_dir, exist_ok=True)
    if env.is_main:
        cfg.dump(os.path.join(work_dir, "config.py"))
    loader, sampler = build_loader(cfg, env)
    niter = sampler.batches_per_epoch
    epochs = cfg.train.epochs
    total = epochs * niter

    # Identical initial weights on every rank: the teacher is not DDP, and FSDP shards each rank's copy.
    torch.manual_seed(cfg.train.seed)
    student, teacher = build_student_teacher(**cfg.model)
    torch.manual_seed(cfg.train.seed + env.rank)  # drop-path draws differ per rank, like the official
    student.to(env.device)
    teacher.to(env.device)
    a, lo, o = cfg.augmentation, cfg.loss, cfg.optim
    loss = iBOTLoss(
        cfg.model.out_dim, cfg.model.out_dim if (cfg.model.shared_head or cfg.model.shared_head_teacher)
        else cfg.model.patch_out_dim, a.global_crops_number, a.local_crops_number,
        lo.warmup_teacher_temp, lo.teacher_temp, lo.warmup_teacher_patch_temp, lo.teacher_patch_temp,
        lo.warmup_teacher_temp_epochs, epochs, lambda1=lo.lambda1, lambda2=lo.lambda2,
        mim_start_epoch=cfg.masking.pred_start_epoch).to(env.device)
    cuda = env.device.type == "cuda"
    sharded = _sharded(cfg, env)
    # Before the optimizer: FSDP replaces the parameters with sharded ones.
    spass, tpass = _wrap(student, teacher, cfg.train.head_on_masked_only, sharded, env)
    if sharded and env.is_main:
        print(f"FSDP: student and teacher sharded over {env.world} processes", flush=True)
    optimizer = torch.optim.AdamW(param_groups(student), **({"fused": True} if cuda else {"foreach": True}))
    batch = cfg.data.batch_size_per_gpu * env.world
    lr = cosine_scheduler(o.lr * batch / 256.0, o.min_lr, epochs, niter, warmup_epochs=o.warmup_epochs)
    wd = cosine_scheduler(o.weight_decay, o.weight_decay_end, epochs, niter)
    mom = cosine_scheduler(o.momentum_teacher, 1.0, epochs, niter)
    dtype, use_scaler = _amp(cfg, env.device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    if cfg.train.compile:
        spass = torch.compile(spass)
    grid = a.global_crop_size // cfg.model.patch_size
    step = iBOTTrainStep(
        student, teacher, loss, optimizer, lr, wd, mom, clip_grad=o.clip_grad,
        freeze_last_layer=o.freeze_last_layer, head_on_masked_only=cfg.train.head_on_masked_only,
        max_masked=max_masked_tokens((grid, grid), cfg.masking.pred_ratio, cfg.masking.pred_ratio_var),
        autocast_dtype=dtype, scaler=scaler, student_pass=spass, teacher_forward=tpass)

    start = 0
    ckpt_path = latest_checkpoint(work_dir) if resume is True else (resume or None)
    if resume is False and latest_checkpoint(work_dir):
        raise FileExistsError(f"{work_dir} already holds checkpoints; resume, or choose another work dir")
    if ckpt_path:
        start = _restore(ckpt_path, student, teacher, loss, optimizer, scaler, sharded, env)
        if env.is_main:
            print(f"resumed from {ckpt_path} at iteration {start}/{total}", flush=True)
    knn_cfg = dict(cfg.monitor.knn)
    knn_every = knn_cfg.pop("interval_epochs")
    knn_on = knn_cfg["root"] is not None
    knn = KNNMonitor(**knn_cfg) if knn_on and env.is_main else None
    device_aug = None
    if cfg.data.get("gpu_augment"):
        device_aug = BatchedMultiCrop(
            tuple(a.global_crops_scale), tuple(a.local_crops_scale), a.global_crops_number,
            a.local_crops_number, a.global_crop_size, a.local_crop_size).to(env.device)
    images_per_iter = batch * (a.global_crops_number + a.local_crops_number)
    monitor = Monitor(work_dir, total, start, train_flops_per_image(cfg) / (a.global_crops_number + a.local_crops_number),
                      env.device, env.world, cfg.log.tensorboard, enabled=env.is_main)
    record: dict = {}
    acc = torch.zeros(4, device=env.device)  # cls, patch, loss, non-finite count since the last log
    bad_files = torch.zeros((), device=env.device)
    n_acc = 0
    it = start
    try:
        for epoch in range(start // niter, epochs):
            sampler.state.epoch, sampler.state.batch = epoch, it - epoch * niter
            for crops, masks, n_bad in loader:
                if device_aug is not None:
                    canvases, sizes = (t.to(env.device, non_blocking=True) for t in crops)
                    # Seeded per (epoch, iteration, rank): resumes reproduce the same crops.
                    crops = device_aug(canvases, sizes, seed=sample_seed(cfg.train.seed, epoch, it * env.world + env.rank))
                else:
                    crops = [c.to(env.device, non_blocking=True) for c in crops]
                masks = [m.to(env.device, non_blocking=True) for m in masks]
                out = step(crops, masks, epoch, it)
                it += 1
                terms = torch.stack((out["cls"], out["patch"], out["loss"]))
                acc[:3] += terms
                acc[3] += (~torch.isfinite(out["loss"])).float()
                bad_files += n_bad.to(env.device)
                n_acc += 1
                last = it == total or it % niter == 0
                ckpt_due = last or (cfg.checkpoint.interval_iters and it % cfg.checkpoint.interval_iters == 0)
                if it % cfg.log.interval == 0 or ckpt_due:
                    record = _log(monitor, acc, n_acc, bad_files, step, epoch, it, images_per_iter, env)
                    acc.zero_()
                    n_acc = 0
                if ckpt_due:
                    _save(work_dir, cfg, it, niter, student, teacher, loss, optimizer, scaler, sharded, env)
            if knn_on and ((epoch + 1) % knn_every == 0 or epoch + 1 == epochs):
                backbone = _knn_backbone(cfg, teacher, sharded, env)  # a collective under FSDP
                if knn is not None:
                    top1 = knn(backbone, env.device)
                    monitor.log_scalars(it, {"knn_top1": top1})
                    record = {**record, "knn_top1": top1}
                barrier(env)
    finally:
        monitor.close()
    teacher_sd = full_model_state(teacher) if sharded else teacher.state_dict()  # FSDP: a collective
    if env.is_main:
        path = os.path.join(work_dir, "teacher_backbone.pth")
        save_file({"state_dict": _backbone_state(teacher_sd)}, path)
        print(f"done: {it} iterations; teacher backbone for downstream use: {path}", flush=True)
    barrier(env)
    return record


def _backbone_state(model_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("backbone."):]: v.detach().cpu() for k, v in model_sd.items() if k.startswith("backbone.")}


def _knn_backbone(cfg: Config, teacher: torch.nn.Module, sharded: bool, env: DistEnv) -> iBOTViT | None:
    """The teacher backbone for the k-NN monitor on rank 0. Under FSDP the shards are gathered (all
    ranks call this) into a plain copy: the monitor runs on rank 0 alone, and a sharded forward would
    wait for the other ranks."""
    if not sharded:
        return teacher.backbone
    sd = full_model_state(teacher)
    if not env.is_main:
        return None
    m = cfg.model
    vit = build_vit(m.arch, patch_size=m.patch_size, img_size=m.img_size, **dict(m.vit_overrides))
    vit.load_state_dict(_backbone_state(sd))
    return vit.to(env.device)


def _log(monitor: Monitor, acc: torch.Tensor, n: int, bad_files: torch.Tensor, step: iBOTTrainStep,
         epoch: int, it: int, images_per_iter: int, env: DistEnv) -> dict:
    vals = all_reduce_mean(acc, env)
    vals = vals.tolist()  # the host sync of this interval
    if vals[3] > 0 or not math.isfinite(vals[2]):
        raise NonFiniteLossError(
            f"non-finite loss between iterations {it - n + 1} and {it} (epoch {epoch}); stopping. The last "
            "good checkpoint is kept; lower the learning rate, use bf16 instead of fp16, or resume from it.")
    g = step.optimizer.param_groups[0]
    scalars = dict(loss=vals[2] / n, cls=vals[0] / n, patch=vals[1] / n, lr=g["lr"], wd=g["weight_decay"],
                   momentum=float(step.momentum_schedule[it - 1]), epoch=epoch,
                   teacher_temp=float(step.loss.teacher_temp_schedule[epoch]),
                   teacher_patch_temp=float(step.loss.teacher_temp2_schedule[epoch]),
                   skipped_files=float(all_reduce_mean(bad_files, env).item() * env.world))
    return monitor.log(it, scalars, images_per_iter)


def _rng_states(env: DistEnv) -> list[torch.Tensor]:
    own = [torch.get_rng_state()]
    if env.device.type == "cuda":
        own.append(torch.cuda.get_rng_state(env.device))
    if env.world == 1:
        return own

    gathered: list = [None] * env.world
    dist.all_gather_object(gathered, own)
    return [s for per_rank in gathered for s in per_rank]  # flattened, rank-major


def _weights(student: torch.nn.Module, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer,
             sharded: bool, env: DistEnv) -> dict:
    """student, teacher and optimizer state dicts on rank 0 as DDP writes them (under FSDP gathered
    from the shards: a collective); ``{}`` on the other ranks."""
    if sharded:
        return dict(student=full_model_state(student), teacher=full_model_state(teacher),
                    optimizer=full_optimizer_state(optimizer))
    if not env.is_main:
        return {}
    return dict(student=student.state_dict(), teacher=teacher.state_dict(), optimizer=optimizer.state_dict())


def _save(work_dir, cfg, it, niter, student, teacher, loss, optimizer, scaler, sharded, env) -> None:
    rng = _rng_states(env)  # a collective: every rank calls it
    weights = _weights(student, teacher, optimizer, sharded, env)
    if env.is_main:
        state = dict(
            **weights, ibot_loss=loss.state_dict(), fp16_scaler=scaler.state_dict() if scaler else None,
            epoch=it // niter, iteration=it, sampler=dict(epoch=it // niter, batch=it % niter),
            rng=rng, world_size=env.world, config=cfg.to_dict())
        save_checkpoint(state, work_dir, cfg.checkpoint.keep_last, cfg.checkpoint.saveckp_freq, niter)
    barrier(env)


def _restore(path, student, teacher, loss, optimizer, scaler, sharded: bool, env: DistEnv) -> int:
    state = load_checkpoint(path)  # every rank reads the full state; FSDP keeps its own shards
    if sharded:
        load_full_model_state(student, state["student"])
        load_full_model_state(teacher, state["teacher"])
        load_full_optimizer_state(optimizer, state["optimizer"])
    else:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
    loss.load_state_dict(state["ibot_loss"])
    if scaler is not None and state.get("fp16_scaler"):
        scaler.load_state_dict(state["fp16_scaler"])
    per_rank = 2 if env.device.type == "cuda" else 1
    rng = state["rng"]
    if state.get("world_size") == env.world and len(rng) == per_rank * env.world:
        mine = rng[env.rank * per_rank:(env.rank + 1) * per_rank]
        torch.set_rng_state(mine[0].cpu())
        if per_rank == 2:
            torch.cuda.set_rng_state(mine[1].cpu(), env.device)
    else:
        log.warning("checkpoint was written by %s processes, now %s: drop-path RNG streams restart "
                    "(training continues, but not bit-identically)", state.get("world_size"), env.world)
    return int(state["iteration"])
