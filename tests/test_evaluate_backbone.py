"""tools/evaluate_backbone.py (the suite runner, ``ibot.suite``) end to end on CPU: a tiny ViT (vit_tiny width,
depth 2, patch 8, 32 px) through the k-NN, linear-probe and robustness harnesses (the real package CLIs, as
subprocesses) on a small generated scene data set, with no shape flag: results.json, the combined report, resuming,
the random-init baseline, a failing harness that does not stop the others, and the checkpoint formats (official
full checkpoint only with --trust-checkpoint, files converted by tools/convert_checkpoint.py, timm, our
pretraining)."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibot.checkpoint import load_file
from ibot.model import build_student_teacher
from ibot.vit import build_vit

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools" / "evaluate_backbone.py")
#: the description of a `random` backbone (a file needs none: it describes itself or its tensors do)
RANDOM_MODEL = ["--arch", "vit_tiny", "--patch-size", "8", "--img-size", "32", "--depth", "2"]


def evaluate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from ibot.scenes import ensure_scenes

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("IBOT_CACHE_DIR")
    os.environ["IBOT_CACHE_DIR"] = str(cache)
    try:
        root = ensure_scenes(image_size=32, scene_size=48, n_train_per_class=6, n_val_per_class=3,
                             n_scenes_train=2, n_scenes_val=2, classes=("disk", "square", "triangle"))
    finally:
        if old is None:
            os.environ.pop("IBOT_CACHE_DIR")
        else:
            os.environ["IBOT_CACHE_DIR"] = old
    assert str(root).startswith(str(cache))
    return root


def data_config(scenes: Path, path: Path, **changes) -> str:
    cfg = dict(
        classification=dict(dataset="imagefolder", root=str(scenes / "classification"), test_split="val"),
        robustness=dict(masks=str(scenes / "classification" / "masks" / "val"), corruptions=["gaussian_noise"],
                        severities=[3], occlusion_levels=[0.5], batch_size=16),
        knn=dict(batch_size=16, options={"ks": [5], "report_k": 5}),
        linear=dict(epochs=2, batch_size=8, options={"lrs": [0.01, 0.1],
                                                      "features": [{"n_last_blocks": 2, "avgpool": True}]}),
        common=dict(device="cpu", num_workers=0))
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return str(path)


def tiny_vit(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_vit("vit_tiny", patch_size=8, img_size=32, depth=2)


@pytest.fixture(scope="module")
def main_run(scenes, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("main")
    ckpt = tmp / "tiny_backbone.pth"
    torch.save(tiny_vit().state_dict(), ckpt)
    cfg = data_config(scenes, tmp / "data.json")
    work = tmp / "work"
    out = ok(evaluate(str(ckpt), "--suite", "knn", "linear", "robustness", "--data-config", cfg,
                      "--work-dir", str(work), "--name", "tiny"))
    return {"work": work, "ckpt": ckpt, "cfg": cfg, "out": out, "tmp": tmp}


def test_suite_results_and_report(main_run) -> None:
    work = main_run["work"]
    rec = json.loads((work / "results.json").read_text())
    assert rec["name"] == "tiny" and rec["schema"] == "ibot-suite/suite/2"
    assert rec["model"] == {"family": "vit", "arch": None, "patch_size": 8, "img_size": 32, "embed_dim": 192,
                            "depth": 2, "num_heads": 3}  # inferred from the flat file's tensors
    assert set(rec["harnesses"]) == {"knn", "linear", "robustness"}
    for h, metric in (("knn", "top1@k=5"), ("linear", "top1"), ("robustness", "mean shifted top-1")):
        e = rec["harnesses"][h]
        assert e["status"] == "ok" and e["metric"] == metric and 0.0 <= e["value"] <= 100.0, e
        assert Path(e["log"]).is_file() and Path(e["log"]).parent == work / h
        assert Path(e["result"]).is_file() and Path(e["result"]).parent == work / h
    # the transfer numbers are the tools' own result files
    for h in ("knn", "linear"):
        tool = json.loads((work / h / "result.json").read_text())
        assert tool["metric"]["value"] == pytest.approx(rec["harnesses"][h]["value"])
    # robustness ran the three tests with the probe's best head and the report tool
    rob = json.loads((work / "robustness" / "results.json").read_text())
    assert set(rob["groups"]) == {"imagenet_c", "occlusion", "backgrounds"}
    assert rec["harnesses"]["robustness"]["feature"] == {"n_last_blocks": 2, "pooling": "cls+avgpool"}
    assert (work / "robustness" / "report" / "report.html").is_file()
    # the backbone every harness loaded is the checkpoint's tensors
    bb_file = load_file(work / "backbone.pth")
    assert bb_file["schema"] == "ibot-suite/backbone/1" and bb_file["model"] == rec["model"]
    bb = bb_file["state_dict"]
    for k, v in torch.load(main_run["ckpt"]).items():
        if k != "masked_embed":
            assert torch.equal(bb[k], v), k

    md = (work / "report.md").read_text()
    assert re.search(r"\| knn \| top1@k=5 \| \d+\.\d\d \|", md), md
    assert "(leaderboard.html)" in md and "(robustness/report/report.html)" in md
    assert (work / "leaderboard.html").is_file() and (work / "leaderboard.md").is_file()
    page = (work / "report.html").read_text()
    assert 'href="leaderboard.html"' in page and 'href="robustness/report/report.html"' in page
    png = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert png, "no embedded plot"
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(png.group(1)))).convert("L")
    # a drawn chart, not a blank image
    assert img.size[0] >= 400 and len(img.getcolors(maxcolors=1 << 16) or range(1000)) > 10


def test_resume_skips_finished(main_run) -> None:
    work = main_run["work"]
    stamp = (work / "knn" / "result.json").stat().st_mtime_ns
    out = ok(evaluate(str(main_run["ckpt"]), "--suite", "knn", "linear", "robustness",
                      "--data-config", main_run["cfg"], "--work-dir", str(work), "--name", "tiny"))
    for h in ("knn", "linear", "robustness"):
        assert f"[suite] {h}: done before, skipped" in out, out
    assert (work / "knn" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((work / "results.json").read_text())["harnesses"]["knn"]["skipped"] is True


def test_random_baseline_and_side_by_side_report(main_run, scenes) -> None:
    tmp = main_run["tmp"]
    work = tmp / "random"
    ok(evaluate("random", *RANDOM_MODEL, "--suite", "knn", "--data-config", main_run["cfg"], "--work-dir", str(work),
                "--name", "random-init"))
    rec = json.loads((work / "results.json").read_text())
    assert rec["checkpoint"] == "random" and rec["harnesses"]["knn"]["status"] == "ok"
    # the random backbone is the seeded initialisation, not the pretrained file
    assert not torch.equal(load_file(work / "backbone.pth")["state_dict"]["blocks.0.attn.qkv.weight"],
                           load_file(main_run["work"] / "backbone.pth")["state_dict"]["blocks.0.attn.qkv.weight"])
    assert rec["model"]["depth"] == 2 and rec["model"]["embed_dim"] == 192
    out = tmp / "compare"
    ok(evaluate("--report", str(main_run["work"]), str(work), "--out", str(out)))
    md = (out / "report.md").read_text()
    assert "| harness | metric | tiny | random-init |" in md
    assert re.search(r"\| linear \| top1 \| \d+\.\d\d \| — \|", md), md
    board = (out / "leaderboard.md").read_text()
    assert "tiny" in board and "random-init" in board
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and 'href="leaderboard.html"' in page
    assert "../main" in page or os.path.relpath(main_run["work"], out) in page  # links the robustness report


def test_failing_harness_does_not_stop_the_others(scenes, tmp_path) -> None:
    ckpt = tmp_path / "b.pth"
    torch.save(tiny_vit().state_dict(), ckpt)
    cfg = data_config(scenes, tmp_path / "bad.json", knn=dict(batch_size=16, options={"no_such_key": 1}))
    work = tmp_path / "work"
    proc = evaluate(str(ckpt), "--suite", "knn", "linear", "--data-config", cfg, "--work-dir", str(work))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = work / "knn" / "log.txt"
    assert "FAILED knn" in proc.stderr and str(log) in proc.stderr
    rec = json.loads((work / "results.json").read_text())
    assert rec["harnesses"]["knn"]["status"] == "failed" and rec["harnesses"]["knn"]["log"] == str(log)
    assert "no_such_key" in log.read_text()
    assert rec["harnesses"]["linear"]["status"] == "ok"  # ran after the failure
    assert not (work / "knn" / "suite_done.json").exists()
    assert "FAILED" in (work / "report.md").read_text()


# ------------------------------------------------------------------------------------------ checkpoint formats
def _request(ckpt, work, **kw):
    from ibot.suite import SuiteRequest

    return SuiteRequest(backbone=str(ckpt), work_dir=work, data_config={}, harnesses=[], **kw)


def _backbone(source: dict) -> dict:
    return load_file(source["backbone"])["state_dict"]


def test_official_full_checkpoint_needs_trust(scenes, tmp_path) -> None:
    from ibot.checkpoint import UntrustedCheckpointError
    from ibot.suite.runner import prepare_backbone

    model = tiny_vit(3)
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 4)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in model.state_dict().items()}
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 100,
                "args": argparse.Namespace(arch="vit_tiny", patch_size=8)}, ckpt)

    cfg = data_config(scenes, tmp_path / "data.json")
    proc = evaluate(str(ckpt), "--suite", "knn", "--data-config", cfg, "--work-dir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "UntrustedCheckpointError" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert not (tmp_path / "w" / "knn").exists()
    with pytest.raises(UntrustedCheckpointError):
        prepare_backbone(_request(ckpt, tmp_path / "w2"))

    src = prepare_backbone(_request(ckpt, tmp_path / "w3", trust_checkpoint=True))
    bb = _backbone(src)  # tensors only: loads without trust
    for k, v in model.state_dict().items():
        if k != "masked_embed":
            assert torch.equal(bb[k], v), k  # the teacher, not the (zeroed) student
    assert not any(k.startswith("head.") for k in bb)


def test_timm_state_dict(tmp_path) -> None:
    from ibot.suite.runner import prepare_backbone

    model = tiny_vit(4)
    sd = {k: v for k, v in model.state_dict().items() if k != "masked_embed"}
    sd.update({"head.weight": torch.randn(10, 192), "head.bias": torch.zeros(10)})  # timm classifier head
    ckpt = tmp_path / "timm.pth"
    torch.save(sd, ckpt)
    bb = _backbone(prepare_backbone(_request(ckpt, tmp_path / "w")))
    assert set(bb) == {k for k in sd if not k.startswith("head.")}
    assert all(torch.equal(bb[k], sd[k]) for k in bb)


def test_our_pretrain_checkpoint(tmp_path) -> None:
    from ibot.suite.runner import prepare_backbone
    from pretrain.checkpointing import FORMAT

    torch.manual_seed(5)
    student, teacher = build_student_teacher("vit_tiny", patch_size=8, img_size=32, drop_path_rate=0.0,
                                             out_dim=16, patch_out_dim=16, head_hidden_dim=32,
                                             head_bottleneck_dim=16, vit_overrides=dict(depth=2))
    with torch.no_grad():
        for p in student.parameters():
            p.zero_()
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                "ibot_loss": {"center": torch.zeros(1, 16), "center2": torch.zeros(1, 1, 16)},
                "format": FORMAT, "epoch": 1, "iteration": 2}, ckpt)
    bb = _backbone(prepare_backbone(_request(ckpt, tmp_path / "w")))
    tsd = teacher.state_dict()
    prefix = "backbone." if any(k.startswith("backbone.") for k in tsd) else ""
    assert bb and all(torch.equal(v, tsd[prefix + k]) for k, v in bb.items())  # the teacher backbone
    assert all(v.abs().sum() > 0 for k, v in bb.items() if k.endswith("qkv.weight"))


def test_files_need_no_shape_flags(scenes, tmp_path) -> None:
    """An official full checkpoint and a timm state dict converted by tools/convert_checkpoint.py, and a described
    file of a ViT whose head count no tensor reveals (96-d, 3 heads of 32), describe themselves to the suite; the
    converted official file runs a harness with no shape flag."""
    from ibot.checkpoint import describe_backbone, save_backbone
    from ibot.suite.runner import prepare_backbone

    torch.manual_seed(6)
    model = build_vit("vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=96, num_heads=3)
    sd = {k: v for k, v in model.state_dict().items() if k != "masked_embed"}
    expected = {"family": "vit", "arch": None, "patch_size": 8, "img_size": 32, "embed_dim": 96, "depth": 2,
                "num_heads": 3}
    files = {"described": tmp_path / "described.pth"}
    save_backbone(files["described"], sd, describe_backbone(model), {"kind": "test"})
    sources = {"official": ({"teacher": {f"backbone.{k}": v for k, v in sd.items()},
                             "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()},
                             "args": argparse.Namespace(arch="vit_tiny")}, ["--trust-checkpoint"]),
               "timm": ({**sd, "head.weight": torch.randn(10, 96), "head.bias": torch.zeros(10)}, [])}
    for fmt, (obj, trust) in sources.items():
        src, files[fmt] = tmp_path / f"{fmt}_source.pth", tmp_path / f"{fmt}.pth"
        torch.save(obj, src)
        conv = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), str(src),
                               str(files[fmt]), *trust, "--num-heads", "3"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert conv.returncode == 0, conv.stdout + conv.stderr
    for fmt, path in files.items():
        assert load_file(path)["model"]["num_heads"] == 3, fmt  # the converted file describes itself
        src = prepare_backbone(_request(path, tmp_path / f"w_{fmt}"))
        assert src["model"] == expected and src["described"] is True, fmt
        assert all(torch.equal(v, sd[k]) for k, v in _backbone(src).items()) and set(_backbone(src)) == set(sd)

    work = tmp_path / "work"
    ok(evaluate(str(files["official"]), "--suite", "knn", "--data-config", data_config(scenes, tmp_path / "d.json"),
                "--work-dir", str(work)))
    rec = json.loads((work / "results.json").read_text())
    assert rec["harnesses"]["knn"]["status"] == "ok" and rec["model"] == expected
    knn = json.loads((work / "knn" / "result.json").read_text())
    assert json.dumps(knn).count('"num_heads": 3') >= 1  # the transfer tool built the described model


# ------------------------------------------------------------------------------------- detection, segmentation
@pytest.mark.slow  # ~90 s; the default run covers it by test_dense_cli's --backbone tests and the quick demo
def test_det_and_seg_follow_the_checkpoint_shape(tmp_path) -> None:
    """The demo-scale det / seg configs (96-d, 4-block ViT) evaluate a 192-d, 2-block checkpoint: the backbone file's
    description sets the backbone shape and the neck / head input widths; it loads with nothing missing."""
    from ibot.scenes import ensure_scenes

    scenes = ensure_scenes(cache_dir=tmp_path / "cache", image_size=32, scene_size=64, n_train_per_class=2,
                           n_val_per_class=1, n_scenes_train=4, n_scenes_val=2)  # all 8 default classes
    ckpt = tmp_path / "tiny_backbone.pth"
    torch.save(tiny_vit().state_dict(), ckpt)
    loaders = {f"{s}.{k}": v for s in ("train_dataloader", "val_dataloader", "test_dataloader")
               for k, v in (("num_workers", 0), ("persistent_workers", False), ("batch_size", 2))}
    cfg = data_config(
        scenes, tmp_path / "data.json",
        det=dict(config="det/configs/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou_ld0.8_1xb8-3e_scenes-128.py",
                 data_root=str(scenes / "coco"),
                 cfg_options={**loaders, "train_cfg.max_epochs": 1, "train_cfg.val_begin": 10**6}),
        seg=dict(config="seg/configs/upernet_vit-ibot_deconv-ln_ld0.9_1xb8-200it_scenes-128.py",
                 data_root=str(scenes / "ade"),
                 cfg_options={**loaders, "train_cfg.max_iters": 2, "train_cfg.val_begin": 10**6,
                              "default_hooks.checkpoint.interval": 2}))
    work = tmp_path / "work"
    ok(evaluate(str(ckpt), "--suite", "det", "seg", "--data-config", cfg, "--work-dir", str(work),
                timeout=600))
    rec = json.loads((work / "results.json").read_text())
    for h, metric, keys in (("det", "coco/bbox_mAP", {"coco/bbox_mAP", "coco/segm_mAP"}), ("seg", "mIoU", {"mIoU"})):
        e = rec["harnesses"][h]
        assert e["status"] == "ok" and e["metric"] == metric and 0.0 <= e["value"] <= 100.0, e
        assert keys <= set(json.loads(Path(e["result"]).read_text()))
        log = (work / h / "log.txt").read_text()
        assert re.search(r"LoadReport: \d+ tensors loaded, 0 missing, 0 unexpected", log), log[-3000:]
        state = load_file(e["checkpoint"], trusted=True)["state_dict"]  # the runner's own checkpoint
        assert state["backbone.vit.cls_token"].shape == (1, 1, 192)
        assert not any(k.startswith("backbone.vit.blocks.2.") for k in state)  # depth 2, not the config's 4
