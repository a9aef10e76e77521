"""Periodic k-NN monitor of the teacher backbone during pretraining (optional, ``monitor.knn``).

Uses the transfer harness's pieces (ImageFolder reader, evaluation transform, weighted k-NN) on a
labelled folder ``<root>/<train_split>/<class>/*`` and ``<root>/<val_split>/<class>/*``; the main
process evaluates, the others wait. The result is logged like the other scalars (``knn_top1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from transfer.datasets import read_imagefolder
from transfer.knn import knn_accuracy, knn_scores
from transfer.transforms import eval_transform


class KNNMonitor:
    """``KNNMonitor(root, img_size, ...)(backbone) -> top-1 (%)`` of weighted k-NN on [CLS] features."""

    def __init__(self, root: str, img_size: int, train_split: str = "train", val_split: str = "val",
                 k: int = 20, temperature: float = 0.07, batch_size: int = 128, num_workers: int = 2) -> None:
        tf = eval_transform(img_size)
        self.train = read_imagefolder(root, train_split, tf)
        self.val = read_imagefolder(root, val_split, tf)
        if k > len(self.train):
            raise ValueError(f"monitor.knn.k={k} exceeds the {len(self.train)} training images under {root}")
        self.k, self.temperature = k, temperature
        self.batch_size, self.num_workers = batch_size, num_workers

    @torch.no_grad()
    def _features(self, backbone: nn.Module, dataset, device: torch.device) -> tuple[Tensor, Tensor]:
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)
        feats, labels = [], []
        for x, y in loader:
            feats.append(F.normalize(backbone(x.to(device)).float(), dim=1))
            labels.append(y)
        return torch.cat(feats), torch.cat(labels).to(device)

    @torch.no_grad()
    def __call__(self, backbone: nn.Module, device: torch.device) -> float:
        was_training = backbone.training
        backbone.eval()
        try:
            train_f, train_y = self._features(backbone, self.train, device)
            val_f, val_y = self._features(backbone, self.val, device)
        finally:
            backbone.train(was_training)
        scores = knn_scores(train_f, train_y, val_f, [self.k], self.temperature, self.train.num_classes)
        return knn_accuracy(scores[self.k], val_y)["top1"]
