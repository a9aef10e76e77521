"""One backbone through the whole evaluation suite (``tools/evaluate_backbone.py``).

Every selected harness runs as a subprocess of the existing tool, exactly as a user would run it, with its output
and log under ``<work-dir>/<harness>/``:

=========== ======================================================================================================
knn         ``tools/transfer_knn.py``          (``classification`` data, ``knn`` budget)
linear      ``tools/transfer_linear.py``       (``classification`` data, ``linear`` budget)
finetune    ``tools/transfer_finetune.py``     (``classification`` data, ``finetune`` budget)
robustness  ``tools/robustness_eval.py`` imagenet-c / occlusion / backgrounds with the best linear-probe head
            (so it needs ``linear``, which is run first when not selected), then ``tools/robustness_report.py``
det         ``tools/train.py`` + ``tools/test.py`` on the ``det`` config (``coco`` data)
seg         ``tools/train.py`` + ``tools/test.py`` on the ``seg`` config (``ade`` data)
=========== ======================================================================================================

The checkpoint (any format ``ibot.checkpoint`` reads, or ``random``) is first reduced to a tensors-only backbone file
``<work-dir>/backbone.pth`` that every harness loads (no harness has to unpickle anything, and ``random`` is the
same seeded initialisation everywhere). Finished harnesses (``<work-dir>/<harness>/suite_done.json``) are skipped
on re-run; a failing harness is recorded with its log path and the others still run. ``<work-dir>/results.json``
gathers one entry per harness; :mod:`transfer.suite_report` turns one or several work dirs into a report.

The data config (Python file of plain assignments, or JSON) names the data roots and the per-harness budgets::

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

import hashlib
import json
import os
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("knn", "linear", "finetune", "robustness", "det", "seg")
SCHEMA = "ibot-suite/evaluate-backbone/1"
DONE = "suite_done.json"

__all__ = ["HARNESSES", "SuiteArgs", "load_data_config", "prepare_backbone", "run_suite", "HarnessError"]


class HarnessError(RuntimeError):
    """A harness cannot run (bad data config, missing dependency); reported like a failed subprocess."""


@dataclass
class SuiteArgs:
    checkpoint: str
    work_dir: str
    data_config: dict[str, Any]
    suite: list[str]
    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224
    overrides: dict[str, str] = field(default_factory=dict)  # model.embed_dim=... etc.
    trust_checkpoint: bool = False
    checkpoint_key: str | None = None
    name: str | None = None
    launcher: str = "none"
    gpus: int = 1
    seed: int = 0
    python: str = sys.executable


# ------------------------------------------------------------------------------------------------------ config
def load_data_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file, or a Python file whose public, non-module top-level names are the config."""
    path = os.fspath(path)
    if path.endswith(".json"):
        with open(path) as fh:
            return json.load(fh)
    ns = runpy.run_path(path, run_name="__suite_config__")
    return {k: v for k, v in ns.items() if not k.startswith("_") and not callable(v)
            and type(v).__name__ != "module"}


def _section(cfg: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    sec = cfg.get(name)
    if sec is None and required:
        raise HarnessError(f"the data config has no '{name}' section")
    return dict(sec or {})


# -------------------------------------------------------------------------------------------------- backbone
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_kwargs(args: SuiteArgs) -> dict[str, Any]:
    kw: dict[str, Any] = {"patch_size": args.patch_size, "img_size": args.img_size}
    for k, v in args.overrides.items():
        if k.startswith("model.") and k[6:] in ("embed_dim", "depth", "num_heads"):
            kw[k[6:]] = int(v)
    return kw


def prepare_backbone(args: SuiteArgs) -> dict[str, Any]:
    """Write ``<work-dir>/backbone.pth`` (tensors only) and return what it came from.

    Raises ``UntrustedCheckpointError`` for a pickling checkpoint without ``trust_checkpoint``, and any loading
    error (wrong arch, missing keys) before a harness starts.
    """
    import torch

    from ibot.checkpoint import extract_backbone_state_dict, load_file, load_state_dict_report, save_file
    from ibot.vit import build_vit

    out = Path(args.work_dir) / "backbone.pth"
    torch.manual_seed(args.seed)
    model = build_vit(args.arch, **_model_kwargs(args))
    if args.checkpoint == "random":
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        source = {"checkpoint": "random", "seed": args.seed}
    else:
        raw = load_file(args.checkpoint, trusted=args.trust_checkpoint)
        sd = extract_backbone_state_dict(raw, args.checkpoint_key)
        source = {"checkpoint": os.path.abspath(args.checkpoint), "checkpoint_key": args.checkpoint_key,
                  "checkpoint_sha256": _sha256(Path(args.checkpoint))}
    sd = {k: v.contiguous() for k, v in sd.items()
          if not k.startswith(("head.", "fc_norm.")) and not k.startswith("masked_embed")}
    load_state_dict_report(model, sd, strict=True, ignore=("masked_embed",))  # fail fast on a wrong arch
    existing = load_file(out) if out.is_file() else {}
    if existing.keys() != sd.keys() or any(not torch.equal(v, existing[k]) for k, v in sd.items()):
        save_file(sd, out)  # rewritten only when it changes, so the transfer tools' feature caches stay valid
    source.update(backbone=str(out), backbone_sha256=_sha256(out), embed_dim=int(model.embed_dim),
                  depth=len(model.blocks), num_heads=int(model.blocks[0].attn.num_heads))
    return source


# ----------------------------------------------------------------------------------------------- subprocesses
def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise HarnessError(f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]} exited {proc.returncode}")


