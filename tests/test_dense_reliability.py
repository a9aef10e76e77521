"""Failure behaviour of ``python -m det.cli train|test`` and the launchers: untrusted checkpoints (trust by content,
never by location), partial checkpoint loads, invalid COCO / label-map data, bad launcher arguments. Every refused
run leaves the earlier result files byte-identical and starts nothing (no marker of a pickled payload, no runner).
Small generated files in tmp_path; real images from ../shared/data."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_data_path
from PIL import Image
from test_dense_train_test import SEG_CONFIG, cfg_options, det_options, loader, seg_options

from det import cli
from det.validate import DataValidationError, check_coco, validate_data
from ibot.checkpoint import UntrustedCheckpointError
from ibot.compat import mmengine as compat

DET_CONFIG = "det/configs/cascade-mask-rcnn_vit-s16-ibot_deconv-fpn_4conv1fc-giou_ld0.8_8xb4-ms-crop-1x_coco.py"


# ------------------------------------------------------------------------------------------------------ helpers
def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, str], folder: Path) -> None:
    after = snapshot(folder)
    assert {k: after.get(k) for k in before} == before, "an earlier result file changed"


def previous_results(work: Path) -> dict[str, str]:
    """A work dir holding an earlier run's results (metrics, checkpoint, last_checkpoint); their hashes."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "metrics.json").write_text('{"schema": "ibot-suite/dense-metrics/1", "mIoU": 12.5}\n')
    torch.save({"state_dict": {"w": torch.ones(2)}}, work / "iter_1.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_1.pth"))
    return snapshot(work)


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that a planted file executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(path: Path, marker: Path, kind: str) -> Path:
    obj = {"state_dict": {"w": torch.zeros(1)}, "meta": {"epoch": 1, "iter": 1}, "x": Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle
        path.write_bytes(pickle.dumps(obj))
    return path


def ade_options(root: Path, work: Path, **extra) -> list[str]:
    """Tiny UperNet (ViT-S, 64 px) on an ADE20K-layout folder, no init checkpoint."""
    opts = {**seg_options(None), "model.backbone.init_cfg": None, "train_cfg.max_iters": 1, "train_cfg.val_begin": 100,
            "default_hooks.checkpoint.interval": 1}
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.update(loader(split, root, **{"data_prefix.img_path": "images",
                                           "data_prefix.seg_map_path": "annotations"}))
    opts.update(extra)
    return ["--work-dir", str(work), *cfg_options(opts)]


@pytest.fixture()
def ade() -> Path:
    return shared_data_path("ade20k_sample")


# ---------------------------------------------------------------------------------- 1. trust by file, not place
@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_planted_pickle_in_work_dir_is_refused_by_test(tmp_path, ade, kind: str) -> None:
    work, marker = tmp_path / "work", tmp_path / "MARKER"
    before = previous_results(work)
    evil = plant(work / "epoch_1.pth", marker, kind)
    for work_dir in (work, tmp_path):  # the work dir itself, and a folder above it (`--work-dir ~`)
        with pytest.raises(SystemExit) as err:
            cli.main(["test", SEG_CONFIG, str(evil), "--metrics-json", str(work / "metrics.json"),
                      *ade_options(ade, work_dir)])
        msg = str(err.value.code)
        assert str(evil) in msg and "--trust-checkpoint" in msg and "posix.mkdir" in msg, msg
        assert not marker.exists()
    assert_unchanged(before, work)
    assert not compat.is_trusted(evil)


def test_planted_pickle_is_refused_by_train_resume(tmp_path, ade) -> None:
    work, marker = tmp_path / "work", tmp_path / "MARKER"
    before = previous_results(work)
    evil = plant(work / "iter_2.pth", marker, "zip")
    with pytest.raises(SystemExit, match=r"iter_2\.pth.*posix\.mkdir[\s\S]*--trust-checkpoint"):
        cli.main(["train", SEG_CONFIG, "--resume", str(evil), *ade_options(ade, work)])
    (work / "last_checkpoint").write_text(str(evil))  # automatic resume picks the planted file
    before["last_checkpoint"] = hashlib.sha256(str(evil).encode()).hexdigest()
    with pytest.raises(SystemExit, match=r"iter_2\.pth.*posix\.mkdir[\s\S]*--trust-checkpoint"):
        cli.main(["train", SEG_CONFIG, "--resume", *ade_options(ade, work)])
    assert not marker.exists()
    assert_unchanged(before, work)
    assert sorted(p.name for p in work.iterdir()) == ["iter_1.pth", "iter_2.pth", "last_checkpoint", "metrics.json"]


def test_the_runner_loader_refuses_planted_files_too(tmp_path) -> None:
    """Defence in depth: mmengine's own loading path (a resume that skipped the pre-flight) refuses the file."""
    from mmengine.runner.checkpoint import CheckpointLoader

    compat.install()
    marker = tmp_path / "MARKER"
    for kind in ("zip", "legacy", "pickle"):
        evil = plant(tmp_path / f"{kind}.pth", marker, kind)
        with pytest.raises(Exception) as err:
            CheckpointLoader.load_checkpoint(str(evil), map_location="cpu")
        assert str(evil) in str(err.value)
    assert not marker.exists()


def test_getattr_is_only_allowed_for_history_buffer_statistics(tmp_path) -> None:
    from mmengine.logging.history_buffer import HistoryBuffer

    class Attr:
        def __init__(self, obj, name) -> None:
            self.obj, self.name = obj, name

        def __reduce__(self):
            return getattr, (self.obj, self.name)

    for obj, name in ((HistoryBuffer, "__init__"), (HistoryBuffer, "update"), (str, "join")):
        path = tmp_path / f"{name}.pth"
        torch.save({"x": Attr(obj, name)}, path)
        with pytest.raises(UntrustedCheckpointError, match="getattr"):
            compat.load_checkpoint_file(path)
    # a buffer that smuggles an extra "statistics method" into the class table: the table is restored after loading
    buf = HistoryBuffer()
    buf.update(1.0)
    HistoryBuffer._statistics_methods["smuggled"] = HistoryBuffer.min
    torch.save({"buf": buf}, tmp_path / "buf.pth")
    del HistoryBuffer._statistics_methods["smuggled"]
    assert compat.load_checkpoint_file(tmp_path / "buf.pth")["buf"].mean() == 1.0
    assert "smuggled" not in HistoryBuffer._statistics_methods


def test_interrupted_saves_keep_the_previous_results(tmp_path) -> None:
    """A checkpoint write that fails half-way leaves the file that was there; an empty last_checkpoint (an
    interrupted write) stops --resume instead of silently training from scratch."""
    from mmengine.fileio.backends.local_backend import LocalBackend

    compat.install()
    before = previous_results(tmp_path / "work")
    with pytest.raises(TypeError):
        LocalBackend().put("not bytes: fails while writing", tmp_path / "work" / "iter_1.pth")
    assert_unchanged(before, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["iter_1.pth", "last_checkpoint", "metrics.json"]
    (tmp_path / "work" / "last_checkpoint").write_text("")
    cfg = cli.Config(dict(work_dir=str(tmp_path / "work")))
    with pytest.raises(SystemExit, match=r"last_checkpoint is empty"):
        cli.resolve_resume(cfg, "auto")


# ------------------------------------------------------------------------------------------ 2. partial loads
def test_checkpoint_matching_no_key_is_refused_unless_allow_partial(tmp_path, ade) -> None:
    work = tmp_path / "work"
    before = previous_results(work)
    metrics = work / "metrics.json"
    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, foreign)
    with pytest.raises(SystemExit) as err:
        cli.main(["test", SEG_CONFIG, str(foreign), "--metrics-json", str(metrics), *ade_options(ade, work)])
    msg = str(err.value.code)
    assert str(foreign) in msg and "0 of" in msg and "missing" in msg and "--allow-partial" in msg, msg
    assert "unexpected (1): conv1.weight" in msg and "backbone.vit" in msg
    assert_unchanged(before, work)
    result = cli.main(["test", SEG_CONFIG, str(foreign), "--metrics-json", str(metrics), "--allow-partial",
                       *ade_options(ade, work)])
    assert "mIoU" in result and json.loads(metrics.read_text())["mIoU"] == pytest.approx(result["mIoU"])


def toy_runner(work: Path, **kw):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch import nn

    class Toy(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)
            self.bn = nn.BatchNorm1d(1)

        def forward(self, x, y, mode="tensor"):
            out = self.bn(self.fc(x))
            return {"loss": ((out - y) ** 2).mean()} if mode == "loss" else out

    data = [dict(x=torch.randn(2), y=torch.randn(1)) for _ in range(4)]
    loader_cfg = dict(dataset=data, sampler=dict(type="DefaultSampler", shuffle=False), batch_size=2,
                      collate_fn=dict(type="default_collate"))
    return Runner(model=Toy(), work_dir=str(work), train_dataloader=loader_cfg,
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)), train_cfg=dict(by_epoch=True, max_epochs=1),
                  default_hooks=dict(logger=dict(type="LoggerHook", interval=1)), **kw)


