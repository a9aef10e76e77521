"""Weighted k-NN classification on frozen features (DINO / iBOT ``eval_knn.py``).

Features are L2-normalised, so the dot product is the cosine similarity. Each test sample takes its k most
similar training samples; neighbour j votes for its class with weight ``exp(sim_j / T)``; the class with the
largest summed weight wins (top-5: the five largest).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibot.features import FeatureSpec
from transfer.backbone import BackboneInfo
from transfer.datasets import ClassificationDataset
from transfer.features import cache_key, cached_features, extract_features
from transfer.loaders import eval_loader
from transfer.recipes import ConfigValueError
from transfer.session import Session
from transfer.transforms import eval_transform

__all__ = ["knn_scores", "knn_accuracy", "run"]

log = logging.getLogger(__name__)


@torch.no_grad()
def knn_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, ks: list[int],
               temperature: float, num_classes: int, chunk: int = 256) -> dict[int, Tensor]:
    """Class scores of every test sample for each k.

    Args:
        train_features: (N, F); train_labels: (N,) int64 in [0, C).
        test_features: (M, F). Both are L2-normalised here.
        ks: neighbour counts (each <= N).
        temperature: T of the ``exp(sim / T)`` vote weight.
        chunk: test rows per similarity block, bounding memory at chunk x N floats.
    Returns:
        {k: (M, C) summed vote weights}.
    """
    if max(ks) > train_features.shape[0]:
        raise ValueError(f"k={max(ks)} exceeds the {train_features.shape[0]} training samples")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    kmax = max(ks)
    out = {k: torch.zeros(test.shape[0], num_classes, device=test.device) for k in ks}
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T  # (b, N)
        top_sim, top_idx = sim.topk(kmax, dim=1, largest=True, sorted=True)
        neighbour_labels = train_labels[top_idx]  # (b, kmax)
        weights = (top_sim / temperature).exp()
        for k in ks:
            out[k][start:start + chunk].scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
    return out


def knn_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """top-1 / top-5 accuracy in percent from (M, C) scores; top-5 only when C >= 5."""
    out = {"top1": 100.0 * (scores.argmax(1) == labels).double().mean().item()}
    if scores.shape[1] >= 5:
        top5 = scores.topk(5, dim=1).indices
        out["top5"] = 100.0 * (top5 == labels[:, None]).any(1).double().mean().item()
    return out


def _split_features(s: Session, info: BackboneInfo, model: nn.Module, spec: FeatureSpec, split: str,
                    dataset: ClassificationDataset) -> tuple[Tensor, Tensor, bool]:
    """One split's features (N, F) and labels (N,), from the cache when present; also whether they were cached.

    A randomly initialised backbone has no checkpoint hash to key the cache by: its features are recomputed.
    """
    cfg = s.cfg
    tf = dataset.transform
    key = cache_key(ckpt=info.checkpoint_sha256, model=s.model_shape(info), data=cfg["data"], split=split,
                    n=len(dataset), spec=spec.to_dict(), transform=repr(tf))
    loader = eval_loader(dataset, cfg["batch_size"], s.env, num_workers=cfg["num_workers"])
    cache_dir = s.output_dir / "features" if cfg["cache"] and info.checkpoint_sha256 is not None else None
    feats, labels, hit = cached_features(
        cache_dir, key, lambda: extract_features(model, loader, [spec], s.device, s.amp, s.progress,
                                                 f"{split} features"), s.env.is_main)
    return feats[0], labels, hit


def _knn_metrics(cfg: dict[str, Any], train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 num_classes: int, device: torch.device) -> dict[str, float]:
    """``top1@k=<k>`` / ``top5@k=<k>`` (%) for every k of the config; features (N, F) / (M, F), labels (N,) / (M,)."""
    ks = sorted(int(k) for k in cfg["ks"])
    scores = knn_scores(train_x.to(device), train_y.to(device), test_x.to(device), ks, cfg["temperature"],
                        num_classes)
    metrics: dict[str, float] = {}
    for k in ks:
        acc = knn_accuracy(scores[k], test_y.to(device))
        metrics.update({f"{name}@k={k}": value for name, value in acc.items()})
        log.info("k-NN k=%d T=%g: %s", k, cfg["temperature"], acc)
    return metrics


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """k-NN protocol end to end; returns the result record (also written to ``<output_dir>/result.json``).

    ``metrics`` holds ``top1@k=<k>`` / ``top5@k=<k>``, ``feature`` (the feature spec as a dict,
    ``ibot.features.FeatureSpec.to_dict``) and ``features_from_cache`` ({split: bool}).
    """
    session = Session(cfg)  # checks the config (report_k among ks, the feature spec, ...) before anything is written
    report_k = int(cfg["report_k"])
    spec = FeatureSpec.from_dict(cfg["feature"])
    with session as s:
        cfg = s.cfg  # with the split folders actually read (an ImageFolder's val/ when it has no test/)
        model, info = s.backbone(drop_path_rate=0.0)
        spec.check(len(model.blocks))
        tf = eval_transform(cfg["model"]["img_size"])
        train_set, test_set = s.dataset(cfg["data"]["train_split"], tf), s.dataset(cfg["data"]["test_split"], tf)
        num_classes = s.num_classes(train_set)
        if max(cfg["ks"]) > len(train_set):
            raise ConfigValueError(f"config key 'ks' = {cfg['ks']} is invalid for this data: k = {max(cfg['ks'])} "
                                   f"exceeds the {len(train_set)} images of the '{cfg['data']['train_split']}' split "
                                   f"under '{cfg['data']['root']}'; pass --set ks=[...] with smaller values")
        train_x, train_y, train_hit = _split_features(s, info, model, spec, "train", train_set)
        test_x, test_y, test_hit = _split_features(s, info, model, spec, "test", test_set)
        metrics: dict[str, Any] = _knn_metrics(cfg, train_x, train_y, test_x, test_y, num_classes, s.device)
        metrics["feature"] = spec.to_dict()
        metrics["features_from_cache"] = {"train": train_hit, "test": test_hit}
        return s.finish(info, train_set, test_set, metric_name=f"top1@k={report_k}",
                        value=metrics[f"top1@k={report_k}"], metrics=metrics)