def _launch(args: SuiteArgs, script: str, distributed: bool = True) -> list[str]:
    if distributed and args.launcher == "pytorch":
        return [args.python, "-m", "torch.distributed.run", f"--nproc_per_node={args.gpus}", script]
    return [args.python, script]


def _set_list(d: dict[str, Any]) -> list[str]:
    return [f"{k}={repr(v) if isinstance(v, (list, tuple, dict, bool)) or v is None else v}"
            for k, v in d.items()]


# --------------------------------------------------------------------------------------------------- harnesses
def _transfer(h: str, args: SuiteArgs, backbone: str, out: Path, log: Path) -> dict[str, Any]:
    cfg = args.data_config
    data = _section(cfg, "classification")
    budget = _section(cfg, h, required=False)
    common = _section(cfg, "common", required=False)
    script = f"tools/transfer_{h}.py"
    cmd = _launch(args, script) + [
        "--dataset", data.get("dataset", "imagefolder"), "--data-root", str(data["root"]),
        "--arch", args.arch, "--patch-size", str(args.patch_size), "--img-size", str(budget.get("img_size",
                                                                                                 args.img_size)),
        "--model-name", args.name or "backbone", "--seed", str(args.seed), "--output-dir", str(out),
        "--no-progress", "--num-workers", str(common.get("num_workers", 0)),
        "--device", str(common.get("device", "auto"))]
    if backbone:
        cmd += ["--pretrained", backbone]
    if budget.get("batch_size"):
        cmd += ["--batch-size", str(budget["batch_size"])]
    if h != "knn" and budget.get("epochs"):
        cmd += ["--epochs", str(budget["epochs"])]
    sets = {k: v for k, v in args.overrides.items()}
    for k in ("train_split", "test_split", "num_classes"):
        if k in data:
            sets[f"data.{k}"] = data[k]
    sets.update(budget.get("options", {}))
    if sets:
        cmd += ["--set", *_set_list(sets)]
    _run(cmd, log)
    result = json.loads((out / "result.json").read_text())
    return {"metric": result["metric"]["name"], "value": float(result["metric"]["value"]),
            "result": str(out / "result.json")}


def _probe_head(linear_dir: Path, out: Path) -> dict[str, Any]:
    """The best head of the linear-probe sweep as ``{weight, bias}`` + its feature spec (for robustness_eval)."""
    from ibot.checkpoint import load_file, save_file

    if not (linear_dir / "result.json").is_file() or not (linear_dir / "checkpoint.pth").is_file():
        raise HarnessError(f"robustness needs the finished linear probe in {linear_dir} (its best head)")
    state = load_file(linear_dir / "checkpoint.pth")
    result = json.loads((linear_dir / "result.json").read_text())
    names = result["metrics"]["heads"]
    best = result["metrics"]["best_head"]
    h = names.index(best)
    label = best.split()[0]  # cls<n>[+avgpool]
    n_last = int(label[3:].split("+")[0])
    avgpool = 2 if "+avgpool" in label else 0
    sweep = state["sweep"]
    save_file({"weight": sweep[f"heads.{h}.weight"].clone(), "bias": sweep[f"heads.{h}.bias"].clone()}, out)
    return {"head": str(out), "n_last_blocks": n_last, "avgpool": avgpool, "probe_head": best,
            "probe_top1": result["metric"]["value"]}


def _flat_foregrounds(images_root: Path, masks_root: Path, out: Path) -> tuple[Path, Path, Path]:
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


