"""The suite's harnesses: one runner per harness, in the table :data:`RUNNERS` (the order is the run order).

Each runner launches its harness's package CLI (``python -m transfer.cli``, ``python -m robustness.cli``,
``python -m det.cli``) as a subprocess — isolation, and exactly what a user would run — on the suite's
self-describing ``backbone.pth``, so no shape flag is passed, and returns the harness's headline entry
``{metric, value, result, ...}``. Budgets and data come from the data config's section of the harness's name.

=========== ======================================================================================================
knn         ``transfer.cli knn``        (``classification`` data, ``knn`` budget)
linear      ``transfer.cli linear``     (``classification`` data, ``linear`` budget)
finetune    ``transfer.cli finetune``   (``classification`` data, ``finetune`` budget)
robustness  ``robustness.cli`` imagenet-c / occlusion / backgrounds with the linear probe's best head (so it needs
            ``linear``), then ``robustness.cli report``
det         ``det.cli train`` + ``det.cli test`` on the ``det`` config (mmdet)
seg         ``det.cli train`` + ``det.cli test`` on the ``seg`` config (mmseg)
=========== ======================================================================================================
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ibot.records import read_record

if TYPE_CHECKING:
    from ibot.suite.runner import SuiteRequest

__all__ = ["REQUIRES", "RUNNERS", "HarnessContext", "HarnessError", "project_root"]


class HarnessError(RuntimeError):
    """A harness cannot run (bad data config, missing prerequisite) or its subprocess failed."""


def project_root() -> Path:
    """The folder holding the suite's packages (the checkout, or site-packages): relative det / seg config paths
    are resolved against it, and it leads the subprocesses' ``PYTHONPATH``."""
    spec = importlib.util.find_spec("ibot")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).resolve().parents[1]


@dataclass(frozen=True)
class HarnessContext:
    """Everything a runner needs: the request, the prepared backbone (``source``), its output folder and log."""

    request: SuiteRequest
    source: dict[str, Any]
    out: Path
    log: Path

    def section(self, name: str, required: bool = True) -> dict[str, Any]:
        """The data config's section ``name`` (a copy); a missing required section is a :class:`HarnessError`."""
        sec = self.request.data_config.get(name)
        if sec is None and required:
            raise HarnessError(f"the data config has no '{name}' section")
        return dict(sec or {})

    def module(self, module: str, *args: str, distributed: bool = True) -> list[str]:
        """``python -m module args`` (under ``torch.distributed.run`` with ``--launcher pytorch``)."""
        req = self.request
        if distributed and req.launcher == "pytorch":
            return [req.python, "-m", "torch.distributed.run", f"--nproc_per_node={req.gpus}", "-m", module, *args]
        return [req.python, "-m", module, *args]

    def run(self, cmd: list[str]) -> None:
        """Run ``cmd`` with its output appended to the harness log; a non-zero exit is a :class:`HarnessError`."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root()), env.get("PYTHONPATH")) if p)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            what = " ".join(cmd[cmd.index("-m") + 1:][:2]) if "-m" in cmd else cmd[0]
            raise HarnessError(f"{what} exited {proc.returncode}")


def _set_list(d: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` arguments; containers, booleans and ``None`` as Python literals."""
    return [f"{k}={repr(v) if isinstance(v, (list, tuple, dict, bool)) or v is None else v}" for k, v in d.items()]


# ---------------------------------------------------------------------------------------------------- transfer
def run_transfer(protocol: str, ctx: HarnessContext) -> dict[str, Any]:
    """k-NN / linear probe / fine-tuning on the ``classification`` data with the ``<protocol>`` budget."""
    data = ctx.section("classification")
    budget = ctx.section(protocol, required=False)
    common = ctx.section("common", required=False)
    img_size = budget.get("img_size", ctx.source["model"]["img_size"])
    args = ["--dataset", data.get("dataset", "imagefolder"), "--data-root", str(data["root"]),
            "--pretrained", ctx.source["backbone"], "--img-size", str(img_size),
            "--model-name", ctx.request.display_name, "--seed", str(ctx.request.seed), "--output-dir", str(ctx.out),
            "--no-progress", "--num-workers", str(common.get("num_workers", 0)),
            "--device", str(common.get("device", "auto"))]
    if budget.get("batch_size"):
        args += ["--batch-size", str(budget["batch_size"])]
    if protocol != "knn" and budget.get("epochs"):
        args += ["--epochs", str(budget["epochs"])]
    sets = {f"data.{k}": data[k] for k in ("train_split", "test_split", "num_classes") if k in data}
    sets.update(budget.get("options", {}))
    if sets:
        args += ["--set", *_set_list(sets)]
    ctx.run(ctx.module("transfer.cli", protocol, *args))
    result = read_record(ctx.out / "result.json")
    return {"metric": result["metric"]["name"], "value": float(result["metric"]["value"]),
            "result": str(ctx.out / "result.json")}