@pytest.mark.parametrize("mode", ["load_from", "resume"])
def test_train_load_policy(tmp_path, mode: str) -> None:
    compat.install()
    run = toy_runner(tmp_path / "first")
    run.train()
    good = tmp_path / "first" / "epoch_1.pth"  # a real runner checkpoint: loads without trust, from elsewhere
    partial = tmp_path / "partial.pth"
    sd = compat.load_checkpoint_file(good)
    sd["state_dict"] = {k: v for k, v in sd["state_dict"].items() if not k.startswith("bn.")}
    torch.save(sd, partial)
    resume = mode == "resume"
    runner = toy_runner(tmp_path / "second", load_from=str(partial), resume=resume)
    cli.install_load_policy(runner, allow_partial=False)
    expect = r"partial\.pth' into Toy: 2 of 6 model tensors load; 4 missing[\s\S]*missing \(4\): bn\.\* \(4\)"
    with pytest.raises(cli.PartialCheckpointError, match=expect) as err:
        runner.train()
    assert err.value.missing == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    runner = toy_runner(tmp_path / "third", load_from=str(partial), resume=resume)
    cli.install_load_policy(runner, allow_partial=True)
    runner.train()  # allowed: loads what matches, says what is missing
    runner = toy_runner(tmp_path / "fourth", load_from=str(good), resume=resume)
    cli.install_load_policy(runner, allow_partial=False)
    runner.train()