def _robustness(args: SuiteArgs, backbone: str, out: Path, log: Path) -> dict[str, Any]:
    cfg = _section(args.data_config, "robustness")
    cls = _section(args.data_config, "classification", required=False)
    common = _section(args.data_config, "common", required=False)
    data = cfg.get("data") or (Path(cls["root"]) / cls.get("test_split", "val") if cls else None)
    if data is None:
        raise HarnessError("robustness needs robustness.data (an ImageFolder) or a classification section")
    head = _probe_head(Path(args.work_dir) / "linear", out / "head.pth")
    img = int(cfg.get("img_size", args.img_size))
    model = ["--arch", args.arch, "--patch-size", str(args.patch_size), "--img-size", str(args.img_size),
             "--head", head["head"], "--n-last-blocks", str(head["n_last_blocks"]), "--avgpool",
             str(head["avgpool"]), "--resize", str(int(round(img / 0.875))), "--crop", str(img),
             "--out", str(out / "results.json"), "--name", args.name or "backbone", "--no-progress",
             "--workers", str(common.get("num_workers", 0)), "--seed", str(args.seed),
             "--batch-size", str(cfg.get("batch_size", 64))]
    for key in ("depth", "embed_dim", "num_heads"):
        if f"model.{key}" in args.overrides:
            model += [f"--{key.replace('_', '-')}", str(args.overrides[f"model.{key}"])]
    if backbone:
        model += ["--backbone", backbone]
    if common.get("device") not in (None, "auto"):
        model += ["--device", str(common["device"])]
    if cfg.get("limit"):
        model += ["--limit", str(cfg["limit"])]
    tool = _launch(args, "tools/robustness_eval.py", distributed=False)
    tests = cfg.get("tests", ["imagenet-c", "occlusion", "backgrounds"])
    if "imagenet-c" in tests:
        _run(tool + ["imagenet-c", *model, "--data", str(data),
                     "--corruptions", *cfg.get("corruptions", ["benchmark"]),
                     "--severities", *map(str, cfg.get("severities", [1, 2, 3, 4, 5]))], log)
    if "occlusion" in tests:
        _run(tool + ["occlusion", *model, "--data", str(data), "--modes", *cfg.get("occlusion_modes", ["random"]),
                     "--levels", *map(str, cfg.get("occlusion_levels", [0.25, 0.5, 0.75]))], log)
    if "backgrounds" in tests:
        masks = cfg.get("masks")
        if masks is None:
            raise HarnessError("robustness.backgrounds needs robustness.masks (foreground masks, same layout as "
                               "the ImageFolder); drop 'backgrounds' from robustness.tests otherwise")
        images, mask_dir, labels = _flat_foregrounds(Path(data), Path(masks), out / "foregrounds")
        _run(tool + ["backgrounds", *model, "--images", str(images), "--masks", str(mask_dir),
                     "--labels", str(labels)], log)
    _run([args.python, "tools/robustness_report.py", str(out / "results.json"), "--out-dir", str(out / "report"),
          "--title", f"Robustness: {args.name or 'backbone'}"], log)
    summary = json.loads((out / "report" / "summary.json").read_text())
    metric, value = _robustness_headline(summary, json.loads((out / "results.json").read_text()))
    return {"metric": metric, "value": value, "result": str(out / "results.json"),
            "report": str(out / "report" / "report.html"), "summary": str(out / "report" / "summary.json"),
            **{k: head[k] for k in ("probe_head", "n_last_blocks", "avgpool")}}


def _robustness_headline(summary: dict[str, Any], results: dict[str, Any]) -> tuple[str, float]:
    """Mean top-1 (%) over every shifted cell (corrupted / occluded / background-changed) of the result file;
    the clean and ``original`` cells are left out."""
    accs = [float(c["acc"]) for g in results.get("groups", {}).values() for name, c in g.get("cells", {}).items()
            if name not in ("clean", "original") and not name.endswith("/0") and isinstance(c, dict) and "acc" in c]
    if not accs:
        raise HarnessError("no accuracy found in the robustness result file")
    return "mean shifted top-1", 100.0 * sum(accs) / len(accs)


def _dense_shape_options(h: str, args: SuiteArgs, source: dict[str, Any]) -> dict[str, Any]:
    """Backbone shape of the evaluated checkpoint, and the input widths of the modules that read its feature maps
    (every pyramid level has ``embed_dim`` channels), so one det / seg config serves any ViT size."""
    d = source["embed_dim"]
    opts: dict[str, Any] = {"model.backbone.arch": args.arch, "model.backbone.patch_size": args.patch_size,
                            "model.backbone.embed_dim": d, "model.backbone.depth": source["depth"],
                            "model.backbone.num_heads": source["num_heads"]}
    if h == "det":
        opts["model.neck.in_channels"] = [d] * 4
    else:
        opts.update({"model.decode_head.in_channels": [d] * 4, "model.auxiliary_head.in_channels": d})
    return opts


