"""Linear probing with a sweep of heads (iBOT ``eval_linear_multi.py``, DINOv2 ``AllClassifiers``).

Every (feature spec, learning rate) pair gets its own ``nn.Linear`` (init N(0, 0.01), bias 0) in its own SGD
parameter group; one frozen-backbone pass per batch feeds all of them, and the summed loss trains them together
(the heads share no parameters, so each gets exactly its own gradient). Reported: the best test top-1 over heads
and evaluated epochs (the iBOT protocol; ``metric.selection`` says so).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

import transfer.state as run_state  # looked up at call time, so tests can interrupt a run after a checkpoint
from ibot.distributed import all_reduce_sum, gathered_rng_states, wrap_ddp
from ibot.features import FeatureSpec, spec_features
from transfer.backbone import BackboneInfo
from transfer.datasets import ClassificationDataset
from transfer.features import cache_key, cached_features, extract_features
from transfer.loaders import ShardSampler, eval_loader, set_epoch, train_loader
from transfer.runtime import autocast
from transfer.session import Session
from transfer.transforms import eval_transform, linear_train_transform

__all__ = ["LinearSweep", "Probe", "build_probe", "probe_metrics", "run", "sweep_accuracy", "sweep_loss",
           "train_epoch", "train_probe"]

log = logging.getLogger(__name__)


class LinearSweep(nn.Module):
    """Heads ``(spec, lr)`` for every spec x lr; ``forward`` maps per-spec features to stacked logits.

    Args:
        dims: feature width of each spec.
        num_classes: C.
        lrs: nominal learning rates (the sweep as configured); head h trains at ``lrs[h % len(lrs)] * lr_scale``.
        labels: a name per spec (for logs and the result).
        lr_scale: batch-size scaling (total batch / 256), applied to every head.
    """

    def __init__(self, dims: list[int], num_classes: int, lrs: list[float], labels: list[str] | None = None,
                 lr_scale: float = 1.0) -> None:
        super().__init__()
        self.heads = nn.ModuleList()
        self.spec_of: list[int] = []
        self.lrs: list[float] = []
        self.names: list[str] = []
        labels = labels or [f"spec{i}" for i in range(len(dims))]
        for s, dim in enumerate(dims):
            for lr in lrs:
                head = nn.Linear(dim, num_classes)
                nn.init.normal_(head.weight, mean=0.0, std=0.01)
                nn.init.zeros_(head.bias)
                self.heads.append(head)
                self.spec_of.append(s)
                self.lrs.append(float(lr) * lr_scale)
                self.names.append(f"{labels[s]} lr={lr:.4g}")

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Per-spec features [(B, F_s)] -> logits (H, B, C)."""
        return torch.stack([head(feats[s]) for head, s in zip(self.heads, self.spec_of)])

    def param_groups(self) -> list[dict[str, Any]]:
        """One SGD group per head, at that head's learning rate."""
        return [{"params": list(h.parameters()), "lr": lr, "name": n}
                for h, lr, n in zip(self.heads, self.lrs, self.names)]


def sweep_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over heads of each head's mean cross-entropy; logits (H, B, C), labels (B,)."""
    h = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(h)) * h


@torch.no_grad()
def sweep_accuracy(sweep: LinearSweep, feats: list[Tensor], labels: Tensor, batch_size: int = 4096) -> Tensor:
    """Correct top-1 predictions per head, (H,) int64, over the given (local) features (N, F_s) / labels (N,)."""
    correct = torch.zeros(len(sweep.heads), dtype=torch.long, device=labels.device)
    for start in range(0, labels.shape[0], batch_size):
        logits = sweep([f[start:start + batch_size] for f in feats])
        correct += (logits.argmax(-1) == labels[start:start + batch_size]).sum(1)
    return correct


