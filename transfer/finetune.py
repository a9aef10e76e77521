"""End-to-end fine-tuning with the DeiT recipe iBOT used for transfer (``eval_cls.py`` / ``run.sh``).

AdamW (wd 0.05, none on biases, norms, ``pos_embed``, ``cls_token``), lr scaled by total batch / 512, cosine
per epoch with linear warm-up (timm ``CosineLRScheduler``), RandAugment + colour jitter + random erasing
(timm ``create_transform``), mixup / cutmix with label smoothing (timm ``Mixup`` + ``SoftTargetCrossEntropy``),
drop-path, repeated augmentation under torchrun, optional layer-wise lr decay (timm ``param_groups_layer_decay``
with the BEiT layer ids: 0 = patch embedding / [CLS] / position embedding, i + 1 = block i, depth + 1 = final norm
and head). The test split is evaluated every ``eval_every`` epochs; ``report='best'`` takes the maximum, as
DeiT's "Max accuracy" that the iBOT paper's numbers are.

Not reproduced: DeiT's model EMA (kept by DeiT but not used for its reported accuracy).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import transfer.state as run_state  # looked up at call time, so tests can interrupt a run after a checkpoint
from ibot.distributed import all_reduce_sum, gathered_rng_states, wrap_ddp
from ibot.vit import iBOTViT
from transfer.backbone import BackboneInfo
from transfer.datasets import ClassificationDataset
from transfer.loaders import eval_loader, set_epoch, train_loader
from transfer.runtime import autocast
from transfer.session import Session
from transfer.transforms import eval_transform, finetune_train_transform

__all__ = ["FineTune", "ViTClassifier", "build_finetune", "build_mixup_and_loss", "build_optimizer",
           "build_scheduler", "evaluate", "finetune_metrics", "planned_lrs", "run", "scaled_lr", "schedule_warnings",
           "train_finetune", "train_one_epoch", "TINY_LR"]

log = logging.getLogger(__name__)

#: An effective peak lr below this is flagged (:func:`schedule_warnings`): AdamW moves each weight by about the lr
#: per step, so a few epochs at it leave the classifier head near its initialisation (test top-1 near chance). The
#: iBOT recipe itself runs at 7.5e-6 x 768 / 512 = 1.1e-5 for 1000 epochs.
TINY_LR = 1e-6


class ViTClassifier(nn.Module):
    """Backbone + linear head on the final-norm [CLS] token: (B, 3, H, W) -> logits (B, C)."""

    def __init__(self, backbone: iBOTViT, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)  # DeiT / iBOT eval_cls head initialisation
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for timm's ``param_groups_layer_decay``, numbered as BEiT / iBOT do: embeddings, then one
        group per block, then final norm + head together. (timm's own ViT matcher instead merges the final norm
        into the last block, via its ``99999`` "previous group" marker; any other large ordinal opens a group.)"""
        return dict(stem=r"^backbone\.(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^backbone\.blocks\.(\d+)", None), (r"^(?:backbone\.norm|head)\.", (1_000_000,))])

    def no_weight_decay(self) -> set[str]:
        return {"backbone.pos_embed", "backbone.cls_token"}


def build_optimizer(model: ViTClassifier, optim: dict[str, Any], lr: float) -> torch.optim.AdamW:
    """AdamW over timm parameter groups; with ``layer_decay`` each group carries an ``lr_scale``."""
    nwd = model.no_weight_decay()
    if optim["layer_decay"] is not None:
        groups = param_groups_layer_decay(model, optim["weight_decay"], no_weight_decay_list=nwd,
                                          layer_decay=optim["layer_decay"])
    else:
        groups = param_groups_weight_decay(model, optim["weight_decay"], no_weight_decay_list=nwd)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim["betas"]), eps=optim["eps"])


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, sched: dict[str, Any]) -> CosineLRScheduler:
    """Per-epoch cosine with warm-up; ``step(epoch)`` sets the lr of that epoch (times each group's lr_scale)."""
    return CosineLRScheduler(optimizer, t_initial=epochs, lr_min=sched["min_lr"], warmup_t=sched["warmup_epochs"],
                             warmup_lr_init=sched["warmup_lr"], cycle_limit=1, t_in_epochs=True)