def test_load_strict_false_in_the_config_allows_partial(tmp_path) -> None:
    from mmengine.config import Config

    assert not cli.partial_load_allowed(Config(dict(load_from="x")), False)
    assert cli.partial_load_allowed(Config(dict(load_strict=False)), False)
    assert cli.partial_load_allowed(Config(dict()), True)


# -------------------------------------------------------------------------------------------- 3. COCO json
@pytest.fixture()
def coco(tmp_path) -> tuple[Path, dict, Path]:
    """Two real tiny-COCO images with their real annotations: (json path, the json, image folder)."""
    root = shared_data_path("tiny_coco")
    src = json.loads((root / "instances_train2017_small.json").read_text())
    images = src["images"][:2]
    ids = {img["id"] for img in images}
    data = {"images": images, "categories": src["categories"],
            "annotations": [a for a in src["annotations"] if a["image_id"] in ids and not a["iscrowd"]]}
    path = tmp_path / "ann" / "instances.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path, data, root / "train_2017_small"


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def det_args(ann: Path, img_dir: Path, work: Path) -> list[str]:
    """The tiny Cascade Mask R-CNN of test_dense_train_test (2 iterations of small images) on ``ann``."""
    opts = {**det_options(img_dir, ""), "model.backbone.init_cfg": None, "train_cfg.max_epochs": 1,
            "val_evaluator.ann_file": ann, "test_evaluator.ann_file": ann}
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.update({f"{split}.dataset.data_root": "", f"{split}.dataset.ann_file": ann,
                     f"{split}.dataset.data_prefix.img": f"{img_dir}/", f"{split}.dataset.indices": 2})
    return ["--work-dir", str(work), *cfg_options(opts)]


def test_valid_coco_passes(coco) -> None:
    path, data, img_dir = coco
    check = check_coco(str(path), img_dir=str(img_dir))
    assert check.ok and check.counts() == (0, 0), check.summary()