# -------------------------------------------------------------------------------------------------- robustness
def probe_head(linear_dir: Path, out: Path) -> dict[str, Any]:
    """The best head of the linear-probe sweep, saved as ``{weight, bias, feature}`` for the robustness CLI; returns
    its file, feature spec (a dict, as the probe recorded it) and accuracy."""
    from ibot.checkpoint import load_file, save_file
    from ibot.features import FeatureSpec

    result_file, state_file = linear_dir / "result.json", linear_dir / "checkpoint.pth"
    if not result_file.is_file() or not state_file.is_file():
        raise HarnessError(f"robustness needs the finished linear probe in {linear_dir} (its best head)")
    metrics = read_record(result_file)["metrics"]
    h = int(metrics["best_head_index"])
    feature = FeatureSpec.from_dict(metrics["best_feature"])
    sweep = load_file(state_file)["sweep"]
    save_file({"weight": sweep[f"heads.{h}.weight"].clone(), "bias": sweep[f"heads.{h}.bias"].clone(),
               "feature": feature.to_dict()}, out)
    return {"head": str(out), "feature": feature.to_dict(), "probe_head": metrics["best_head"],
            "probe_top1": float(metrics["best_top1"])}


def flat_foregrounds(images_root: Path, masks_root: Path, out: Path) -> tuple[Path, Path, Path]:
    """ImageFolder ``<class>/<stem>.png`` + same-layout masks -> flat symlink folders and ``{stem: label}``."""
    classes = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    img_dir, mask_dir = out / "images", out / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, c in enumerate(classes):
        for p in sorted((images_root / c).iterdir()):
            m = next((q for q in (masks_root / c).glob(p.stem + ".*")), None)
            if m is None:
                continue
            for src, dst in ((p, img_dir / p.name), (m, mask_dir / m.name)):
                if not dst.exists():
                    os.symlink(src.resolve(), dst)
            labels[p.stem] = i
    (out / "labels.json").write_text(json.dumps(labels))
    return img_dir, mask_dir, out / "labels.json"


def _robustness_tests(ctx: HarnessContext, cfg: dict[str, Any], data: str, model: list[str]) -> list[list[str]]:
    """One ``robustness.cli`` argument list per selected test."""
    tests = cfg.get("tests", ["imagenet-c", "occlusion", "backgrounds"])
    runs = []
    if "imagenet-c" in tests:
        runs.append(["imagenet-c", *model, "--data", data, "--corruptions", *cfg.get("corruptions", ["benchmark"]),
                     "--severities", *map(str, cfg.get("severities", [1, 2, 3, 4, 5]))])
    if "occlusion" in tests:
        runs.append(["occlusion", *model, "--data", data, "--modes", *cfg.get("occlusion_modes", ["random"]),
                     "--levels", *map(str, cfg.get("occlusion_levels", [0.25, 0.5, 0.75]))])
    if "backgrounds" in tests:
        if cfg.get("masks") is None:
            raise HarnessError("robustness.backgrounds needs robustness.masks (foreground masks, same layout as "
                               "the ImageFolder); drop 'backgrounds' from robustness.tests otherwise")
        images, masks, labels = flat_foregrounds(Path(data), Path(cfg["masks"]), ctx.out / "foregrounds")
        runs.append(["backgrounds", *model, "--images", str(images), "--masks", str(masks), "--labels", str(labels)])
    return runs


def shifted_accuracy(results: dict[str, Any]) -> float:
    """Mean top-1 (%) over every shifted cell (corrupted / occluded / background-changed) of a robustness result
    file; the clean and ``original`` cells are left out."""
    accs = [float(c["acc"]) for g in results.get("groups", {}).values() for name, c in g.get("cells", {}).items()
            if name not in ("clean", "original") and not name.endswith("/0") and isinstance(c, dict) and "acc" in c]
    if not accs:
        raise HarnessError("no accuracy found in the robustness result file")
    return 100.0 * sum(accs) / len(accs)