def planned_lrs(cfg: dict[str, Any], world: int = 1) -> list[float]:
    """The lr of every epoch of the configured schedule (before layer decay), as :func:`build_scheduler` will set it
    with the peak :func:`scaled_lr` (``optim.lr`` x ``batch_size`` x ``world`` / ``optim.lr_batch_ref``)."""
    optim = cfg["optim"]
    peak = optim["lr"] * cfg["batch_size"] * world / optim["lr_batch_ref"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = build_scheduler(opt, cfg["epochs"], cfg["sched"])
    lrs = []
    for epoch in range(cfg["epochs"]):
        sched.step(epoch)
        lrs.append(float(opt.param_groups[0]["lr"]))
    return lrs


def schedule_warnings(cfg: dict[str, Any], world: int = 1) -> list[str]:
    """Why a fine-tuning config is likely to leave the model at chance, each naming the keys to change: a warm-up
    not shorter than the run (``sched.warmup_epochs >= epochs``: the peak lr is never reached), or an effective peak
    lr below :data:`TINY_LR` (``optim.lr`` is per ``optim.lr_batch_ref`` images, so the paper's 7.5e-6 at a batch
    of 16 is 2.3e-7). Empty when neither holds."""
    optim, sched, epochs = cfg["optim"], cfg["sched"], cfg["epochs"]
    total = cfg["batch_size"] * world
    peak = optim["lr"] * total / optim["lr_batch_ref"]
    lrs = planned_lrs(cfg, world)
    ran = f"{lrs[0]:.3g}" if len(lrs) == 1 else f"{lrs[0]:.3g} .. {lrs[-1]:.3g}"
    out = []
    if sched["warmup_epochs"] >= epochs:
        out.append(f"fine-tune schedule: sched.warmup_epochs = {sched['warmup_epochs']} >= epochs = {epochs}, so the "
                   f"run ends inside the linear warm-up and never reaches its peak lr {peak:.3g} (the lr runs {ran}, "
                   f"from sched.warmup_lr = {sched['warmup_lr']:.3g}); pass --set sched.warmup_epochs=N with N < "
                   "epochs (e.g. 0 for a short run), or raise --epochs")
    if peak < TINY_LR:
        out.append(f"fine-tune lr: the effective peak lr is {peak:.3g} = optim.lr {optim['lr']:.3g} x total batch "
                   f"{total} / optim.lr_batch_ref {optim['lr_batch_ref']:g}, below {TINY_LR:g}: the model barely moves "
                   f"at that lr and test top-1 can stay near chance (the lr runs {ran} over the {epochs} epochs; the "
                   "iBOT recipe used a batch of 768 for 1000 epochs); raise --lr (optim.lr), e.g. --lr 5e-4 (an "
                   f"effective {5e-4 * total / optim['lr_batch_ref']:.3g}), or --set "
                   f"optim.lr_batch_ref={total} so that optim.lr is the lr itself; sched.warmup_lr = "
                   f"{sched['warmup_lr']:.3g} and sched.min_lr = {sched['min_lr']:.3g} bound the schedule's ends")
    return out


def build_mixup_and_loss(aug: dict[str, Any], num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup/CutMix (which also smooths the targets) with soft-target CE, else label-smoothing CE, else CE."""
    if aug["mixup"] > 0 or aug["cutmix"] > 0:
        mixup = Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug["mixup_prob"],
                      switch_prob=aug["mixup_switch_prob"], mode=aug["mixup_mode"],
                      label_smoothing=aug["smoothing"], num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if aug["smoothing"] > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=aug["smoothing"])
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool, num_classes: int,
             progress: bool = False) -> dict[str, float]:
    """top-1 / top-5 (%) over the (sharded) loader of (images (B, 3, H, W), labels (B,), indices), summed over
    processes."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct@1, correct@5, seen
    for images, y, _ in tqdm(loader, desc="eval", disable=not progress, leave=False):
        images, y = images.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        k = min(5, num_classes)
        topk = logits.float().topk(k, dim=1).indices
        counts[0] += (topk[:, 0] == y).sum()
        counts[1] += (topk == y[:, None]).any(1).sum()
        counts[2] += y.numel()
    counts = all_reduce_sum(counts)
    out = {"top1": float(100 * counts[0] / counts[2])}
    if num_classes >= 5:
        out["top5"] = float(100 * counts[1] / counts[2])
    return out


# ------------------------------------------------------------------------------------------------------ the run
@dataclass
class FineTune:
    """A fine-tuning run once built: data, classifier, optimisation and loaders."""

    s: Session
    info: BackboneInfo
    train_set: ClassificationDataset
    test_set: ClassificationDataset
    num_classes: int
    model: ViTClassifier
    ddp: nn.Module  # the classifier under DDP (the classifier itself in a world of one)
    lr: float  # peak lr after batch scaling
    optimizer: torch.optim.AdamW
    scheduler: CosineLRScheduler
    mixup: Mixup | None
    criterion: nn.Module
    loader: DataLoader
    test_loader: DataLoader


def scaled_lr(s: Session) -> float:
    """Peak lr: ``optim.lr`` per ``lr_batch_ref`` images, times the total batch (batch_size x processes)."""
    optim, total = s.cfg["optim"], s.cfg["batch_size"] * s.env.world
    lr = optim["lr"] * total / optim["lr_batch_ref"]
    if s.cfg["sched"]["min_lr"] > lr and s.env.is_main:
        log.warning("min_lr %.3g exceeds the scaled peak lr %.3g (lr %.3g x %d images / %d): the cosine rises "
                    "instead of decaying, as the recipe does at this batch size", s.cfg["sched"]["min_lr"], lr,
                    optim["lr"], total, optim["lr_batch_ref"])
    return lr


def build_finetune(s: Session) -> FineTune:
    """Data, classifier, optimiser, schedule, mixup and loaders, in the order that fixes the random streams
    (backbone init, head init, then the training data)."""
    cfg = s.cfg
    img, batch, cuda = cfg["model"]["img_size"], cfg["batch_size"], s.device.type == "cuda"
    train_set = s.dataset(cfg["data"]["train_split"], finetune_train_transform(img, cfg["aug"]))
    test_set = s.dataset(cfg["data"]["test_split"], eval_transform(img))
    num_classes = s.num_classes(train_set)
    backbone, info = s.backbone(drop_path_rate=cfg["drop_path_rate"])
    model = ViTClassifier(backbone, num_classes).to(s.device)
    ddp = wrap_ddp(model, s.env)
    lr = scaled_lr(s)
    for warning in schedule_warnings(cfg, s.env.world):
        s.warn(warning)
    optimizer = build_optimizer(model, cfg["optim"], lr)
    scheduler = build_scheduler(optimizer, cfg["epochs"], cfg["sched"])
    mixup, criterion = build_mixup_and_loss(cfg["aug"], num_classes)
    if mixup is not None and batch % 2:
        raise ValueError(f"mixup/cutmix pair samples within a batch: batch_size must be even, got {batch}")
    loader = train_loader(train_set, batch, s.env, seed=cfg["seed"], num_workers=cfg["num_workers"],
                          repeated_aug=cfg["aug"]["repeated_aug"], pin_memory=cuda)
    test_loader = eval_loader(test_set, batch, s.env, num_workers=cfg["num_workers"], pin_memory=cuda)
    return FineTune(s, info, train_set, test_set, num_classes, model, ddp, lr, optimizer, scheduler, mixup,
                    criterion, loader, test_loader)


def _resume(f: FineTune) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """(epochs done, history, best) from the run folder's checkpoint, restoring the model, optimiser, schedule and
    RNG streams; a fresh start without one."""
    state = run_state.load_state(f.s.output_dir, f.s.cfg)
    if state is None:
        return 0, [], {"top1": -1.0, "epoch": None}
    f.model.load_state_dict(state["model"])
    f.optimizer.load_state_dict(state["optimizer"])
    f.scheduler.load_state_dict(state["scheduler"])
    run_state.restore_rng(state["rng"], f.s.env, f.s.cfg["seed"], state["epoch"])
    return state["epoch"], state["history"], state["best"]


def train_one_epoch(f: FineTune, epoch: int) -> dict[str, Any]:
    """One epoch (0-based ``epoch``) of mixup + AdamW steps; returns its record (mean loss, peak lr, img/s)."""
    s, cfg = f.s, f.s.cfg
    f.scheduler.step(epoch)
    set_epoch(f.loader, epoch)
    f.ddp.train()
    loss_sum, steps, t0 = None, 0, time.perf_counter()
    for images, y in tqdm(f.loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not s.progress, leave=False):
        images, y = images.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        if f.mixup is not None:
            images, y = f.mixup(images, y)
        with autocast(s.device, s.amp):
            logits = f.ddp(images)
        loss = f.criterion(logits.float(), y)
        f.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["optim"]["clip_grad"]:
            nn.utils.clip_grad_norm_(f.model.parameters(), cfg["optim"]["clip_grad"])
        f.optimizer.step()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()  # no per-step host sync
        steps += 1
    train_s = time.perf_counter() - t0
    mean_loss = float(loss_sum.item()) / steps
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss} in epoch {epoch + 1}; lower optim.lr or disable amp")
    return {"epoch": epoch + 1, "loss": mean_loss, "lr": max(g["lr"] for g in f.optimizer.param_groups),
            "train_img_per_s": round(steps * cfg["batch_size"] * s.env.world / train_s, 2)}


def _save(f: FineTune, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> None:
    """Checkpoint after ``epoch`` (0-based) with every process's RNG state (a collective; the main process
    writes)."""
    rngs = gathered_rng_states(f.s.device)
    if f.s.env.is_main:
        run_state.save_state(f.s.output_dir, {
            "config": f.s.cfg, "epoch": epoch + 1, "model": f.model.state_dict(),
            "optimizer": f.optimizer.state_dict(), "scheduler": f.scheduler.state_dict(), "history": history,
            "best": best, "rng": rngs})


def train_finetune(f: FineTune) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train from where the run folder left off, evaluating every ``eval_every`` epochs and after the last;
    returns (per-epoch history, best evaluated top-1 and its epoch)."""
    s, cfg = f.s, f.s.cfg
    start_epoch, history, best = _resume(f)
    for epoch in range(start_epoch, cfg["epochs"]):
        record = train_one_epoch(f, epoch)
        if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
            acc = evaluate(f.model, f.test_loader, s.device, s.amp, f.num_classes, s.progress)
            record.update(acc)
            if acc["top1"] > best["top1"]:
                best = {"top1": acc["top1"], "epoch": epoch + 1}
        history.append(record)
        log.info("epoch %d/%d: %s", epoch + 1, cfg["epochs"], record)
        _save(f, epoch, history, best)
    return history, best


def finetune_metrics(f: FineTune, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """The result's ``metrics``: best and last top-1, last top-5, the effective lr and the last epoch's speed."""
    last = next(r for r in reversed(history) if "top1" in r)
    return {"top1_best": best["top1"], "best_epoch": best["epoch"], "top1_last": last["top1"],
            "top5_last": last.get("top5"), "lr_effective": f.lr, "train_img_per_s": history[-1]["train_img_per_s"]}


def _headline(report: str, metrics: dict[str, Any]) -> tuple[float, str]:
    """(value, selection) of the result's headline metric for ``report`` 'best' or 'last'."""
    if report == "best":
        return metrics["top1_best"], "max test top-1 over evaluated epochs (DeiT 'Max accuracy', as iBOT reports)"
    return metrics["top1_last"], "test top-1 after the last epoch"


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning protocol end to end; returns the result record (also in ``<output_dir>/result.json``)."""
    if cfg["report"] not in ("best", "last"):
        raise ValueError(f"report must be 'best' or 'last', got {cfg['report']!r}")
    with Session(cfg) as s:
        f = build_finetune(s)
        history, best = train_finetune(f)
        metrics = finetune_metrics(f, history, best)
        value, selection = _headline(cfg["report"], metrics)
        evaluated = sum(1 for r in history if "top1" in r)
        return s.finish(f.info, f.train_set, f.test_set, metric_name="top1", value=value, metrics=metrics,
                        selection=selection, history=history,
                        selected_over={"epochs": evaluated} if cfg["report"] == "best" else None)
