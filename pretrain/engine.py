"""The iBOT pretraining loop: builds everything from a config, trains, checkpoints, resumes.

One iteration is ``ibot.train_step.iBOTTrainStep`` (the official step, parity-tested). Around it:
data parallelism over processes, seeded per-sample data, atomic checkpoints with the full training
state (bit-identical resume), logging at an interval (the only host sync), a non-finite-loss stop that
keeps the last good checkpoint, and an export of the teacher backbone at the end (a self-describing
file, :func:`ibot.checkpoint.save_backbone`).

:func:`train` = :func:`build_run` (the pieces, in a :class:`PretrainRun`) + :func:`run_loop`.

Failure behaviour: the merged config is validated first (:func:`pretrain.settings.validate_config`: unknown keys,
value kinds, ranges); a resume takes the newest *usable* checkpoint (a truncated or foreign newer one is named and
moved aside) and refuses one trained with other result-changing settings unless ``force_resume``; all of this, and
building the data and models, happens before the work dir is touched, so a refused run leaves it byte-identical.
Then stale temporary files of interrupted writes are removed, ``config.py`` is written and ``log.jsonl`` trimmed
to the resumed iteration (atomically). Unusable images are skipped with a warning or fail the run, naming the
file (``data.on_bad_file``).

``train.parallel``: ``'ddp'`` (default) wraps the student pass in DDP, each process holding full
replicas; ``'fsdp'`` shards student, teacher, gradients and optimizer state with FSDP2
(``pretrain/fsdp.py``) to save the memory of those replicas (ViT-L). Both give the same losses up to
float rounding and write the same checkpoint files (full state dicts), so a run resumes under either.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from mmengine.config import Config
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ibot.atomic import atomic_write_text
from ibot.augment import MultiCropAugmentation
from ibot.checkpoint import CheckpointError, describe_backbone, save_backbone
from ibot.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    gathered_rng_states,
    init_distributed,
    set_rng_state,
    shutdown,
    wrap_ddp,
)
from ibot.loss import iBOTLoss
from ibot.masking import MaskGenerator, max_masked_tokens
from ibot.model import build_student_teacher
from ibot.optim import param_groups
from ibot.schedules import cosine_scheduler
from ibot.train_step import StudentPass, TeacherPass, iBOTTrainStep
from ibot.vit import build_vit, iBOTViT
from pretrain.checkpointing import (
    ResumeError,
    WorkDirInUseError,
    find_resumable,
    list_checkpoints,
    read_resumable,
    remove_stale_temp_files,
    save_checkpoint,
    set_aside,
)
from pretrain.data import PretrainDataset, ResumableBatchSampler, collate, sample_seed, scan_images
from pretrain.fsdp import (
    PARALLEL_MODES,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    shard_student_teacher,
)
from pretrain.gpu_augment import BatchedMultiCrop
from pretrain.knn_monitor import KNNMonitor
from pretrain.monitor import LOG_FILE, Monitor, train_flops_per_image, trim_log
from pretrain.settings import result_differences, validate_config

log = logging.getLogger(__name__)

#: File name of the exported teacher backbone in the work dir.
TEACHER_BACKBONE = "teacher_backbone.pth"


class NonFiniteLossError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class PretrainRun:
    """The built pieces of one pretraining run: what :func:`build_run` makes and :func:`run_loop` drives.

    ``step`` holds the student, teacher, loss, optimizer and scaler; ``start`` is the number of iterations
    already done (from the resumed checkpoint, else 0).
    """

    cfg: Config
    work_dir: str
    env: DistEnv
    loader: DataLoader
    sampler: ResumableBatchSampler
    step: iBOTTrainStep
    sharded: bool
    start: int = 0
    knn: KNNMonitor | None = None
    device_aug: BatchedMultiCrop | None = None

    @property
    def niter(self) -> int:
        """Iterations per epoch."""
        return self.sampler.batches_per_epoch

    @property
    def total(self) -> int:
        return self.cfg.train.epochs * self.niter

    @property
    def crops_per_image(self) -> int:
        a = self.cfg.augmentation
        return a.global_crops_number + a.local_crops_number

    @property
    def images_per_iter(self) -> int:
        """Crops per iteration over all processes (the img/s unit of the monitor)."""
        return self.cfg.data.batch_size_per_gpu * self.env.world * self.crops_per_image

    @property
    def knn_enabled(self) -> bool:
        """Whether the k-NN monitor runs (all ranks: under FSDP gathering the teacher is a collective)."""
        return self.cfg.monitor.knn.root is not None


@dataclass
class _Meter:
    """Sums since the last log, on the device (read back only at the logging interval: the one host sync)."""

    device: torch.device
    terms: Tensor = field(init=False)  # (4,): cls, patch, loss, count of non-finite losses
    bad_files: Tensor = field(init=False)  # (): unreadable images skipped by the loader
    n: int = 0

    def __post_init__(self) -> None:
        self.terms = torch.zeros(4, device=self.device)
        self.bad_files = torch.zeros((), device=self.device)

    def add(self, out: dict[str, Tensor], n_bad: Tensor) -> None:
        self.terms[:3] += torch.stack((out["cls"], out["patch"], out["loss"]))
        self.terms[3] += (~torch.isfinite(out["loss"])).float()
        self.bad_files += n_bad.to(self.device)
        self.n += 1

    def reset(self) -> None:
        self.terms.zero_()
        self.n = 0


# --------------------------------------------------------------------------------------------- build steps
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


def _wrap(student: nn.Module, teacher: nn.Module, head_on_masked_only: bool, sharded: bool,
          env: DistEnv) -> tuple[nn.Module, nn.Module]:
    """(student pass, teacher pass) as the step calls them: DDP over the student pass, or both
    sharded in place (FSDP), or plain for one process."""
    spass, tpass = StudentPass(student, head_on_masked_only), TeacherPass(teacher)
    if sharded:
        shard_student_teacher(spass, tpass, env.device, env.world)
        return spass, tpass
    return wrap_ddp(spass, env), tpass


def build_loader(cfg: Config, env: DistEnv) -> tuple[DataLoader, ResumableBatchSampler]:
    """The pretraining loader: per-sample seeded multi-crop + masks, batches of this rank's share."""
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


