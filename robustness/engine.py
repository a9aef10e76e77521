"""One evaluation loop for every classification benchmark: a list of cells, one data loader, resumable results.

A :class:`Cell` is one evaluated condition (``gaussian_noise/3``, ``random/0.5``, ``mixed_rand``, ...): a data set
yielding pixel-space images, how logits become predictions in the data set's label space, and optionally a batch
edit applied in the main process (occlusion, which needs the model's attention). :func:`run_cells` evaluates the
cells not yet in the :class:`~robustness.store.ResultStore` through a single ``DataLoader`` whose batches never cross
a cell boundary (so workers start once, and corruptions run in them), writing each cell as soon as it is finished.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .classifier import ImageClassifier
from .store import ResultStore

__all__ = ["Cell", "argmax_predict", "run_cells"]

logger = logging.getLogger(__name__)

#: logits (B, K) -> predicted labels (B,) in the data set's label space; -1 = no valid prediction (counts wrong).
Predict = Callable[[Tensor], Tensor]
#: (images (B, 3, H, W) in [0, 1], batch dict, classifier) -> (edited images, {name: per-sample tensor (B,)}).
BatchEdit = Callable[[Tensor, dict, ImageClassifier], tuple[Tensor, dict[str, Tensor]]]


def argmax_predict(logits: Tensor) -> Tensor:
    return logits.argmax(dim=1)


@dataclass
class Cell:
    key: str
    dataset: Dataset
    predict: Predict = argmax_predict
    batch_edit: BatchEdit | None = None
    info: dict[str, Any] = field(default_factory=dict)  # extra fields stored with the result (e.g. severity)


class _CellsDataset(Dataset):
    def __init__(self, cells: Sequence[Cell]) -> None:
        self.cells = cells

    def __len__(self) -> int:
        return sum(len(c.dataset) for c in self.cells)

    def __getitem__(self, idx: tuple[int, int]) -> dict:
        ci, i = idx
        item = dict(self.cells[ci].dataset[i])
        item["cell"] = ci
        return item


class _CellBatches(Sampler):
    """Batches of ``(cell, index)`` pairs, cell after cell, never mixing two cells."""

    def __init__(self, cells: Sequence[Cell], batch_size: int) -> None:
        self.batches = [[(ci, j) for j in range(start, min(start + batch_size, len(c.dataset)))]
                        for ci, c in enumerate(cells) for start in range(0, len(c.dataset), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # corruptions are numpy code; one thread per worker avoids oversubscription


def run_cells(
    classifier: ImageClassifier,
    cells: Sequence[Cell],
    store: ResultStore,
    group: str,
    *,
    batch_size: int = 64,
    num_workers: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_cell_done: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """Evaluate the cells of ``group`` that ``store`` does not hold yet; return all of the group's cells.

    Each finished cell is written to the store immediately (``{correct, total, acc, err, ...}`` plus the means of
    any per-sample values a batch edit reports, and ``cell.info``), then ``on_cell_done(key, record)`` is called.
    """
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate cell keys in {group!r}")
    pending = [c for c in cells if not store.has(group, c.key)]
    done = len(cells) - len(pending)
    if done:
        logger.info("%s: %d of %d cells already in %s, skipped", group, done, len(cells), store.path)
    if not pending:
        return store.cells(group)
    for c in pending:
        if len(c.dataset) == 0:
            raise ValueError(f"cell {group}/{c.key} has no images")

    device = torch.device(device)
    classifier = classifier.to(device).eval()
    loader = DataLoader(
        _CellsDataset(pending), batch_sampler=_CellBatches(pending, batch_size), num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=group, unit="batch", dynamic_ncols=True)

    current: int | None = None
    acc: dict[str, Any] = {}

    def finish(ci: int) -> None:
        cell = pending[ci]
        total = acc["total"]
        record = {"correct": acc["correct"], "total": total, "acc": acc["correct"] / total,
                  "err": 1.0 - acc["correct"] / total}
        record.update({k: v / total for k, v in acc["extra"].items()})
        record.update(cell.info)
        store.put(group, cell.key, record)
        if on_cell_done is not None:
            on_cell_done(cell.key, record)

    try:
        with torch.no_grad():
            for batch in loader:
                ci = int(batch["cell"][0])
                if ci != current:
                    if current is not None:
                        finish(current)
                    current, acc = ci, {"correct": 0, "total": 0, "extra": {}}
                    if bar is not None:
                        bar.set_postfix_str(pending[ci].key)
                cell = pending[ci]
                images = batch["image"].to(device, non_blocking=True)
                labels = torch.as_tensor(batch["label"]).to(device)
                if cell.batch_edit is not None:
                    images, extra = cell.batch_edit(images, batch, classifier)
                    for k, v in extra.items():
                        acc["extra"][k] = acc["extra"].get(k, 0.0) + float(v.double().sum())
                pred = cell.predict(classifier(images))
                acc["correct"] += int(((pred == labels) & (pred >= 0)).sum())
                acc["total"] += int(labels.numel())
                if bar is not None:
                    bar.update(1)
            if current is not None:
                finish(current)
    finally:
        if bar is not None:
            bar.close()
    return store.cells(group)
