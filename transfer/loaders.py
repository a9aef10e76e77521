"""Data loaders of the protocols: shuffled training shards (optionally with DeiT's repeated augmentation) and
exact, unpadded evaluation shards that return each sample's data-set index."""
from __future__ import annotations

import math
from typing import Any, Iterator

from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from ibot.distributed import DistEnv

__all__ = ["Indexed", "ShardSampler", "train_loader", "eval_loader", "set_epoch"]


class Indexed(Dataset):
    """Wraps a data set so items are ``(image, label, index)``: gathered features land at their index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.dataset[i]
        return x, y, i


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample exactly once over all processes.

    ``DistributedSampler`` pads with repeats so shards are equal, which would count some test images twice.
    """

    def __init__(self, n: int, env: DistEnv) -> None:
        self.n, self.env = n, env

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.env.rank, self.n, self.env.world))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.env.rank) / self.env.world))


def train_loader(dataset: Dataset, batch_size: int, env: DistEnv, *, seed: int, num_workers: int,
                 repeated_aug: bool = False, drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """Shuffled per-process batches; call ``loader.sampler.set_epoch(e)`` when it has one.

    Distributed: ``RepeatAugSampler`` (3 augmented copies per image spread over processes, DeiT's ``RASampler``)
    when ``repeated_aug``, else ``DistributedSampler`` (seeded with ``seed``). One process: ``RandomSampler`` on
    the global torch RNG, which resuming restores.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if env.enabled:
        sampler: Sampler[int] = (RepeatAugSampler(dataset, num_replicas=env.world, rank=env.rank, shuffle=True)
                                 if repeated_aug else
                                 DistributedSampler(dataset, env.world, env.rank, shuffle=True, seed=seed))
    else:
        sampler = RandomSampler(dataset)
    per_process = len(sampler)  # type: ignore[arg-type]
    if drop_last and per_process < batch_size:
        raise ValueError(f"the training set gives {per_process} samples per process ({n} in all), fewer than one "
                         f"batch of {batch_size} (config key 'batch_size'): lower it with --batch-size")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, env: DistEnv, *, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """In-order, unpadded shard of ``Indexed(dataset)``: batches of (images, labels, indices)."""
    return DataLoader(Indexed(dataset), batch_size=batch_size, sampler=ShardSampler(len(dataset), env),
                      num_workers=num_workers, pin_memory=pin_memory)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reseed a distributed sampler's shuffle for ``epoch`` (no-op for the single-process sampler)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
