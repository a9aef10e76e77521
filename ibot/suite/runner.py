"""One backbone through the whole evaluation suite, as a library: ``run_suite(request, log=callback)``.

The checkpoint (any format :func:`ibot.checkpoint.read_backbone` reads, or ``random``) is first written as a
self-describing, tensors-only backbone file ``<work-dir>/backbone.pth`` that every harness loads by itself — no
harness unpickles anything, none needs a shape flag, and ``random`` is the same seeded initialisation everywhere.
Each selected harness then runs (see :data:`ibot.suite.harnesses.RUNNERS`) as a subprocess of its package CLI, with
its output and ``log.txt`` under ``<work-dir>/<harness>/``. A finished harness leaves ``suite_done.json`` and is
skipped on re-run; a failing one is recorded with its log and the others still run. ``<work-dir>/results.json``
gathers one entry per harness.

The data config (a Python file of plain assignments, or JSON) names the data roots and the per-harness budgets::

    classification = dict(dataset='imagefolder', root='/data/in1k', train_split='train', test_split='val')
    robustness = dict(data='/data/in1k/val', masks=None, corruptions=['gaussian_noise'], severities=[1, 3, 5])
    knn = dict(batch_size=128, options={})        # `options`: extra --set KEY=VALUE for the transfer tool
    linear = dict(epochs=100)
    finetune = dict(epochs=100)
    det = dict(config='det/configs/....py', cfg_options={...}, metric='coco/bbox_mAP')
    seg = dict(config='seg/configs/....py', cfg_options={...}, metric='mIoU')
    common = dict(device='auto', num_workers=8)
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ibot.checkpoint import describe_backbone, load_file, read_backbone, save_backbone
from ibot.records import file_sha256, read_record, schema_tag, write_record

__all__ = ["DONE", "RESULTS", "SCHEMA", "SuiteRequest", "failed", "load_data_config", "order", "prepare_backbone",
           "run_suite"]

SCHEMA = schema_tag("suite", 2)
DONE_SCHEMA = schema_tag("suite-harness", 1)
DONE = "suite_done.json"
RESULTS = "results.json"

Log = Callable[[str], None]


@dataclass
class SuiteRequest:
    """What to evaluate, on what data, where.

    Args:
        backbone: a checkpoint path (any supported format) or ``'random'``.
        work_dir: output folder (``backbone.pth``, ``results.json``, one folder per harness).
        data_config: the data roots and budgets (:func:`load_data_config`).
        harnesses: names from :data:`ibot.suite.harnesses.RUNNERS`; prerequisites are added (robustness -> linear).
        model: description entries that override the file's (``{'num_heads': 3}``); for ``random`` the whole
            description (``family, arch, patch_size, img_size, embed_dim, depth, num_heads``) unless ``like`` is set.
        like: for ``random``: a backbone file whose description the random model takes (the same ViT, untrained).
    """

    backbone: str
    work_dir: Path
    data_config: dict[str, Any]
    harnesses: list[str]
    name: str | None = None
    trust_checkpoint: bool = False
    checkpoint_key: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    like: str | None = None
    launcher: str = "none"
    gpus: int = 1
    seed: int = 0
    python: str = sys.executable

    @property
    def display_name(self) -> str:
        return self.name or Path(str(self.backbone)).stem


# ------------------------------------------------------------------------------------------------------ config
def load_data_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file, or a Python file whose public, non-module, non-callable top-level names are the config."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data config {path!r} not found (e.g. ibot/suite/configs/scenes.py)")
    if path.endswith(".json"):
        with open(path) as fh:
            return json.load(fh)
    ns = runpy.run_path(path, run_name="__suite_config__")
    return {k: v for k, v in ns.items() if not k.startswith("_") and not callable(v)
            and type(v).__name__ != "module"}


# -------------------------------------------------------------------------------------------------- backbone
def _random_description(req: SuiteRequest) -> dict[str, Any]:
    from ibot.vit import ARCHS

    if req.like is not None:
        return {**read_backbone(req.like).model, **req.model}
    desc = {"family": "vit", "arch": "vit_small", "patch_size": 16, "img_size": 224, **req.model}
    preset = ARCHS.get(desc["arch"] or "", {})
    for key in ("embed_dim", "depth", "num_heads"):
        desc.setdefault(key, preset.get(key))
    return desc


def _backbone_weights(req: SuiteRequest) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict, description, source) of the evaluated backbone; loading errors surface here, before any
    harness starts."""
    from ibot.checkpoint import BACKBONE_IGNORE, build_backbone, load_state_dict_report

    if req.backbone == "random":
        desc = _random_description(req)
        torch.manual_seed(req.seed)  # the same seeded initialisation for every harness and every re-run
        model = build_backbone(desc)
        return ({k: v.detach().clone() for k, v in model.state_dict().items() if k != "masked_embed"},
                describe_backbone(model), {"checkpoint": "random", "seed": req.seed})
    found = read_backbone(req.backbone, trusted=req.trust_checkpoint, key=req.checkpoint_key)
    model = build_backbone({**found.model, **req.model})
    sd = {k: v.contiguous() for k, v in found.state_dict.items()
          if not any(k == p or k.startswith(p + ".") for p in BACKBONE_IGNORE)}
    load_state_dict_report(model, sd, strict=True)  # a wrong description fails here, naming the keys
    source = {"checkpoint": os.path.abspath(req.backbone), "checkpoint_key": req.checkpoint_key,
              "checkpoint_sha256": file_sha256(req.backbone), "described": found.described,
              "origin": found.source}
    return sd, describe_backbone(model), source