def _dense(h: str, args: SuiteArgs, source: dict[str, Any], out: Path, log: Path) -> dict[str, Any]:
    cfg = _section(args.data_config, h)
    if "config" not in cfg:
        raise HarnessError(f"the '{h}' section needs config= (an mmdet / mmseg config)")
    opts = _dense_shape_options(h, args, source) if cfg.get("shape_from_checkpoint", True) else {}
    opts.update(cfg.get("cfg_options", {}))
    opts["model.backbone.init_cfg.checkpoint"] = source["backbone"]
    common = ["--work-dir", str(out / "train")]
    if cfg.get("data_root"):
        common += ["--data-root", str(cfg["data_root"])]
    if args.launcher == "pytorch":
        common += ["--launcher", "pytorch"]
    work = out / "train"
    train_only = ["--resume"] if (work / "last_checkpoint").is_file() and cfg.get("resume", True) else []
    if cfg.get("amp"):
        train_only += ["--amp", str(cfg["amp"])]
    _run(_launch(args, "tools/train.py") + [cfg["config"], *common, *train_only, "--cfg-options", *_set_list(opts)],
         log)
    ckpt = (work / "last_checkpoint").read_text().strip()
    metrics_file = out / "metrics.json"
    test_opts = {k: v for k, v in opts.items() if k != "model.backbone.init_cfg.checkpoint"}
    _run(_launch(args, "tools/test.py") + [cfg["config"], ckpt, *common, "--metrics-json", str(metrics_file),
                                           "--cfg-options", *_set_list(test_opts)], log)
    metrics = json.loads(metrics_file.read_text())
    metric = cfg.get("metric", "coco/bbox_mAP" if h == "det" else "mIoU")
    if metric not in metrics:
        raise HarnessError(f"metric {metric!r} not in {metrics_file}: {sorted(metrics)}")
    value = float(metrics[metric])
    extra = cfg.get("extra_metrics", ["coco/bbox_mAP_50", "coco/segm_mAP"] if h == "det" else ["aAcc", "mAcc"])
    return {"metric": metric, "value": 100.0 * value if "coco/" in metric else value,
            "extra": {k: (100.0 * float(metrics[k]) if "coco/" in k else float(metrics[k]))
                      for k in extra if k in metrics},
            "result": str(metrics_file), "checkpoint": ckpt}


# ------------------------------------------------------------------------------------------------------ runner
def _order(suite: list[str]) -> list[str]:
    unknown = [h for h in suite if h not in HARNESSES]
    if unknown:
        raise ValueError(f"unknown harness(es) {unknown}; choose from {list(HARNESSES)}")
    chosen = set(suite) | ({"linear"} if "robustness" in suite else set())
    return [h for h in HARNESSES if h in chosen]


def run_suite(args: SuiteArgs, log=print) -> dict[str, Any]:
    """Run the selected harnesses (resumable), write ``<work-dir>/results.json`` and return it."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source = prepare_backbone(args)
    results_path = work / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if previous.get("backbone_sha256") not in (None, source["backbone_sha256"]):
        raise RuntimeError(f"{work} holds results of another backbone ({previous.get('checkpoint')}); "
                           "use another --work-dir")
    record = {"schema": SCHEMA, "name": args.name or Path(str(args.checkpoint)).stem, **source,
              "arch": args.arch, "patch_size": args.patch_size, "img_size": args.img_size,
              "overrides": args.overrides, "harnesses": dict(previous.get("harnesses", {}))}
    for h in _order(args.suite):
        out = work / h
        done = out / DONE
        if done.is_file():
            log(f"[suite] {h}: done before, skipped ({done})")
            record["harnesses"][h] = {**json.loads(done.read_text()), "skipped": True}
            continue
        out.mkdir(parents=True, exist_ok=True)
        logfile = out / "log.txt"
        log(f"[suite] {h}: running (log: {logfile})")
        t0 = time.time()
        try:
            if h in ("knn", "linear", "finetune"):
                entry = _transfer(h, args, source["backbone"], out, logfile)
            elif h == "robustness":
                entry = _robustness(args, source["backbone"], out, logfile)
            else:
                entry = _dense(h, args, source, out, logfile)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the suite goes on
            with open(logfile, "a") as fh:
                fh.write(f"[suite] {h} failed: {type(exc).__name__}: {exc}\n")
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "log": str(logfile),
                     "seconds": round(time.time() - t0, 1)}
            log(f"[suite] {h}: FAILED ({entry['error']}); log: {logfile}")
        else:
            entry.update(status="ok", log=str(logfile), seconds=round(time.time() - t0, 1))
            done.write_text(json.dumps(entry, indent=2) + "\n")
            log(f"[suite] {h}: {entry['metric']} = {entry['value']:.2f} ({entry['seconds']} s)")
        record["harnesses"][h] = entry
        results_path.write_text(json.dumps(record, indent=2) + "\n")
    results_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def failed(record: dict[str, Any], suite: list[str]) -> list[str]:
    return [h for h in _order(suite) if record["harnesses"].get(h, {}).get("status") != "ok"]
