"""Linear probing with a sweep of heads (iBOT ``eval_linear_multi.py``, DINOv2 ``AllClassifiers``).

Every (feature spec, learning rate) pair gets its own ``nn.Linear`` (init N(0, 0.01), bias 0) in its own SGD
parameter group; one frozen-backbone pass per batch feeds all of them, and the summed loss trains them together
(the heads share no parameters, so each gets exactly its own gradient). Reported: the best test top-1 over heads
and evaluated epochs (the iBOT protocol; ``metric.selection`` says so).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

from transfer.features import FeatureSpec

__all__ = ["LinearSweep", "sweep_accuracy", "train_epoch", "run"]

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


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Linear-probe protocol end to end; returns the result record (also in ``<output_dir>/result.json``)."""
    from transfer.distributed import all_reduce_sum, wrap_ddp
    from transfer.features import cache_key, cached_features, check_specs, extract_features, spec_features
    from transfer.loaders import ShardSampler, eval_loader, set_epoch, train_loader
    from transfer.runtime import autocast
    from transfer.session import Session
    from transfer.state import load_state, restore_rng, rng_states, save_state
    from transfer.transforms import eval_transform, linear_train_transform

    with Session(cfg) as s:
        specs = [FeatureSpec.from_dict(d) for d in cfg["features"]]
        model, info = s.backbone(drop_path_rate=0.0)
        model.eval().requires_grad_(False)
        check_specs(specs, len(model.blocks))
        img = cfg["model"]["img_size"]
        tf_eval = eval_transform(img)
        train_set = s.dataset(cfg["data"]["train_split"], linear_train_transform(img) if cfg["train_aug"] else tf_eval)
        test_set = s.dataset(cfg["data"]["test_split"], tf_eval)
        num_classes = s.num_classes(train_set)
        cache_dir = s.output_dir / "features" if cfg["cache"] and info.checkpoint_sha256 is not None else None

        def frozen(split: str, dataset) -> tuple[list[Tensor], Tensor]:
            key = cache_key(ckpt=info.checkpoint_sha256, model=s.model_shape(), data=cfg["data"], split=split,
                            n=len(dataset), specs=cfg["features"], transform=repr(tf_eval))
            loader = eval_loader(dataset, cfg["batch_size"], s.ctx, num_workers=cfg["num_workers"])
            feats, labels, _ = cached_features(
                cache_dir, key, lambda: extract_features(model, loader, specs, s.device, s.amp, s.progress,
                                                         f"{split} features"), s.ctx.is_main)
            return feats, labels

        # The backbone is frozen and the test transform deterministic: test features are computed once.
        test_feats, test_y = frozen("test", test_set)
        shard = torch.tensor(list(ShardSampler(len(test_set), s.ctx)), dtype=torch.long)
        test_local = [f[shard].to(s.device) for f in test_feats], test_y[shard].to(s.device)

        batch, world = cfg["batch_size"], s.ctx.world_size
        sweep = LinearSweep([sp.dim(model.embed_dim) for sp in specs], num_classes, cfg["lrs"],
                            [sp.label for sp in specs], lr_scale=batch * world / cfg["lr_batch_ref"]).to(s.device)
        ddp = wrap_ddp(sweep, s.device, s.ctx)
        optimizer = torch.optim.SGD(sweep.param_groups(), momentum=cfg["momentum"],
                                    weight_decay=cfg["weight_decay"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["epochs"], eta_min=0.0)

        if cfg["train_aug"]:
            loader = train_loader(train_set, batch, s.ctx, seed=cfg["seed"], num_workers=cfg["num_workers"])

            def batches() -> Iterator[tuple[list[Tensor], Tensor]]:
                for images, y in loader:
                    with torch.no_grad(), autocast(s.device, s.amp):
                        feats = spec_features(model, images.to(s.device, non_blocking=True), specs)
                    yield [f.float() for f in feats], y.to(s.device, non_blocking=True)
        else:
            train_feats, train_y = frozen("train", train_set)
            tensors = TensorDataset(*train_feats, train_y)
            sampler = (DistributedSampler(tensors, world, s.ctx.rank, shuffle=True, seed=cfg["seed"])
                       if s.ctx.enabled else RandomSampler(tensors))
            loader = DataLoader(tensors, batch_size=batch, sampler=sampler, drop_last=True)

            def batches() -> Iterator[tuple[list[Tensor], Tensor]]:
                for *feats, y in loader:
                    yield [f.to(s.device) for f in feats], y.to(s.device)

        start_epoch, history = 0, []
        best = {"top1": -1.0, "head": None, "epoch": None}
        state = load_state(s.output_dir, cfg)
        if state is not None:
            sweep.load_state_dict(state["sweep"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, best = state["epoch"], state["history"], state["best"]
            restore_rng(state["rng"], s.ctx, cfg["seed"], start_epoch)

        n_test = len(test_set)
        for epoch in range(start_epoch, cfg["epochs"]):
            set_epoch(loader, epoch)
            loss = train_epoch(ddp, batches(), optimizer, s.progress, total=len(loader))
            scheduler.step()
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
            if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
                correct = all_reduce_sum(sweep_accuracy(sweep, *test_local))
                top1 = (100.0 * correct.double() / n_test).cpu()
                h = int(top1.argmax())
                record.update(best_head=sweep.names[h], best_head_top1=float(top1[h]),
                              top1=[round(float(v), 4) for v in top1])
                if float(top1[h]) > best["top1"]:
                    best = {"top1": float(top1[h]), "head": sweep.names[h], "epoch": epoch + 1}
                log.info("epoch %d/%d loss %.4f, best head now %s %.2f (overall %.2f)", epoch + 1, cfg["epochs"],
                         loss, sweep.names[h], float(top1[h]), best["top1"])
            history.append(record)
            rngs = rng_states()
            if s.ctx.is_main:
                save_state(s.output_dir, {"config": cfg, "epoch": epoch + 1, "sweep": sweep.state_dict(),
                                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                          "history": history, "best": best, "rng": rngs})

        last = next((r for r in reversed(history) if "top1" in r), {})
        metrics = {"best_top1": best["top1"], "best_head": best["head"], "best_epoch": best["epoch"],
                   "heads": sweep.names, "lrs_effective": sweep.lrs, "last_top1_per_head": last.get("top1", [])}
        return s.finish(info, train_set, test_set, metric_name="top1", value=best["top1"], metrics=metrics,
                        selection="max test top-1 over the lr sweep and evaluated epochs (iBOT eval_linear_multi)",
                        history=history)