def corrupt(data: dict) -> tuple[dict, dict[str, int]]:
    """One annotation per kind of problem (ids 9001..), and an image whose every box is invalid."""
    data = json.loads(json.dumps(data))
    img_a, img_b = data["images"][0], data["images"][1]
    base = next(a for a in data["annotations"] if a["image_id"] == img_a["id"])
    bad = {
        9001: {"category_id": 999},
        9002: {"bbox": [10, 10, -5, 20]},
        9003: {"area": 0},
        9004: {"segmentation": [[10, 10, 20, 20]]},  # 2 points
    }
    for aid, change in bad.items():
        data["annotations"].append({**base, "id": aid, **change})
    for a in data["annotations"]:  # every box of image b: zero width
        if a["image_id"] == img_b["id"]:
            a["bbox"] = [a["bbox"][0], a["bbox"][1], 0, a["bbox"][3]]
    n_b = sum(a["image_id"] == img_b["id"] for a in data["annotations"])
    return data, {"unknown category_id": 1, "zero or negative width": 1 + n_b, "zero or negative area": 1,
                  "polygon with fewer than 3 points": 1}


def test_invalid_coco_stops_train_and_test_naming_file_and_ids(coco, tmp_path) -> None:
    path, data, img_dir = coco
    bad, counts = corrupt(data)
    write(path, bad)
    work = tmp_path / "work"
    for command in (["train", DET_CONFIG], ["test", DET_CONFIG, str(tmp_path / "none.pth")]):
        if command[0] == "test":
            torch.save({"state_dict": {}}, tmp_path / "none.pth")
        with pytest.raises(SystemExit) as err:
            cli.main([*command, *det_args(path, img_dir, work)])
        msg = str(err.value.code)
        assert str(path) in msg and "--skip-invalid" in msg, msg
        for kind, n in counts.items():
            assert kind in msg and f"{n} annotation" in msg.split(kind)[1][:40], (kind, msg)
        for aid in (9001, 9002, 9003, 9004):
            assert f"id {aid} " in msg
        assert "category_id 999" in msg and "a polygon of 4 coordinates" in msg
        assert not work.exists()  # nothing was started


def test_skip_invalid_drops_and_logs(coco, tmp_path) -> None:
    from mmdet.registry import DATASETS

    path, data, img_dir = coco
    bad, counts = corrupt(data)
    write(path, bad)
    source = path.read_bytes()
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    cli.add_common_args(parser)
    cfg = cli.load_config(parser.parse_args([str(REPO / DET_CONFIG), *det_args(path, img_dir, tmp_path / "work")]))
    with pytest.raises(DataValidationError):
        validate_data(cfg, "train")
    (check,) = validate_data(cfg, "train", skip_invalid=True)
    out = "\n".join(check.log)
    n_bad = sum(counts.values())
    assert f"dropped {n_bad} annotations and 0 images" in out and "1 images left without annotations" in out, out
    cleaned = Path(cfg.train_dataloader.dataset.ann_file)
    assert cleaned.parent == tmp_path / "work" / "validated" and path.read_bytes() == source  # source untouched
    assert cfg.val_evaluator.ann_file == str(cleaned) == cfg.val_dataloader.dataset.ann_file
    assert check_coco(str(cleaned), img_dir=str(img_dir)).ok
    ds = DATASETS.build({**cfg.train_dataloader.dataset, "pipeline": []})  # mmdet reads the cleaned copy
    kept = sum(len(ds.get_data_info(i)["instances"]) for i in range(len(ds)))
    assert kept == len(data["annotations"]) - sum(a["image_id"] == data["images"][1]["id"]
                                                  for a in data["annotations"])


@pytest.mark.parametrize("problem", ["empty", "malformed", "no_images"])
def test_unusable_coco_is_an_error_even_with_skip_invalid(coco, tmp_path, problem: str) -> None:
    path, data, img_dir = coco
    if problem == "empty":
        write(path, {**data, "annotations": []})
        expect = "'annotations' list is empty"
    elif problem == "malformed":
        path.write_text(json.dumps(data)[:-40])
        expect = "malformed JSON at line 1 column"
    else:
        img_dir = tmp_path / "nowhere"
        expect = f"image folder {img_dir}/ does not exist"
    for flags in ([], ["--skip-invalid"]):
        with pytest.raises(SystemExit) as err:
            cli.main(["train", DET_CONFIG, *flags, *det_args(path, img_dir, tmp_path / "work")])
        assert str(path) in str(err.value.code) and expect in str(err.value.code), str(err.value.code)


