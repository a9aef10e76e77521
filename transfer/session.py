"""A protocol run's surroundings: device, process group, seed, output folder, data sets, and the result file.

Usage inside a protocol::

    with Session(cfg) as s:
        model, info = s.backbone(drop_path_rate=0.0)
        train = s.dataset("train", transform)
        ...
        return s.finish(info, train, test, metric_name="top1", value=acc, metrics={...})
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from ibot.distributed import DistEnv, init_distributed, shutdown
from transfer.backbone import RANDOM_INIT, BackboneInfo, build_backbone
from transfer.datasets import ClassificationDataset, build_dataset, check_root, resolve_imagefolder_splits
from transfer.recipes import validate
from transfer.results import SCHEMA, dataset_column, write_result
from transfer.runtime import amp_enabled, environment, resolve_device, seed_all

__all__ = ["InvalidResultError", "Session", "chance_level", "default_output_dir"]

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"


class InvalidResultError(ValueError):
    """A run ended with a headline metric that is not an accuracy (no result file is written)."""


def _slug(text: str) -> str:
    """``text`` as one safe path component."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "model"


def _model_slug(m: dict[str, Any]) -> str:
    """``<arch>_p<patch>_<checkpoint stem>`` from the flags; unset flags are the checkpoint's description (left
    out of the name) or, without a checkpoint, the random-initialisation defaults."""
    if m["name"]:
        return m["name"]
    if not m["pretrained"]:
        return f"{m['arch'] or RANDOM_INIT['arch']}_p{m['patch_size'] or RANDOM_INIT['patch_size']}_random"
    flags = [m["arch"], f"p{m['patch_size']}" if m["patch_size"] else None, Path(m["pretrained"]).stem]
    return "_".join(f for f in flags if f)


def default_output_dir(cfg: dict[str, Any]) -> Path:
    """``work_dirs/transfer/<protocol>/<dataset>/<model>/seed<seed>`` (relative to the working directory)."""
    model = _model_slug(cfg["model"])
    dataset = _slug(dataset_column(cfg["data"]))
    return Path("work_dirs", "transfer", cfg["protocol"], dataset, _slug(model), f"seed{cfg['seed']}")


def chance_level(test_set: ClassificationDataset) -> dict[str, Any]:
    """The test set's class counts (label order) and the top-1 (%) of always predicting its most frequent class:
    the floor a classifier must beat (10% on balanced CIFAR-10; more on an unbalanced set)."""
    counts = [0] * max(len(test_set.classes), max(test_set.targets, default=-1) + 1)
    for t in test_set.targets:
        counts[int(t)] += 1
    total = sum(counts)
    major = max(range(len(counts)), key=lambda i: (counts[i], -i)) if counts else None
    return {"test_class_counts": counts,
            "majority_index": major,
            "majority_class": (test_set.classes[major] if major is not None and major < len(test_set.classes)
                               else major),
            "majority_top1": 100.0 * counts[major] / total if total and major is not None else None}