def train_epoch(sweep: nn.Module, batches: Iterator[tuple[list[Tensor], Tensor]], optimizer: torch.optim.Optimizer,
                progress: bool = False, total: int | None = None) -> float:
    """One pass over (per-spec features, labels) batches; returns the mean summed loss."""
    sweep.train()
    total_loss, steps = None, 0
    for feats, y in tqdm(batches, desc="linear", disable=not progress, leave=False, total=total):
        loss = sweep_loss(sweep(feats), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: one host sync per epoch, not per step.
        total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
        steps += 1
    return float(total_loss.item()) / steps if steps else float("nan")


# ------------------------------------------------------------------------------------------------------ the run
Batches = Callable[[], Iterator[tuple[list[Tensor], Tensor]]]


@dataclass
class Probe:
    """A linear-probe run once built: the frozen backbone, the data and the sweep with its optimisation."""

    s: Session
    info: BackboneInfo
    model: nn.Module  # frozen backbone
    specs: list[FeatureSpec]
    train_set: ClassificationDataset
    test_set: ClassificationDataset
    test_local: tuple[list[Tensor], Tensor]  # this process's shard of the test features (n, F_s) and labels (n,)
    sweep: LinearSweep
    ddp: nn.Module  # the sweep under DDP (the sweep itself in a world of one)
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    loader: DataLoader
    batches: Batches  # one epoch of (per-spec features (B, F_s), labels (B,)) on the device


def _frozen_features(s: Session, info: BackboneInfo, model: nn.Module, specs: list[FeatureSpec], split: str,
                     dataset: ClassificationDataset) -> tuple[list[Tensor], Tensor]:
    """Centre-crop features (N, F_s) per spec and labels (N,) of a whole split, cached when the config says so and
    the backbone has a checkpoint hash to key them by."""
    cfg = s.cfg
    cache_dir = s.output_dir / "features" if cfg["cache"] and info.checkpoint_sha256 is not None else None
    key = cache_key(ckpt=info.checkpoint_sha256, model=s.model_shape(info), data=cfg["data"], split=split,
                    n=len(dataset), specs=[sp.to_dict() for sp in specs], transform=repr(dataset.transform))
    loader = eval_loader(dataset, cfg["batch_size"], s.env, num_workers=cfg["num_workers"])
    feats, labels, _ = cached_features(
        cache_dir, key, lambda: extract_features(model, loader, specs, s.device, s.amp, s.progress,
                                                 f"{split} features"), s.env.is_main)
    return feats, labels


def _test_shard(s: Session, info: BackboneInfo, model: nn.Module, specs: list[FeatureSpec],
                test_set: ClassificationDataset) -> tuple[list[Tensor], Tensor]:
    """This process's rows of the test features, on the device. The backbone is frozen and the test transform
    deterministic, so the test features are computed once for every epoch's evaluation."""
    feats, labels = _frozen_features(s, info, model, specs, "test", test_set)
    shard = torch.tensor(list(ShardSampler(len(test_set), s.env)), dtype=torch.long)
    return [f[shard].to(s.device) for f in feats], labels[shard].to(s.device)


def _build_sweep(s: Session, specs: list[FeatureSpec], embed_dim: int, num_classes: int
                 ) -> tuple[LinearSweep, nn.Module, torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The heads (lrs scaled by the total batch / ``lr_batch_ref``), their DDP wrapper, SGD and the cosine."""
    cfg = s.cfg
    sweep = LinearSweep([sp.dim(embed_dim) for sp in specs], num_classes, cfg["lrs"], [sp.label for sp in specs],
                        lr_scale=cfg["batch_size"] * s.env.world / cfg["lr_batch_ref"]).to(s.device)
    optimizer = torch.optim.SGD(sweep.param_groups(), momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["epochs"], eta_min=0.0)
    return sweep, wrap_ddp(sweep, s.env), optimizer, scheduler


def _augmented_batches(s: Session, model: nn.Module, specs: list[FeatureSpec], train_set: ClassificationDataset
                       ) -> tuple[DataLoader, Batches]:
    """DINO protocol: a backbone pass on freshly augmented images every step."""
    loader = train_loader(train_set, s.cfg["batch_size"], s.env, seed=s.cfg["seed"],
                          num_workers=s.cfg["num_workers"])

    def batches() -> Iterator[tuple[list[Tensor], Tensor]]:
        for images, y in loader:
            with torch.no_grad(), autocast(s.device, s.amp):
                feats = spec_features(model, images.to(s.device, non_blocking=True), specs)
            yield [f.float() for f in feats], y.to(s.device, non_blocking=True)

    return loader, batches


def _cached_batches(s: Session, info: BackboneInfo, model: nn.Module, specs: list[FeatureSpec],
                    train_set: ClassificationDataset) -> tuple[DataLoader, Batches]:
    """``train_aug=false``: shuffled batches of the (cached) centre-crop training features."""
    train_feats, train_y = _frozen_features(s, info, model, specs, "train", train_set)
    tensors = TensorDataset(*train_feats, train_y)
    sampler = (DistributedSampler(tensors, s.env.world, s.env.rank, shuffle=True, seed=s.cfg["seed"])
               if s.env.enabled else RandomSampler(tensors))
    loader = DataLoader(tensors, batch_size=s.cfg["batch_size"], sampler=sampler, drop_last=True)

    def batches() -> Iterator[tuple[list[Tensor], Tensor]]:
        for *feats, y in loader:
            yield [f.to(s.device) for f in feats], y.to(s.device)

    return loader, batches


def build_probe(s: Session) -> Probe:
    """Backbone, data, test features, sweep and training batches, in the order that fixes the random streams
    (backbone init, test extraction, head init, training data)."""
    cfg = s.cfg
    specs = [FeatureSpec.from_dict(d) for d in cfg["features"]]
    model, info = s.backbone(drop_path_rate=0.0)
    model.eval().requires_grad_(False)
    for spec in specs:
        spec.check(len(model.blocks))
    img = cfg["model"]["img_size"]
    tf_eval = eval_transform(img)
    train_set = s.dataset(cfg["data"]["train_split"], linear_train_transform(img) if cfg["train_aug"] else tf_eval)
    test_set = s.dataset(cfg["data"]["test_split"], tf_eval)
    num_classes = s.num_classes(train_set)
    test_local = _test_shard(s, info, model, specs, test_set)
    sweep, ddp, optimizer, scheduler = _build_sweep(s, specs, model.embed_dim, num_classes)
    loader, batches = (_augmented_batches(s, model, specs, train_set) if cfg["train_aug"] else
                       _cached_batches(s, info, model, specs, train_set))
    return Probe(s, info, model, specs, train_set, test_set, test_local, sweep, ddp, optimizer, scheduler, loader,
                 batches)


def _resume(p: Probe) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """(epochs done, history, best) from the run folder's checkpoint, restoring the sweep, optimiser, schedule and
    RNG streams; a fresh start without one."""
    state = run_state.load_state(p.s.output_dir, p.s.cfg)
    if state is None:
        return 0, [], {"top1": -1.0, "head": None, "index": None, "epoch": None}
    p.sweep.load_state_dict(state["sweep"])
    p.optimizer.load_state_dict(state["optimizer"])
    p.scheduler.load_state_dict(state["scheduler"])
    run_state.restore_rng(state["rng"], p.s.env, p.s.cfg["seed"], state["epoch"])
    return state["epoch"], state["history"], state["best"]


def _evaluate(p: Probe, epoch: int, record: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """Test top-1 of every head into ``record``; returns the best (head, epoch) so far."""
    correct = all_reduce_sum(sweep_accuracy(p.sweep, *p.test_local))
    top1 = (100.0 * correct.double() / len(p.test_set)).cpu()  # (H,)
    h = int(top1.argmax())
    record.update(best_head=p.sweep.names[h], best_head_top1=float(top1[h]), top1=[round(float(v), 4) for v in top1])
    if float(top1[h]) > best["top1"]:
        best = {"top1": float(top1[h]), "head": p.sweep.names[h], "index": h, "epoch": epoch + 1}
    log.info("epoch %d/%d loss %.4f, best head now %s %.2f (overall %.2f)", epoch + 1, p.s.cfg["epochs"],
             record["loss"], p.sweep.names[h], float(top1[h]), best["top1"])
    return best


def _save(p: Probe, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> None:
    """Checkpoint after ``epoch`` (0-based) with every process's RNG state (a collective; the main process
    writes)."""
    rngs = gathered_rng_states(p.s.device)
    if p.s.env.is_main:
        run_state.save_state(p.s.output_dir, {
            "config": p.s.cfg, "epoch": epoch + 1, "sweep": p.sweep.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "history": history, "best": best, "rng": rngs})


def train_probe(p: Probe) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the sweep from where the run folder left off; returns (per-epoch history, best head)."""
    cfg = p.s.cfg
    start_epoch, history, best = _resume(p)
    for epoch in range(start_epoch, cfg["epochs"]):
        set_epoch(p.loader, epoch)
        loss = train_epoch(p.ddp, p.batches(), p.optimizer, p.s.progress, total=len(p.loader))
        p.scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
        if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
            best = _evaluate(p, epoch, record, best)
        history.append(record)
        _save(p, epoch, history, best)
    return history, best


def probe_metrics(p: Probe, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """The result's ``metrics``: best top-1 / head / epoch, the heads with their lrs and feature specs (dicts of
    ``FeatureSpec.to_dict``: ``head_features[i]`` for ``heads[i]``, ``best_feature`` for the best head at
    ``best_head_index``), and the last evaluation's top-1 per head."""
    index = best.get("index")
    if index is None and best["head"] is not None:  # a checkpoint written before the index was kept
        index = p.sweep.names.index(best["head"])
    head_features = [p.specs[s].to_dict() for s in p.sweep.spec_of]
    last = next((r for r in reversed(history) if "top1" in r), {})
    return {"best_top1": best["top1"], "best_head": best["head"], "best_head_index": index,
            "best_feature": head_features[index] if index is not None else None, "best_epoch": best["epoch"],
            "heads": p.sweep.names, "head_features": head_features, "lrs_effective": p.sweep.lrs,
            "last_top1_per_head": last.get("top1", [])}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Linear-probe protocol end to end; returns the result record (also in ``<output_dir>/result.json``)."""
    with Session(cfg) as s:
        probe = build_probe(s)
        history, best = train_probe(probe)
        evaluated = sum(1 for r in history if "top1" in r)
        return s.finish(probe.info, probe.train_set, probe.test_set, metric_name="top1", value=best["top1"],
                        metrics=probe_metrics(probe, history, best), history=history,
                        selection="max test top-1 over the lr sweep and evaluated epochs (iBOT eval_linear_multi)",
                        selected_over={"heads": len(probe.sweep.heads), "epochs": evaluated})