# ----------------------------------------------------------------------------------------------- 3. label maps
@pytest.fixture()
def ade_bad(tmp_path, ade) -> Path:
    """The 3 ADE20K sample images: one label map holds 200 (> 150 classes), one is of another size."""
    root = tmp_path / "ade"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, img in enumerate(sorted((ade / "images").glob("*.jpg"))):
        (root / "images" / img.name).symlink_to(img)
        seg = np.array(Image.open(ade / "annotations" / f"{img.stem}.png"))
        if i == 0:
            seg[:5, :5] = 200
        if i == 1:
            seg = seg[:-3]
        Image.fromarray(seg).save(root / "annotations" / f"{img.stem}.png")
    return root


def test_invalid_label_maps_stop_train_and_test(tmp_path, ade_bad) -> None:
    ckpt = tmp_path / "model.pth"
    torch.save({"state_dict": {}}, ckpt)
    before = previous_results(tmp_path / "work")
    for command in (["train", SEG_CONFIG], ["test", SEG_CONFIG, str(ckpt)]):
        with pytest.raises(SystemExit) as err:
            cli.main([*command, *ade_options(ade_bad, tmp_path / "work")])
        msg = str(err.value.code)
        assert str(ade_bad / "annotations") in msg and "--skip-invalid" in msg, msg
        assert "ADE_val_00000001.jpg (ADE_val_00000001.png holds 200)" in msg and "valid values: 0..150, 255" in msg
        assert "label map size differs from its image: 1 image: ADE_val_00000002.jpg (label map" in msg
    assert_unchanged(before, tmp_path / "work")


def test_skip_invalid_label_maps_leave_the_images_out(tmp_path, ade_bad) -> None:
    from mmseg.registry import DATASETS

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    cli.add_common_args(parser)
    cfg = cli.load_config(parser.parse_args([SEG_CONFIG, *ade_options(ade_bad, tmp_path / "work")]))
    (check,) = validate_data(cfg, "test", skip_invalid=True)
    assert "dropped 2 of 3 images" in check.log[0], check.log
    ds = DATASETS.build({**cfg.test_dataloader.dataset, "pipeline": []})
    assert [Path(ds.get_data_info(i)["img_path"]).name for i in range(len(ds))] == ["ADE_val_00000003.jpg"]


# -------------------------------------------------------------------------------------------------- 4. launchers
@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
def test_launchers_refuse_bad_gpus_before_starting_anything(tmp_path, value: str) -> None:
    marker = tmp_path / "STARTED"
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("python", "srun"):  # anything started would leave the marker
        (fake / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (fake / name).chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake / "python"), PATH=f"{fake}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="")
    runs = [(["tools/dist_train.sh", DET_CONFIG, value], env),
            (["tools/dist_test.sh", SEG_CONFIG, "x.pth", value], env),
            (["tools/slurm_train.sh", "part", "job", DET_CONFIG, str(tmp_path / "w")], {**env, "GPUS": value}),
            (["tools/slurm_test.sh", "part", "job", SEG_CONFIG, "x.pth"], {**env, "GPUS": value})]
    for argv, run_env in runs:
        proc = subprocess.run(["bash", *argv], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert f"GPUS must be an integer >= 1, got '{value}'" in proc.stderr, proc.stderr
        assert not marker.exists(), argv


def test_launchers_refuse_bad_multi_node_settings(tmp_path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    for extra, message in (({"NNODES": "0"}, "NNODES must be an integer >= 1"),
                           ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK must be an integer in 0..1"),
                           ({"PORT": "http"}, "PORT must be an integer in 1..65535"),
                           ({"GPUS_PER_NODE": "x"}, "GPUS_PER_NODE must be an integer >= 1")):
        script = "tools/slurm_train.sh" if "GPUS_PER_NODE" in extra else "tools/dist_train.sh"
        argv = ["p", "j", DET_CONFIG, "w"] if "slurm" in script else [DET_CONFIG, "1"]
        proc = subprocess.run(["bash", script, *argv], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)


# ------------------------------------------------------------------------------------- the command line, end to end
def test_cli_exit_status_and_message(tmp_path, ade) -> None:
    """As a user runs it: a planted file is refused with exit status 1 and one message, nothing executed."""
    work, marker = tmp_path / "work", tmp_path / "MARKER"
    evil = plant(work / "epoch_1.pth", marker, "zip")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "tools/test.py", SEG_CONFIG, str(evil), *ade_options(ade, work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: Refusing to unpickle checkpoint '{evil}'" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert not marker.exists()
