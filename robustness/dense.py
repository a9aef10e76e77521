"""Dense robustness: COCO-C style P / mPC / rPC for mmdet configs, ADE20K-C style mIoU for mmseg configs.

Works for any mmdet 3.x / mmseg 1.x config + checkpoint (our ViT harness or a stock model). For every (corruption,
severity) cell, a :class:`CorruptRGB` step is inserted into a copy of the config's ``test_dataloader`` pipeline
right after the image is loaded (Michaelis et al. 2019 corrupt "directly after loading"), and mmengine's ``Runner``
is run in test mode. The model and checkpoint are loaded once; each finished cell is written to the result file at
once, so an interrupted run resumes where it stopped.

Differences from mmdet's ``tools/analysis_tools/test_robustness.py`` (which this replaces):

* mmcv loads images as **BGR**; imagecorruptions assumes RGB (frost, snow, spatter and JPEG differ systematically
  otherwise). :class:`CorruptRGB` converts BGR -> RGB, corrupts, converts back.
* corruption randomness is seeded per image (hash of seed, corruption, severity, file name), so results do not
  depend on the worker count or on how many processes run (``impulse_noise`` stays unseedable, see
  :mod:`robustness.corruptions`);
* bbox **and** segm (any metric the evaluator returns) are summarised, and segmentation configs are supported;
* the insertion point is found by type (the loading step), not hard-coded at index 1.

Multi-GPU: launch ``tools/robustness_dense.py`` (``python -m robustness.cli dense``) with ``torchrun
--nproc_per_node=N ... --launcher pytorch``; all ranks evaluate each cell (mmengine's distributed sampler + metric
collection), rank 0 writes the result file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

from ibot.checkpoint import CheckpointFormatError
from ibot.compat.imagecorruptions import corrupt
from ibot.records import file_sha256

from .corruptions import sample_seed
from .engine import progress_bar
from .metrics import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, SEVERITIES, dense_summary
from .store import ResultStore

__all__ = [
    "CorruptRGB",
    "DEFAULT_METRICS",
    "DenseSettings",
    "insert_corruption",
    "run_dense",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Metrics summarised by default, matched as suffixes of the evaluator's keys (``coco/bbox_mAP`` ...).
#: ``mAP`` matches mmdet's VOCMetric (``pascal_voc/mAP``).
DEFAULT_METRICS = {"det_c": ("bbox_mAP", "segm_mAP", "mAP"), "seg_c": ("mIoU",)}
_LOADERS = ("LoadImageFromFile", "LoadImageFromNDArray", "LoadMultiChannelImageFromFiles")


@TRANSFORMS.register_module(force=True)
class CorruptRGB(BaseTransform):
    """Apply an ImageNet-C corruption to ``results['img']`` in RGB order (mmcv loads BGR by default).

    Args:
        corruption: an imagecorruptions name.
        severity: 1..5.
        seed: base seed; numpy's RNG is seeded per image from (seed, corruption, severity, file name).
        channel_order: order of ``results['img']``: ``'bgr'`` (mmcv's ``LoadImageFromFile`` default) or ``'rgb'``.
    """

    def __init__(self, corruption: str, severity: int, seed: int = 0, channel_order: str = "bgr") -> None:
        if corruption not in ALL_CORRUPTIONS:
            raise ValueError(f"unknown corruption {corruption!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be 1..5, got {severity}")
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.corruption, self.severity, self.seed, self.channel_order = corruption, severity, seed, channel_order

    def transform(self, results: dict) -> dict:
        img = results["img"]
        dtype = img.dtype
        if dtype != np.uint8:
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        bgr = self.channel_order == "bgr"
        rgb = np.ascontiguousarray(img[..., ::-1]) if bgr else img
        key = os.path.basename(str(results.get("img_path") or results.get("img_id") or ""))
        np.random.seed(sample_seed(self.seed, self.corruption, self.severity, key))
        out = corrupt(rgb, self.corruption, self.severity)
        out = np.ascontiguousarray(out[..., ::-1]) if bgr else out
        results["img"] = out.astype(dtype) if dtype != np.uint8 else out
        return results

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(corruption={self.corruption}, severity={self.severity}, seed={self.seed}, "
                f"channel_order={self.channel_order})")


def _type_name(step: Mapping[str, Any]) -> str:
    t = step.get("type")
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return name.split(".")[-1]


def insert_corruption(pipeline: list, corruption: str, severity: int, *, seed: int = 0,
                      after: str | None = None) -> list:
    """A copy of ``pipeline`` with :class:`CorruptRGB` after the image-loading step (or after the first step of
    type ``after``, e.g. ``'Resize'`` to corrupt at test resolution — cheaper, but not the published protocol)."""
    pipeline = copy.deepcopy(list(pipeline))
    names = [_type_name(s) for s in pipeline]
    targets = (after,) if after else _LOADERS
    idx = next((i for i, n in enumerate(names) if n in targets), None)
    if idx is None:
        raise ValueError(f"no {' / '.join(targets)} step in the test pipeline {names}; pass after=<step type>")
    channel_order = "rgb" if pipeline[idx].get("channel_order", "bgr") == "rgb" else "bgr"
    for n, s in zip(names[:idx], pipeline[:idx]):  # a later loader may have set the order
        if n in _LOADERS and s.get("channel_order") == "rgb":
            channel_order = "rgb"
    pipeline.insert(idx + 1, dict(type="CorruptRGB", corruption=corruption, severity=severity, seed=seed,
                                  channel_order=channel_order))
    return pipeline


def _dataset_cfg(loader_cfg: Any) -> Any:
    ds = loader_cfg["dataset"]
    while "pipeline" not in ds and "dataset" in ds:  # wrappers (ConcatDataset is not supported)
        ds = ds["dataset"]
    if "pipeline" not in ds:
        raise ValueError("test_dataloader.dataset has no pipeline")
    return ds


def _task_of(cfg: Any) -> str:
    scope = cfg.get("default_scope")
    if scope == "mmdet":
        return "det_c"
    if scope == "mmseg":
        return "seg_c"
    raise ValueError(f"cannot tell detection from segmentation: default_scope={scope!r}; pass task=")


@dataclass(frozen=True)
class DenseSettings:
    """How :func:`run_dense` evaluates a config (everything but the config, checkpoint and result file).

    Attributes:
        corruptions, severities: the corrupted cells (plus ``clean``, always).
        seed: base seed of the per-image corruption randomness and of the data loaders.
        task: ``'det_c'`` / ``'seg_c'`` (default: from the config's ``default_scope``).
        model_name: the name in reports (default: the config's stem).
        work_dir: mmengine's work dir (default: ``<out dir>/work_dirs/<out stem>``).
        cfg_options: config entries to override (mmengine ``merge_from_dict`` keys).
        launcher: ``'none'`` / ``'pytorch'`` / ``'slurm'`` / ``'mpi'``.
        trust_checkpoint: allow full unpickling of the checkpoint (mmengine checkpoints pickle a ``HistoryBuffer``;
            this executes code from the file — only for files you trust).
        corrupt_after: insert the corruption after this step type instead of after image loading.
        restart: discard the task's stored cells and recompute.
        progress: show a progress bar (rank 0).
    """

    corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS
    severities: Sequence[int] = SEVERITIES
    seed: int = 0
    task: str | None = None
    model_name: str | None = None
    work_dir: str | os.PathLike[str] | None = None
    cfg_options: Mapping[str, Any] | None = None
    launcher: str = "none"
    trust_checkpoint: bool = False
    corrupt_after: str | None = None
    restart: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        """Every setting is checked here, before any config, checkpoint or result file is touched."""
        if isinstance(self.corruptions, str) or not self.corruptions:
            raise ValueError(f"corruptions must be a non-empty list of names, got {self.corruptions!r}")
        bad = [c for c in self.corruptions if c not in ALL_CORRUPTIONS]
        if bad:
            raise ValueError(f"unknown corruptions {bad}; choose from {list(ALL_CORRUPTIONS)} (the CLI also takes "
                             "the groups benchmark / extra / all / noise / blur / weather / digital)")
        bad_sev = [s for s in self.severities if isinstance(s, bool) or s not in SEVERITIES]
        if bad_sev or not self.severities:
            raise ValueError(f"severities {bad_sev if bad_sev else 'none given'}: must be in 1..5 (ImageNet-C "
                             f"severities); got {list(self.severities)}")
        if self.task is not None and self.task not in DEFAULT_METRICS:
            raise ValueError(f"task must be one of {sorted(DEFAULT_METRICS)}, got {self.task!r}")
        if self.launcher not in ("none", "pytorch", "slurm", "mpi"):
            raise ValueError(f"launcher must be none / pytorch / slurm / mpi, got {self.launcher!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.corrupt_after is not None and (not isinstance(self.corrupt_after, str) or not self.corrupt_after):
            raise ValueError(f"corrupt_after must be a pipeline step type name, got {self.corrupt_after!r}")


#: One cell: (key, corruption, severity); ``('clean', None, 0)`` is the uncorrupted one.
_DenseCell = tuple[str, str | None, int]


def _install_compat(checkpoint: str | os.PathLike[str] | None, trust: bool) -> None:
    """imagecorruptions on current numpy / scikit-image, and mmengine's checkpoint policy (weights-only loads)."""
    from ibot.compat import imagecorruptions as ic_compat
    from ibot.compat import mmengine as mme_compat

    ic_compat.install()
    mme_compat.install()
    if checkpoint is not None and trust:
        mme_compat.trust_checkpoint(checkpoint)


def _load_config(config: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None, out: Path,
                 settings: DenseSettings) -> tuple[Any, str, str]:
    """The mmengine config, ready for a test run of ``checkpoint``, its task (``det_c`` / ``seg_c``) and the digest
    of what it evaluates (the config with ``cfg_options`` applied, before the run's paths and launcher are set)."""
    from mmengine.config import Config

    if not os.path.isfile(config):
        raise FileNotFoundError(f"config {os.fspath(config)} does not exist; pass an mmdet / mmseg config file")
    cfg = Config.fromfile(os.fspath(config))
    if settings.cfg_options:
        cfg.merge_from_dict(dict(settings.cfg_options))
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    task = settings.task or _task_of(cfg)
    # the config must import this module so that CorruptRGB is registered in the data-loader workers too
    imports = cfg.get("custom_imports", {}) or {}
    cfg.custom_imports = dict(imports=list(imports.get("imports", [])) + [__name__],
                              allow_failed_imports=imports.get("allow_failed_imports", False))
    cfg.load_from = os.fspath(checkpoint) if checkpoint is not None else None
    cfg.resume = False
    cfg.launcher = settings.launcher
    cfg.work_dir = os.fspath(settings.work_dir or out.parent / "work_dirs" / out.stem)
    return cfg, task, digest


def _open_store(out: Path, config: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None,
                config_digest: str, task: str, settings: DenseSettings) -> ResultStore:
    """The result file with the task's group opened (checked, not written) under what changes results: the
    config's content, the checkpoint's SHA-256, the seed and the corruption's placement. Not writable yet: the
    caller enables writing on rank 0 once the distributed environment is up."""
    store = ResultStore(out, model=settings.model_name or Path(os.fspath(config)).stem, writable=False,
                        meta={f"{task}_config": os.fspath(config),
                              f"{task}_checkpoint": os.fspath(checkpoint) if checkpoint else None})
    group_cfg = {
        "config_sha1": config_digest,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint is not None else None,
        "seed": settings.seed,
        "corrupt_after": settings.corrupt_after,
    }
    files = {"checkpoint_sha256": os.fspath(checkpoint)} if checkpoint is not None else {}
    store.open_group(task, group_cfg, restart=settings.restart, files=files)
    return store


def _check_checkpoint(checkpoint: str | os.PathLike[str]) -> None:
    """Read the checkpoint the way the runner will (mmengine's loader, the trust policy of :func:`_install_compat`)
    so that a bad file fails before the model is built and before anything is written."""
    from mmengine.runner.checkpoint import CheckpointLoader

    ckpt = CheckpointLoader.load_checkpoint(os.fspath(checkpoint), map_location="cpu")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not any(hasattr(v, "shape") for v in state.values()):
        raise CheckpointFormatError(f"checkpoint {os.fspath(checkpoint)} holds no state dict (no tensors at the top "
                                    "level nor under 'state_dict'); pass the weights file the config was trained into")


def _pending_cells(store: ResultStore, task: str, settings: DenseSettings) -> list[_DenseCell]:
    """The cells not stored yet, as rank 0 sees the file (every rank must run the same cells)."""
    from mmengine.dist import broadcast_object_list

    cells: list[_DenseCell] = [("clean", None, 0)]
    cells += [(f"{c}/{s}", c, s) for c in settings.corruptions for s in settings.severities]
    shared = [[c for c in cells if not store.has(task, c[0])]]
    broadcast_object_list(shared, src=0)
    pending = shared[0]
    if len(pending) < len(cells):
        logger.info("%s: %d of %d cells already in %s, skipped", task, len(cells) - len(pending), len(cells),
                    store.path)
    return pending


def _run_cell(runner: Any, cfg: Any, base_pipeline: list, cell: _DenseCell, settings: DenseSettings) -> dict:
    """Test the model on one cell's data loader; return the evaluator's scalar metrics + corruption / severity."""
    key, corruption, severity = cell
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    _dataset_cfg(loader_cfg)["pipeline"] = (
        base_pipeline if severity == 0 else
        insert_corruption(base_pipeline, corruption, severity, seed=settings.seed, after=settings.corrupt_after))
    runner.test_loop.dataloader = runner.build_dataloader(loader_cfg, seed=settings.seed)
    metrics = runner.test()
    record: dict[str, Any] = {k: float(v) for k, v in metrics.items()
                              if isinstance(v, numbers.Real) or (isinstance(v, np.generic) and v.size == 1)}
    record.update(corruption=corruption, severity=severity)
    return record


def run_dense(
    config: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    settings: DenseSettings = DenseSettings(),
    *,
    on_cell_done: Callable[[str, dict, Any], None] | None = None,
) -> dict:
    """Evaluate clean + every (corruption, severity) cell of an mmdet / mmseg config; return the summary.

    ``out``: the result JSON (resumable). ``checkpoint=None`` evaluates the randomly initialised model (pipeline
    tests only). ``on_cell_done(key, record, runner)`` is called after each cell is stored.
    """
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    # everything is checked before the model is built and before anything is written: settings (DenseSettings),
    # config, pipeline placement, result file and its group configuration, checkpoint
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint)} does not exist; pass the model's weights file")
    _install_compat(checkpoint, settings.trust_checkpoint)
    out = Path(out)
    cfg, task, digest = _load_config(config, checkpoint, out, settings)
    if task not in DEFAULT_METRICS:
        raise ValueError(f"task must be one of {sorted(DEFAULT_METRICS)}, got {task!r}")
    base_pipeline = list(_dataset_cfg(cfg.test_dataloader)["pipeline"])
    insert_corruption(base_pipeline, settings.corruptions[0], settings.severities[0], seed=settings.seed,
                      after=settings.corrupt_after)  # a --corrupt-after step the pipeline lacks fails now
    store = _open_store(out, config, checkpoint, digest, task, settings)
    if checkpoint is not None:
        _check_checkpoint(checkpoint)
    runner = Runner.from_cfg(cfg)
    main = is_main_process()
    store.writable = main
    pending = _pending_cells(store, task, settings)
    with progress_bar(settings.progress and main and bool(pending), len(pending), task, "cell") as bar:
        for cell in pending:
            if bar is not None:
                bar.set_postfix_str(cell[0])
            record = _run_cell(runner, cfg, base_pipeline, cell, settings)
            store.put(task, cell[0], record)
            if bar is not None:
                bar.update(1)
            if on_cell_done is not None:
                on_cell_done(cell[0], record, runner)
    return summarize(store.cells(task), task)


def summarize(cells: Mapping[str, Mapping[str, Any]], task: str, metrics: Sequence[str] | None = None) -> dict:
    """``{metric: {P, mPC, rPC, per_corruption, per_severity, ...}}`` for each summarised metric.

    ``metrics``: evaluator keys or their last ``/`` component (default: ``bbox_mAP``, ``segm_mAP`` and VOC's ``mAP``
    for detection, ``mIoU`` for segmentation); only metrics present in the clean cell are summarised.
    """
    if "clean" not in cells:
        raise ValueError("no clean cell: P (and rPC) need severity 0")
    suffixes = tuple(metrics or DEFAULT_METRICS[task])
    clean = cells["clean"]
    out = {}
    for name in sorted(clean):
        if not any(name == s or name.endswith("/" + s) for s in suffixes):
            continue
        corrupted: dict[str, dict[int, float]] = {}
        for key, rec in cells.items():
            if key == "clean" or name not in rec:
                continue
            c, s = key.rsplit("/", 1)
            corrupted.setdefault(c, {})[int(s)] = float(rec[name])
        out[name] = dense_summary(float(clean[name]), corrupted)
        out[name]["cells"] = {c: {str(s): v for s, v in sorted(sev.items())} for c, sev in corrupted.items()}
    return out