def run_robustness(ctx: HarnessContext) -> dict[str, Any]:
    """ImageNet-C / occlusion / backgrounds on the ``robustness`` data with the linear probe's best head."""
    cfg = ctx.section("robustness")
    cls = ctx.section("classification", required=False)
    common = ctx.section("common", required=False)
    data = cfg.get("data") or (str(Path(cls["root"]) / cls.get("test_split", "val")) if cls else None)
    if data is None:
        raise HarnessError("robustness needs robustness.data (an ImageFolder) or a classification section")
    head = probe_head(Path(ctx.request.work_dir) / "linear", ctx.out / "head.pth")
    img = int(cfg.get("img_size", ctx.source["model"]["img_size"]))
    results = ctx.out / "results.json"
    model = ["--backbone", ctx.source["backbone"], "--head", head["head"], "--resize", str(int(round(img / 0.875))),
             "--crop", str(img), "--out", str(results), "--name", ctx.request.display_name, "--no-progress",
             "--workers", str(common.get("num_workers", 0)), "--seed", str(ctx.request.seed),
             "--batch-size", str(cfg.get("batch_size", 64))]
    if common.get("device") not in (None, "auto"):
        model += ["--device", str(common["device"])]
    if cfg.get("limit"):
        model += ["--limit", str(cfg["limit"])]
    for args in _robustness_tests(ctx, cfg, str(data), model):
        ctx.run(ctx.module("robustness.cli", *args, distributed=False))
    report = ctx.out / "report"
    ctx.run(ctx.module("robustness.cli", "report", str(results), "--out-dir", str(report),
                       "--title", f"Robustness: {ctx.request.display_name}", distributed=False))
    return {"metric": "mean shifted top-1", "value": shifted_accuracy(json.loads(results.read_text())),
            "result": str(results), "report": str(report / "report.html"), "summary": str(report / "summary.json"),
            **{k: head[k] for k in ("probe_head", "feature")}}


# ------------------------------------------------------------------------------------------------------- dense
def resolve_config(path: str) -> str:
    """A det / seg config path: absolute, relative to the current folder, or relative to the project root."""
    if os.path.isabs(path) or os.path.isfile(path):
        return os.path.abspath(path)
    candidate = project_root() / path
    if not candidate.is_file():
        raise HarnessError(f"config {path!r} not found (relative to {os.getcwd()} or {project_root()})")
    return str(candidate)


def run_dense(task: str, ctx: HarnessContext) -> dict[str, Any]:
    """Detection (``det``) or segmentation (``seg``): train the config with the backbone, then test it."""
    cfg = ctx.section(task)
    if "config" not in cfg:
        raise HarnessError(f"the '{task}' section needs config= (an mmdet / mmseg config)")
    config, work = resolve_config(cfg["config"]), ctx.out / "train"
    common = ["--work-dir", str(work), "--backbone", ctx.source["backbone"]]
    if cfg.get("data_root"):
        common += ["--data-root", str(cfg["data_root"])]
    if ctx.request.launcher == "pytorch":
        common += ["--launcher", "pytorch"]
    options = ["--cfg-options", *_set_list(cfg["cfg_options"])] if cfg.get("cfg_options") else []
    train_only = ["--resume"] if (work / "last_checkpoint").is_file() and cfg.get("resume", True) else []
    if cfg.get("amp"):
        train_only += ["--amp", str(cfg["amp"])]
    ctx.run(ctx.module("det.cli", "train", config, *common, *train_only, *options))
    ckpt = (work / "last_checkpoint").read_text().strip()
    metrics_file = ctx.out / "metrics.json"
    ctx.run(ctx.module("det.cli", "test", config, ckpt, *common, "--metrics-json", str(metrics_file), *options))
    metrics = {k: v for k, v in read_record(metrics_file, kind="dense-metrics").items() if k != "schema"}
    metric = cfg.get("metric", "coco/bbox_mAP" if task == "det" else "mIoU")
    if metric not in metrics:
        raise HarnessError(f"metric {metric!r} not in {metrics_file}: {sorted(metrics)}")
    percent = lambda k: 100.0 * float(metrics[k]) if k.startswith("coco/") else float(metrics[k])  # noqa: E731
    extra = cfg.get("extra_metrics", ["coco/bbox_mAP_50", "coco/segm_mAP"] if task == "det" else ["aAcc", "mAcc"])
    return {"metric": metric, "value": percent(metric), "extra": {k: percent(k) for k in extra if k in metrics},
            "result": str(metrics_file), "checkpoint": ckpt}


#: harness -> runner, in run order.
RUNNERS: dict[str, Callable[[HarnessContext], dict[str, Any]]] = {
    "knn": partial(run_transfer, "knn"),
    "linear": partial(run_transfer, "linear"),
    "finetune": partial(run_transfer, "finetune"),
    "robustness": run_robustness,
    "det": partial(run_dense, "det"),
    "seg": partial(run_dense, "seg"),
}
#: harness -> the harnesses it needs (run first even when not selected).
REQUIRES: dict[str, tuple[str, ...]] = {"robustness": ("linear",)}