def prepare_backbone(req: SuiteRequest) -> dict[str, Any]:
    """Write ``<work-dir>/backbone.pth`` (self-describing, tensors only) and return where it came from.

    Raises ``UntrustedCheckpointError`` for a pickling checkpoint without ``trust_checkpoint``, and any loading
    error (a description that does not fit the weights) before a harness starts. The file is rewritten only when
    its content changes, so the transfer tools' feature caches stay valid across re-runs.
    """
    sd, desc, source = _backbone_weights(req)
    out = Path(req.work_dir) / "backbone.pth"
    existing = load_file(out) if out.is_file() else {}
    old = existing.get("state_dict", {})
    if existing.get("model") != desc or old.keys() != sd.keys() or any(not torch.equal(v, old[k])
                                                                       for k, v in sd.items()):
        save_backbone(out, sd, desc, source)
    return {**source, "backbone": str(out), "backbone_sha256": file_sha256(out), "model": desc}


# ------------------------------------------------------------------------------------------------------ runner
def order(harnesses: list[str]) -> list[str]:
    """The harnesses to run, prerequisites included, in the suite's fixed order."""
    from ibot.suite.harnesses import REQUIRES, RUNNERS

    unknown = [h for h in harnesses if h not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown harness(es) {unknown}; choose from {list(RUNNERS)}")
    chosen = set(harnesses)
    for h in harnesses:
        chosen.update(REQUIRES.get(h, ()))
    return [h for h in RUNNERS if h in chosen]


def _previous(results: Path, source: Mapping[str, Any]) -> dict[str, Any]:
    if not results.is_file():
        return {}
    previous = read_record(results, kind="suite")
    if previous.get("backbone_sha256") not in (None, source["backbone_sha256"]):
        raise RuntimeError(f"{results.parent} holds results of another backbone ({previous.get('checkpoint')}); "
                           "use another --work-dir")
    return previous


def _run_one(h: str, req: SuiteRequest, source: dict[str, Any], log: Log) -> dict[str, Any]:
    """Run one harness (or reuse its finished result) and return its entry; never raises for a harness failure."""
    from ibot.suite.harnesses import RUNNERS, HarnessContext

    out = Path(req.work_dir) / h
    done = out / DONE
    if done.is_file():
        log(f"{h}: done before, skipped ({done})")
        return {**{k: v for k, v in read_record(done, schema=DONE_SCHEMA).items() if k != "schema"}, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / "log.txt"
    log(f"{h}: running (log: {logfile})")
    t0 = time.time()
    try:
        entry = RUNNERS[h](HarnessContext(req, source, out, logfile))
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its log; the suite goes on
        with open(logfile, "a") as fh:
            fh.write(f"[suite] {h} failed: {type(exc).__name__}: {exc}\n")
        entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "log": str(logfile),
                 "seconds": round(time.time() - t0, 1)}
        log(f"{h}: FAILED ({entry['error']}); log: {logfile}")
        return entry
    entry.update(status="ok", log=str(logfile), seconds=round(time.time() - t0, 1))
    write_record(done, entry, schema=DONE_SCHEMA)
    log(f"{h}: {entry['metric']} = {entry['value']:.2f} ({entry['seconds']} s)")
    return entry


def run_suite(req: SuiteRequest, log: Log = print) -> dict[str, Any]:
    """Run the selected harnesses (resumable), write ``<work-dir>/results.json`` after each and return it.

    ``log`` receives one line per event (a harness starting, skipped, finished with its metric, failed).
    """
    work = Path(req.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    harnesses = order(req.harnesses)
    source = prepare_backbone(req)
    results = work / RESULTS
    previous = _previous(results, source)
    record = {"name": req.display_name, **source, "harnesses": dict(previous.get("harnesses", {}))}
    for h in harnesses:
        record["harnesses"][h] = _run_one(h, req, source, log)
        write_record(results, record, schema=SCHEMA)
    write_record(results, record, schema=SCHEMA)
    return read_record(results, schema=SCHEMA)


def failed(record: Mapping[str, Any], harnesses: list[str]) -> list[str]:
    """The requested harnesses (prerequisites included) that did not finish."""
    return [h for h in order(harnesses) if record["harnesses"].get(h, {}).get("status") != "ok"]
