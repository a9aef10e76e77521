"""One evaluation loop for every classification benchmark: a list of cells, one data loader, resumable results.

A :class:`Cell` is one evaluated condition (``gaussian_noise/3``, ``random/0.5``, ``mixed_rand``, ...): a data set
yielding pixel-space images, how logits become predictions in the data set's label space, and optionally a batch
edit applied in the main process (occlusion, which needs the model's attention). :func:`run_cells` evaluates the
cells not yet in the :class:`~robustness.store.ResultStore` through a single ``DataLoader`` whose batches never cross
a cell boundary (so workers start once, and corruptions run in them), writing each cell as soon as it is finished.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .classifier import ImageClassifier
from .store import ResultStore

__all__ = ["Cell", "argmax_predict", "progress_bar", "run_cells"]

logger = logging.getLogger(__name__)

#: logits (B, K) -> predicted labels (B,) in the data set's label space; -1 = no valid prediction (counts wrong).
Predict = Callable[[Tensor], Tensor]
#: (images (B, 3, H, W) in [0, 1], batch dict, classifier) -> (edited images, {name: per-sample tensor (B,)}).
BatchEdit = Callable[[Tensor, dict, ImageClassifier], tuple[Tensor, dict[str, Tensor]]]


def argmax_predict(logits: Tensor) -> Tensor:
    """Logits (B, K) -> labels (B,)."""
    return logits.argmax(dim=1)


@dataclass
class Cell:
    """One evaluated condition: ``key`` in the result file, a data set of ``dict(image (3, H, W) in [0, 1], label,
    index)``, how logits become labels, an optional batch edit and extra fields stored with the result."""

    key: str
    dataset: Dataset
    predict: Predict = argmax_predict
    batch_edit: BatchEdit | None = None
    info: dict[str, Any] = field(default_factory=dict)  # extra fields stored with the result (e.g. severity)


class _CellsDataset(Dataset):
    """The items of several cells, addressed by ``(cell, index)`` and tagged with their cell."""

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

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # corruptions are numpy code; one thread per worker avoids oversubscription


@dataclass
class _Tally:
    """Running counts of one cell: correct / total predictions and the sums of per-sample batch-edit values."""

    correct: int = 0
    total: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, pred: Tensor, labels: Tensor, extra: Mapping[str, Tensor]) -> None:
        """``pred``, ``labels``: (B,); a prediction of -1 (no valid class) counts as wrong."""
        self.correct += int(((pred == labels) & (pred >= 0)).sum())
        self.total += int(labels.numel())
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0.0) + float(v.double().sum())

    def record(self, cell: Cell) -> dict[str, Any]:
        """``{correct, total, acc, err}``, the per-sample means of the batch-edit values, and ``cell.info``."""
        acc = self.correct / self.total
        record: dict[str, Any] = {"correct": self.correct, "total": self.total, "acc": acc, "err": 1.0 - acc}
        record.update({k: v / self.total for k, v in self.extra.items()})
        record.update(cell.info)
        return record


def _pending_cells(cells: Sequence[Cell], store: ResultStore, group: str) -> list[Cell]:
    """The cells of ``group`` not stored yet; raises on duplicate keys or an empty cell."""
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate cell keys in {group!r}")
    pending = [c for c in cells if not store.has(group, c.key)]
    done = len(cells) - len(pending)
    if done:
        logger.info("%s: %d of %d cells already in %s, skipped", group, done, len(cells), store.path)
    for c in pending:
        if len(c.dataset) == 0:
            raise ValueError(f"cell {group}/{c.key} has no images")
    return pending


def _cell_loader(pending: Sequence[Cell], batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """One loader over all pending cells (workers start once); its batches never cross a cell boundary."""
    return DataLoader(
        _CellsDataset(pending), batch_sampler=_CellBatches(pending, batch_size), num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


@contextmanager
def progress_bar(enabled: bool, total: int, desc: str, unit: str = "batch") -> Iterator[Any]:
    """A tqdm bar (closed on exit, also on errors), or ``None`` when disabled."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _evaluate_batch(classifier: ImageClassifier, cell: Cell, batch: dict, device: torch.device, tally: _Tally) -> None:
    """Apply the cell's batch edit (occlusion), predict and count; ``batch['image']``: (B, 3, H, W) in [0, 1]."""
    images = batch["image"].to(device, non_blocking=True)
    labels = torch.as_tensor(batch["label"]).to(device)
    extra: dict[str, Tensor] = {}
    if cell.batch_edit is not None:
        images, extra = cell.batch_edit(images, batch, classifier)
    tally.add(cell.predict(classifier(images)), labels, extra)


def _run_pending(classifier: ImageClassifier, pending: Sequence[Cell], loader: DataLoader, device: torch.device,
                 finish: Callable[[Cell, _Tally], None], bar: Any) -> None:
    """Evaluate the loader's batches in order and hand each cell's tally to ``finish`` as soon as it is complete."""
    current: int | None = None
    tally = _Tally()
    for batch in loader:
        ci = int(batch["cell"][0])
        if ci != current:
            if current is not None:
                finish(pending[current], tally)
            current, tally = ci, _Tally()
            if bar is not None:
                bar.set_postfix_str(pending[ci].key)
        _evaluate_batch(classifier, pending[ci], batch, device, tally)
        if bar is not None:
            bar.update(1)
    if current is not None:
        finish(pending[current], tally)


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
    pending = _pending_cells(cells, store, group)
    if not pending:
        return store.cells(group)
    device = torch.device(device)
    classifier = classifier.to(device).eval()
    loader = _cell_loader(pending, batch_size, num_workers, device)

    def finish(cell: Cell, tally: _Tally) -> None:
        record = tally.record(cell)
        store.put(group, cell.key, record)
        if on_cell_done is not None:
            on_cell_done(cell.key, record)

    with progress_bar(progress, len(loader), group) as bar, torch.no_grad():
        _run_pending(classifier, pending, loader, device, finish, bar)
    return store.cells(group)