class Session:
    """Context manager: sets up on enter, tears the process group down on exit (only if it created it).

    The config, the data root and (ImageFolder) the split folders are checked when the session is made, before
    ``__enter__`` creates the output folder: a refused run writes nothing. A run that fails later logs the error to
    ``log.txt`` and leaves the folder's earlier ``result.json`` as it was (it is only replaced, atomically, by a
    finished run).

    ``self.cfg`` is a copy of the config with the split folders actually read (an ImageFolder without ``test/``
    tests on its ``val/``: :func:`transfer.datasets.resolve_imagefolder_splits`); ``notes`` (such decisions) and
    ``warnings`` (:meth:`warn`) are logged and written to the result.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        validate(cfg)
        check_root(cfg["data"]["name"], cfg["data"]["root"])
        self.cfg = cfg = copy.deepcopy(cfg)
        self.notes: list[str] = []
        self.warnings: list[str] = []
        data = cfg["data"]
        if data["name"] == "imagefolder":
            data["train_split"], data["test_split"], notes = resolve_imagefolder_splits(
                data["root"], data["train_split"], data["test_split"])
            self.notes += notes
        self.output_dir = Path(cfg["output_dir"]) if cfg["output_dir"] else default_output_dir(cfg)
        self._owns_group = False
        self._file_handler: logging.Handler | None = None

    # ------------------------------------------------------------------ setup / teardown
    def __enter__(self) -> Session:
        cfg = self.cfg
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg["device"], local_rank)
        was_initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        # The resolved device wins over the rank's default (an explicit --device cuda:N in a world of one).
        self.env: DistEnv = dataclasses.replace(init_distributed(self.device), device=self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._owns_group = self.env.enabled and not was_initialised
        self.amp = amp_enabled(cfg["amp"], self.device)
        self.progress = bool(cfg["progress"]) and self.env.is_main
        # Different augmentation streams per process; weights are synchronised by DDP / loaded identically.
        seed_all(int(cfg["seed"]) + self.env.rank)
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self._t0 = time.perf_counter()
        if self.env.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._file_handler = logging.FileHandler(self.output_dir / "log.txt")
            self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            logging.getLogger().addHandler(self._file_handler)
            log.info("%s on %s: output %s, device %s x %d, amp %s", cfg["protocol"], cfg["data"]["name"],
                     self.output_dir, self.device, self.env.world, "bf16" if self.amp else "off")
            for note in self.notes:
                log.info("%s", note)
        return self

    def warn(self, message: str) -> None:
        """A setting that makes the run's number meaningless (or nearly): logged as a warning on the main process and
        kept for the result's ``warnings``."""
        if message not in self.warnings:
            self.warnings.append(message)
            main = self.env.is_main if hasattr(self, "env") else int(os.environ.get("RANK", "0")) == 0
            if main:
                log.warning("%s", message)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and self._file_handler is not None:
            log.error("run failed: %s: %s (this run wrote no result.json; an earlier one in this folder is unchanged)",
                      exc_type.__name__ if exc_type else "error", exc)
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
        if self._owns_group:
            shutdown()

    # ------------------------------------------------------------------ building blocks
    def backbone(self, drop_path_rate: float) -> tuple[torch.nn.Module, BackboneInfo]:
        """The run's backbone on the run's device (see :func:`transfer.backbone.build_backbone`)."""
        model, info = build_backbone(self.cfg["model"], drop_path_rate=drop_path_rate)
        return model.to(self.device), info

    def model_shape(self, info: BackboneInfo) -> dict[str, Any]:
        """The model settings that change its outputs (for feature-cache keys): the flags and the description the
        backbone was built from (the checkpoint's weights are keyed by its hash)."""
        flags = {k: v for k, v in self.cfg["model"].items() if k not in ("name", "pretrain_data", "pretrained")}
        return {**flags, "description": info.description}

    def dataset(self, split: str, transform: Any) -> ClassificationDataset:
        """One split of the configured data set, read by its reader."""
        d = self.cfg["data"]
        return build_dataset(d["name"], d["root"], split, transform, d["layout"], train_split=d["train_split"])

    def num_classes(self, train_set: ClassificationDataset) -> int:
        """The recipe's class count, checked against the data (an ImageFolder recipe takes the data's)."""
        expected, found = self.cfg["data"]["num_classes"], train_set.num_classes
        if expected is not None and expected != found:
            raise ValueError(f"{self.cfg['data']['name']}: the recipe expects {expected} classes but the data at "
                             f"'{self.cfg['data']['root']}' has {found} (wrong root or layout?)")
        if max(train_set.targets) >= found:
            raise ValueError(f"labels reach {max(train_set.targets)} but there are only {found} classes")
        return found

    # ------------------------------------------------------------------ result
    def finish(self, info: BackboneInfo, train_set: ClassificationDataset, test_set: ClassificationDataset, *,
               metric_name: str, value: float, metrics: dict[str, Any], selection: str = "",
               history: list[dict[str, Any]] | None = None,
               selected_over: dict[str, int] | None = None) -> dict[str, Any]:
        """Assemble the result record; the main process writes ``<output_dir>/result.json`` (tagged
        :data:`transfer.results.SCHEMA`). ``selected_over``: the heads / epochs the headline is the maximum over (a
        maximum on the test set itself; the leaderboard's note says so)."""
        cfg = self.cfg
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not (math.isfinite(number) and 0.0 <= number <= 100.0):
            raise InvalidResultError(f"{cfg['protocol']} run: the headline metric {metric_name} = {value!r} is not an "
                                     f"accuracy in [0, 100]; '{self.output_dir / RESULT_NAME}' was not written. Check "
                                     "the run's log.txt (no evaluated epoch? diverged training?)")
        finished = datetime.datetime.now(datetime.timezone.utc)
        metric: dict[str, Any] = {"name": metric_name, "value": number, "selection": selection}
        if selected_over:
            metric["selected_over"] = dict(selected_over)
        record = {
            "schema": SCHEMA,
            "protocol": cfg["protocol"],
            "model": info.to_dict(),
            "dataset": {"name": dataset_column(cfg["data"]), "reader": cfg["data"]["name"],
                        "root": cfg["data"]["root"], "num_classes": train_set.num_classes,
                        "num_train": len(train_set), "num_test": len(test_set),
                        "train_split": cfg["data"]["train_split"], "test_split": cfg["data"]["test_split"]},
            "metric": metric,
            "metrics": metrics,
            "chance": chance_level(test_set),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "seed": int(cfg["seed"]),
            "config": cfg,
            "env": environment(self.device, self.env.world, self.amp),
            "history": history or [],
            "started": self.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_s": round(time.perf_counter() - self._t0, 3),
        }
        if self.env.is_main:
            path = self.output_dir / RESULT_NAME
            write_result(path, record)
            log.info("%s = %.2f; result written to %s", metric_name, value, path)
            record["path"] = str(path)
        return record