def _build_models(cfg: Config, env: DistEnv) -> tuple[nn.Module, nn.Module, iBOTLoss]:
    """Student, teacher and loss on the device, seeded for identical initial weights on every rank (the
    teacher is not DDP, and FSDP shards each rank's copy)."""
    torch.manual_seed(cfg.train.seed)
    student, teacher = build_student_teacher(**cfg.model)
    torch.manual_seed(cfg.train.seed + env.rank)  # drop-path draws differ per rank, like the official
    student.to(env.device)
    teacher.to(env.device)
    a, lo = cfg.augmentation, cfg.loss
    shared = cfg.model.shared_head or cfg.model.shared_head_teacher
    loss = iBOTLoss(
        cfg.model.out_dim, cfg.model.out_dim if shared else cfg.model.patch_out_dim, a.global_crops_number,
        a.local_crops_number, lo.warmup_teacher_temp, lo.teacher_temp, lo.warmup_teacher_patch_temp,
        lo.teacher_patch_temp, lo.warmup_teacher_temp_epochs, cfg.train.epochs, lambda1=lo.lambda1,
        lambda2=lo.lambda2, mim_start_epoch=cfg.masking.pred_start_epoch).to(env.device)
    return student, teacher, loss


def _build_step(cfg: Config, env: DistEnv, student: nn.Module, teacher: nn.Module, loss: iBOTLoss,
                niter: int) -> tuple[iBOTTrainStep, bool]:
    """(the train step with its optimizer, schedules and wrapped passes, whether it is FSDP-sharded)."""
    o, epochs = cfg.optim, cfg.train.epochs
    sharded = _sharded(cfg, env)
    # Before the optimizer: FSDP replaces the parameters with sharded ones.
    spass, tpass = _wrap(student, teacher, cfg.train.head_on_masked_only, sharded, env)
    if sharded and env.is_main:
        print(f"FSDP: student and teacher sharded over {env.world} processes", flush=True)
    cuda = env.device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(student), **({"fused": True} if cuda else {"foreach": True}))
    batch = cfg.data.batch_size_per_gpu * env.world
    lr = cosine_scheduler(o.lr * batch / 256.0, o.min_lr, epochs, niter, warmup_epochs=o.warmup_epochs)
    wd = cosine_scheduler(o.weight_decay, o.weight_decay_end, epochs, niter)
    mom = cosine_scheduler(o.momentum_teacher, 1.0, epochs, niter)
    dtype, use_scaler = _amp(cfg, env.device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    if cfg.train.compile:
        spass = torch.compile(spass)
    grid = cfg.augmentation.global_crop_size // cfg.model.patch_size
    step = iBOTTrainStep(
        student, teacher, loss, optimizer, lr, wd, mom, clip_grad=o.clip_grad,
        freeze_last_layer=o.freeze_last_layer, head_on_masked_only=cfg.train.head_on_masked_only,
        max_masked=max_masked_tokens((grid, grid), cfg.masking.pred_ratio, cfg.masking.pred_ratio_var),
        autocast_dtype=dtype, scaler=scaler, student_pass=spass, teacher_forward=tpass)
    return step, sharded


def _checkpoint_to_resume(work_dir: str, resume: bool | str) -> tuple[str | None, dict[str, Any] | None,
                                                                      list[tuple[str, str]]]:
    """(path, state) of the checkpoint to continue from, and the (path, reason) of unusable newer checkpoints of
    the work dir that were skipped. ``resume``: True = the newest usable one in the work dir (none: start fresh),
    a path = that file, False = none (refuses a work dir that already has checkpoints). Reads only."""
    if resume is False:
        ckpts = list_checkpoints(work_dir)
        if ckpts:
            raise WorkDirInUseError(
                f"{work_dir} already holds checkpoints ({len(ckpts)}, newest {ckpts[-1][1]}); resume (drop "
                "--no-resume), choose another --work-dir, or delete its checkpoints/ folder to start over")
        return None, None, []
    if resume is True:
        return find_resumable(work_dir)
    path = os.fspath(resume)
    try:
        return path, read_resumable(path), []
    except (OSError, CheckpointError, ValueError, KeyError, EOFError, RuntimeError, TypeError, IndexError) as e:
        raise ResumeError(f"cannot resume from {path}: {e}\nPass another checkpoint to --resume (or none, for the "
                          "newest usable one of the work dir). Nothing in the work dir was changed.") from e


def _check_settings(cfg: Config, state: dict[str, Any], path: str, work_dir: str, world: int,
                    force: bool) -> list[str]:
    """Compare the result-changing settings of the checkpoint's config with ``cfg`` (see
    :data:`pretrain.settings.NON_RESULT_KEYS` for what may change); refuse differences unless ``force``. Returns
    the differences (forced)."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        log.warning("checkpoint %s stores no config: its settings cannot be compared with the current ones", path)
        return []
    diffs = result_differences(stored, cfg.to_dict(), state.get("world_size"), world)
    if diffs and not force:
        listing = "\n  ".join(diffs)
        raise ResumeError(
            f"refusing to resume from {path}: it was trained with other settings, and continuing would mix two "
            f"runs (replayed iterations, other schedules):\n  {listing}\nRun with the checkpoint's values (those "
            f"of {os.path.join(work_dir, 'config.py')} when the checkpoint is from this work dir), use another "
            "--work-dir for the new settings, or pass --force-resume to continue with the new ones (config.py is "
            "then rewritten). Nothing in the work dir was changed.")
    return diffs


def _build_knn(cfg: Config, env: DistEnv) -> KNNMonitor | None:
    """The k-NN monitor on rank 0 (None elsewhere, and when ``monitor.knn.root`` is None)."""
    knn_cfg = dict(cfg.monitor.knn)
    knn_cfg.pop("interval_epochs")
    if knn_cfg["root"] is None or not env.is_main:
        return None
    return KNNMonitor(**knn_cfg)


def _build_device_aug(cfg: Config, env: DistEnv) -> BatchedMultiCrop | None:
    """``data.gpu_augment``: the batched multi-crop on the device (workers then only decode)."""
    if not cfg.data.get("gpu_augment"):
        return None
    a = cfg.augmentation
    return BatchedMultiCrop(
        tuple(a.global_crops_scale), tuple(a.local_crops_scale), a.global_crops_number,
        a.local_crops_number, a.global_crop_size, a.local_crop_size).to(env.device)


def build_run(cfg: Config, work_dir: str, resume: bool | str, env: DistEnv,
              force_resume: bool = False) -> PretrainRun:
    """Every piece of a run, restored from a checkpoint when resuming (see :func:`train` for ``resume`` and
    ``force_resume``).

    Everything that can refuse the run (config validation, the checkpoint to resume from, changed settings, the
    data, the models, the restore) happens before the work dir is touched: a refused run leaves it as it was.
    Then the main process prepares it (:func:`_prepare_work_dir`). The order of the steps is part of the
    numbers: model initialisation and the drop-path stream are seeded here.
    """
    validate_config(cfg)
    ckpt_path, state, bad = _checkpoint_to_resume(work_dir, resume)
    forced = _check_settings(cfg, state, ckpt_path, work_dir, env.world, force_resume) if state is not None else []
    loader, sampler = build_loader(cfg, env)
    student, teacher, loss = _build_models(cfg, env)
    step, sharded = _build_step(cfg, env, student, teacher, loss, sampler.batches_per_epoch)
    run = PretrainRun(cfg, work_dir, env, loader, sampler, step, sharded)
    if state is not None:
        run.start = _restore(state, ckpt_path, run)
        del state
    run.knn = _build_knn(cfg, env)
    run.device_aug = _build_device_aug(cfg, env)
    barrier()  # every process has read the checkpoints before the main one moves unusable ones aside
    if env.is_main:
        _prepare_work_dir(run, bad, ckpt_path)
        if forced:
            log.warning("--force-resume: continuing from %s with changed settings (the checkpoint's values first):"
                        "\n  %s", ckpt_path, "\n  ".join(forced))
        if ckpt_path:
            print(f"resumed from {ckpt_path} at iteration {run.start}/{run.total}", flush=True)
    return run


def _prepare_work_dir(run: PretrainRun, bad: list[tuple[str, str]], resumed: str | None) -> None:
    """Make the work dir consistent with the start of this run (main process, before anything is written):
    remove temporary files of interrupted writes, move unusable checkpoints aside, write config.py (atomically),
    and trim log.jsonl to the resumed iteration (those after it are replayed)."""
    work_dir = run.work_dir
    os.makedirs(work_dir, exist_ok=True)
    removed = remove_stale_temp_files(work_dir)
    if removed:
        log.warning("removed %d temporary file(s) of interrupted writes: %s", len(removed), ", ".join(removed))
    for path, why in bad:
        moved = set_aside([path])
        log.warning("checkpoint %s is not usable (%s)%s; resuming from the previous one, %s", path, why,
                    f"; moved aside to {moved[0]}" if moved else "", resumed)
    atomic_write_text(os.path.join(work_dir, "config.py"), run.cfg.pretty_text)
    dropped = trim_log(os.path.join(work_dir, LOG_FILE), run.start)
    if dropped:
        log.warning("%s: dropped %d record(s) after iteration %d (they are replayed now)",
                    os.path.join(work_dir, LOG_FILE), dropped, run.start)


# ---------------------------------------------------------------------------------------------------- loop
def train(cfg: Config, work_dir: str, resume: bool | str = True, device: str | None = None,
          force_resume: bool = False) -> dict[str, Any]:
    """Run pretraining as configured; returns the last logged record.

    ``resume``: True = continue from the newest usable checkpoint in ``work_dir`` if any (an unusable newer one
    is named and moved aside), a path = from that checkpoint, False = start fresh (refuses a work dir that has
    checkpoints). A resume refuses a checkpoint trained with other result-changing settings
    (:func:`pretrain.settings.result_differences`) unless ``force_resume``.

    Raises:
        pretrain.settings.PretrainConfigError: an invalid config (nothing is written).
        pretrain.checkpointing.ResumeError: the run cannot start or resume as asked (nothing is written).
    """
    validate_config(cfg)  # before joining the process group
    env = init_distributed(device)
    try:
        return run_loop(build_run(cfg, work_dir, resume, env, force_resume))
    finally:
        shutdown()


def _device_batch(run: PretrainRun, crops: Any, masks: list[Tensor], epoch: int,
                  it: int) -> tuple[list[Tensor], list[Tensor]]:
    """One loader batch on the device: crops (B, 3, S, S) per crop, masks (B, h, w) per global crop.

    With ``data.gpu_augment`` the loader yields (canvases (B, 3, L, L), sizes (B, 2)) and the crops are cut
    here, seeded per (epoch, iteration, rank) so that a resumed run reproduces them.
    """
    env = run.env
    if run.device_aug is not None:
        canvases, sizes = (t.to(env.device, non_blocking=True) for t in crops)
        crops = run.device_aug(canvases, sizes,
                               seed=sample_seed(run.cfg.train.seed, epoch, it * env.world + env.rank))
    else:
        crops = [c.to(env.device, non_blocking=True) for c in crops]
    return crops, [m.to(env.device, non_blocking=True) for m in masks]


def run_loop(run: PretrainRun) -> dict[str, Any]:
    """Train from ``run.start`` to the configured epochs, log, checkpoint, run the k-NN monitor, and export
    the teacher backbone; returns the last logged record."""
    cfg, env = run.cfg, run.env
    monitor = Monitor(run.work_dir, run.total, run.start, train_flops_per_image(cfg) / run.crops_per_image,
                      env.device, env.world, cfg.log.tensorboard, enabled=env.is_main)
    record: dict[str, Any] = {}
    meter = _Meter(env.device)
    it = run.start
    try:
        for epoch in range(run.start // run.niter, cfg.train.epochs):
            run.sampler.state.epoch, run.sampler.state.batch = epoch, it - epoch * run.niter
            for crops, masks, n_bad in run.loader:
                crops, masks = _device_batch(run, crops, masks, epoch, it)
                meter.add(run.step(crops, masks, epoch, it), n_bad)
                it += 1
                last = it == run.total or it % run.niter == 0
                ckpt_due = last or (cfg.checkpoint.interval_iters and it % cfg.checkpoint.interval_iters == 0)
                if it % cfg.log.interval == 0 or ckpt_due:
                    record = _log(run, monitor, meter, epoch, it)
                    meter.reset()
                if ckpt_due:
                    _save(run, it)
            if run.knn_enabled and ((epoch + 1) % cfg.monitor.knn.interval_epochs == 0
                                    or epoch + 1 == cfg.train.epochs):
                record = {**record, **_monitor_knn(run, monitor, it)}
    finally:
        monitor.close()
    _export_teacher(run, it)
    return record


def _monitor_knn(run: PretrainRun, monitor: Monitor, it: int) -> dict[str, float]:
    """k-NN top-1 of the teacher on rank 0 (``{}`` elsewhere); every rank calls this.

    The monitor leaves the training RNG streams as they were (the evaluation loader draws a seed from torch's
    global generator, and the gathered FSDP copy is initialised randomly before loading): turning it on or off,
    or resuming from the checkpoint written just before it ran, gives the same training."""
    cuda = [run.env.device] if run.env.device.type == "cuda" else []
    out = {}
    with torch.random.fork_rng(devices=cuda):
        backbone = _knn_backbone(run)  # a collective under FSDP
        if run.knn is not None:
            out["knn_top1"] = run.knn(backbone, run.env.device)
    if out:
        monitor.log_scalars(it, out)
    barrier()
    return out


def _log(run: PretrainRun, monitor: Monitor, meter: _Meter, epoch: int, it: int) -> dict[str, Any]:
    """Mean losses since the last log over all processes, schedules and skipped files, written by the
    monitor; raises :class:`NonFiniteLossError` on a non-finite loss."""
    step, n = run.step, meter.n
    vals = all_reduce_mean(meter.terms).tolist()  # the host sync of this interval
    if vals[3] > 0 or not math.isfinite(vals[2]):
        raise NonFiniteLossError(
            f"non-finite loss between iterations {it - n + 1} and {it} (epoch {epoch}); stopping. The last "
            "good checkpoint is kept; lower the learning rate, use bf16 instead of fp16, or resume from it.")
    g = step.optimizer.param_groups[0]
    scalars = dict(loss=vals[2] / n, cls=vals[0] / n, patch=vals[1] / n, lr=g["lr"], wd=g["weight_decay"],
                   momentum=float(step.momentum_schedule[it - 1]), epoch=epoch,
                   teacher_temp=float(step.loss.teacher_temp_schedule[epoch]),
                   teacher_patch_temp=float(step.loss.teacher_temp2_schedule[epoch]),
                   skipped_files=float(all_reduce_mean(meter.bad_files).item() * run.env.world))
    return monitor.log(it, scalars, run.images_per_iter)


# -------------------------------------------------------------------------------------- teacher backbone
def _backbone_state(model_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("backbone."):]: v.detach().cpu() for k, v in model_sd.items() if k.startswith("backbone.")}


def _knn_backbone(run: PretrainRun) -> iBOTViT | None:
    """The teacher backbone for the k-NN monitor on rank 0. Under FSDP the shards are gathered (all
    ranks call this) into a plain copy: the monitor runs on rank 0 alone, and a sharded forward would
    wait for the other ranks."""
    teacher = run.step.teacher
    if not run.sharded:
        return teacher.backbone
    sd = full_model_state(teacher)
    if not run.env.is_main:
        return None
    m = run.cfg.model
    vit = build_vit(m.arch, patch_size=m.patch_size, img_size=m.img_size, **dict(m.vit_overrides))
    vit.load_state_dict(_backbone_state(sd))
    return vit.to(run.env.device)


def export_source(run: PretrainRun, it: int) -> dict[str, Any]:
    """The ``source`` entry of the exported backbone file: what made these weights."""
    config = run.cfg.filename or os.path.join(run.work_dir, "config.py")  # a Config built in code: the dump
    return {"kind": "ibot-pretrain", "work_dir": os.path.abspath(run.work_dir), "epoch": it // run.niter,
            "iteration": it, "config": os.path.abspath(config)}


def _export_teacher(run: PretrainRun, it: int) -> None:
    """Write ``<work_dir>/teacher_backbone.pth``, a self-describing backbone file (every rank calls this:
    gathering FSDP shards is a collective)."""
    teacher = run.step.teacher
    teacher_sd = full_model_state(teacher) if run.sharded else teacher.state_dict()
    if run.env.is_main:
        path = os.path.join(run.work_dir, TEACHER_BACKBONE)
        save_backbone(path, _backbone_state(teacher_sd), describe_backbone(teacher.backbone),
                      source=export_source(run, it))
        print(f"done: {it} iterations; teacher backbone for downstream use: {path}", flush=True)
    barrier()


# ----------------------------------------------------------------------------------------- checkpoints
def _weights(run: PretrainRun) -> dict[str, Any]:
    """student, teacher and optimizer state dicts on rank 0 as DDP writes them (under FSDP gathered
    from the shards: a collective); ``{}`` on the other ranks."""
    step = run.step
    if run.sharded:
        return dict(student=full_model_state(step.student), teacher=full_model_state(step.teacher),
                    optimizer=full_optimizer_state(step.optimizer))
    if not run.env.is_main:
        return {}
    return dict(student=step.student.state_dict(), teacher=step.teacher.state_dict(),
                optimizer=step.optimizer.state_dict())


def _save(run: PretrainRun, it: int) -> None:
    """Checkpoint the full training state after ``it`` iterations (every rank calls this)."""
    rng = gathered_rng_states(run.env.device)  # a collective: every rank's RNG snapshot, in rank order
    weights = _weights(run)
    if run.env.is_main:
        step, niter, cfg = run.step, run.niter, run.cfg
        state = dict(
            **weights, ibot_loss=step.loss.state_dict(),
            fp16_scaler=step.scaler.state_dict() if step.scaler else None,
            epoch=it // niter, iteration=it, sampler=dict(epoch=it // niter, batch=it % niter),
            rng=rng, world_size=run.env.world, config=cfg.to_dict())
        save_checkpoint(state, run.work_dir, cfg.checkpoint.keep_last, cfg.checkpoint.saveckp_freq, niter)
    barrier()


def _restore(state: dict[str, Any], path: str, run: PretrainRun) -> int:
    """Load a checkpoint's state (every rank reads the full state; FSDP keeps its own shards) into the run's
    models, optimizer, loss centers, scaler and this rank's RNGs; returns the iterations it had done."""
    step, env = run.step, run.env
    try:
        if run.sharded:
            load_full_model_state(step.student, state["student"])
            load_full_model_state(step.teacher, state["teacher"])
            load_full_optimizer_state(step.optimizer, state["optimizer"])
        else:
            step.student.load_state_dict(state["student"])
            step.teacher.load_state_dict(state["teacher"])
            step.optimizer.load_state_dict(state["optimizer"])
        step.loss.load_state_dict(state["ibot_loss"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ResumeError(f"checkpoint {path} does not fit the configured model or optimizer (were model.* or "
                          f"augmentation.* changed with --force-resume?): {e}\nNothing in the work dir was "
                          "changed.") from e
    if step.scaler is not None and state.get("fp16_scaler"):
        step.scaler.load_state_dict(state["fp16_scaler"])
    rng = state["rng"]
    if state.get("world_size") == env.world and len(rng) == env.world:
        set_rng_state(rng[env.rank], env.device)
    else:
        log.warning("checkpoint was written by %s processes, now %s: drop-path RNG streams restart "
                    "(training continues, but not bit-identically)", state.get("world_size"), env.world)
    return int(state["iteration"])
