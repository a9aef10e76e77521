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
from torch import Tensor

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


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """k-NN protocol end to end; returns the result record (also written to ``<output_dir>/result.json``)."""
    from transfer.features import FeatureSpec, cache_key, cached_features, check_specs, extract_features
    from transfer.loaders import eval_loader
    from transfer.session import Session
    from transfer.transforms import eval_transform

    ks, report_k = sorted(int(k) for k in cfg["ks"]), int(cfg["report_k"])
    if report_k not in ks:
        raise ValueError(f"report_k={report_k} is not among ks={ks}")
    with Session(cfg) as s:
        spec = FeatureSpec.from_dict(cfg["feature"])
        model, info = s.backbone(drop_path_rate=0.0)
        check_specs([spec], len(model.blocks))
        tf = eval_transform(cfg["model"]["img_size"])
        train_set, test_set = s.dataset(cfg["data"]["train_split"], tf), s.dataset(cfg["data"]["test_split"], tf)
        num_classes = s.num_classes(train_set)
        cache_dir = s.output_dir / "features" if cfg["cache"] else None
        loaded = {}

        def features(split: str, dataset) -> tuple[Tensor, Tensor]:
            key = cache_key(ckpt=info.checkpoint_sha256, model=s.model_shape(), data=cfg["data"], split=split,
                            n=len(dataset), spec=cfg["feature"], transform=repr(tf))
            loader = eval_loader(dataset, cfg["batch_size"], s.ctx, num_workers=cfg["num_workers"])
            # A randomly initialised backbone has no hash to key the cache by: always recompute.
            feats, labels, hit = cached_features(
                cache_dir if info.checkpoint_sha256 is not None else None, key,
                lambda: extract_features(model, loader, [spec], s.device, s.amp, s.progress, f"{split} features"),
                s.ctx.is_main)
            loaded[split] = hit
            return feats[0], labels

        train_x, train_y = features("train", train_set)
        test_x, test_y = features("test", test_set)
        scores = knn_scores(train_x.to(s.device), train_y.to(s.device), test_x.to(s.device), ks,
                            cfg["temperature"], num_classes)
        metrics: dict[str, Any] = {}
        for k in ks:
            acc = knn_accuracy(scores[k], test_y.to(s.device))
            metrics.update({f"{name}@k={k}": value for name, value in acc.items()})
            log.info("k-NN k=%d T=%g: %s", k, cfg["temperature"], acc)
        metrics["features_from_cache"] = loaded
        return s.finish(info, train_set, test_set, metric_name=f"top1@k={report_k}",
                        value=metrics[f"top1@k={report_k}"], metrics=metrics)
