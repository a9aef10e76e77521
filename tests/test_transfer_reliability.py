"""Reliability of the transfer protocols on bad settings and bad data: settings are checked (kind and range) before
anything is written, ``--set`` values are type-checked against the default config with the nearest key suggested,
and a refused or failed run leaves the files of the earlier run in its output folder byte-identical.

Runs use a tiny self-describing ViT on a synthetic 3-class ImageFolder (32 px), so each takes about a second.
Errors are caught by their base class (``ConfigValueError`` is a ``ValueError``, ``BadImageError`` an ``OSError``) and
told apart by their message, so each test fails on its own merits on code without the checks.
"""
from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from ibot.checkpoint import describe_backbone, save_backbone
from ibot.images import BadImageError
from ibot.vit import build_vit
from transfer.cli import build_parser, config_from_args
from transfer.datasets import DatasetLayoutError
from transfer.recipes import ConfigKeyError, resolve

CLASSES = ("ant", "bee", "cat")


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/`` 6 images each, ``test/<class>/`` 3 each."""
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                _png(root / split / name / f"{i}.png", 100 * c + 10 * (split == "test") + i)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-describing tiny backbone file: no shape flags needed."""
    torch.manual_seed(0)
    model = build_vit("vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_backbone(path, model.state_dict(), describe_backbone(model))
    return path


def common(data: Path, checkpoint: Path, out: Path) -> list[str]:
    return ["--dataset", "imagefolder", "--data-root", str(data), "--pretrained", str(checkpoint), "--output-dir",
            str(out), "--img-size", "32", "--num-workers", "0", "--no-progress"]


ARGS = {
    "knn": ["--set", "ks=[1,3]", "report_k=3"],
    "linear": ["--epochs", "1", "--batch-size", "6", "--set", "lrs=[0.01,0.1]",
               "features=[{'n_last_blocks':1,'pooling':'cls'}]"],
    "finetune": ["--epochs", "1", "--batch-size", "6", "--set", "sched.warmup_epochs=0"],
}


def run_tool(protocol: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``tools/transfer_<protocol>.py ARGS`` in this process."""
    monkeypatch.setattr(sys, "argv", [f"transfer_{protocol}.py", *args])
    runpy.run_path(str(REPO / "tools" / f"transfer_{protocol}.py"), run_name="__main__")


@pytest.fixture(scope="module")
def previous(data: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished k-NN and linear run (result.json, log.txt, feature caches, checkpoint.pth)."""
    base = tmp_path_factory.mktemp("previous")
    mp = pytest.MonkeyPatch()
    try:
        for protocol in ("knn", "linear"):
            run_tool(protocol, common(data, checkpoint, base / protocol) + ARGS[protocol], mp)
    finally:
        mp.undo()
    return {p: base / p for p in ("knn", "linear")}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_untouched(before: dict[str, bytes], folder: Path, log_may_grow: bool = False) -> None:
    """Every file that was there is byte-identical (``log.txt`` may only be appended to)."""
    after = snapshot(folder)
    for name, blob in before.items():
        assert name in after, f"{name} was removed"
        if log_may_grow and name == "log.txt":
            assert after[name].startswith(blob), "log.txt was rewritten, not appended to"
        else:
            assert after[name] == blob, f"{name} changed"


# ------------------------------------------------------------------------------------ 1. settings checked up front
@pytest.mark.parametrize("protocol, extra, key, shown", [
    ("linear", ["--epochs", "0"], "epochs", "0"),
    ("linear", ["--epochs", "-2"], "epochs", "-2"),
    ("finetune", ["--epochs", "0"], "epochs", "0"),
    ("linear", ["--set", "lrs=[]"], "lrs", "[]"),
    ("linear", ["--set", "lrs=[0.1,-0.5]"], "lrs", "-0.5"),
    ("linear", ["--set", "momentum=1.5"], "momentum", "1.5"),
    ("knn", ["--set", "ks=[0,3]"], "ks", "[0, 3]"),
    ("knn", ["--batch-size", "0"], "batch_size", "0"),
    ("knn", ["--set", "temperature=0"], "temperature", "0"),
    ("finetune", ["--lr", "0"], "optim.lr", "0.0"),
    ("finetune", ["--batch-size", "5"], "batch_size", "5"),  # odd: mixup pairs samples
    ("finetune", ["--set", "epochs=abc"], "epochs", "'abc'"),
])
def test_invalid_settings_are_refused_before_any_file_is_written(
        protocol: str, extra: list[str], key: str, shown: str, previous: dict[str, Path], data: Path,
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_run(previous["linear"], tmp_path / "run")
    before = snapshot(out)
    assert {"result.json", "checkpoint.pth", "log.txt"} <= set(before)
    args = common(data, checkpoint, out) + ARGS[protocol] + extra
    with pytest.raises(ValueError, match=r"^config key ") as err:
        run_tool(protocol, args, monkeypatch)
    msg = str(err.value)
    assert f"'{key}'" in msg and shown in msg, msg
    assert type(err.value).__name__ == "ConfigValueError"
    assert_untouched(before, out)
    assert snapshot(out).keys() == before.keys()  # not even log.txt was opened
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match=r"^config key "):
        run_tool(protocol, common(data, checkpoint, fresh) + ARGS[protocol] + extra, monkeypatch)
    assert not fresh.exists()


def test_run_checks_a_hand_built_config(data: Path, tmp_path: Path) -> None:
    """``transfer.<protocol>.run(cfg)`` without the command line refuses the same values."""
    from transfer import linear

    cfg = resolve("linear", "imagefolder", {"data": {"root": str(data)}, "output_dir": str(tmp_path / "o"),
                                            "features": [{"n_last_blocks": 1, "pooling": "cls"}]})
    cfg["epochs"] = 0
    with pytest.raises(ValueError, match=r"'epochs' = 0 is invalid: it must be an integer >= 1"):
        linear.run(cfg)
    assert not (tmp_path / "o").exists()


def test_missing_data_root_is_refused_before_the_output_folder_exists(checkpoint: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetLayoutError, match=r"data root '.*nowhere' does not exist(.|\n)*'data.root'"):
        run_tool("knn", common(tmp_path / "nowhere", checkpoint, tmp_path / "out") + ARGS["knn"], monkeypatch)
    assert not (tmp_path / "out").exists()


def test_knn_k_larger_than_the_training_set_names_ks(data: Path, checkpoint: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"'ks' = \[1, 50\] is invalid for this data: k = 50 exceeds the 18"):
        run_tool("knn", common(data, checkpoint, tmp_path) + ["--set", "ks=[1,50]", "report_k=1"], monkeypatch)
    assert not (tmp_path / "result.json").exists()


def test_a_run_never_writes_an_invalid_metric(previous: dict[str, Path], data: Path, checkpoint: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: a headline metric that is not an accuracy is an error, and result.json stays as it was."""
    import transfer.knn

    out = copy_run(previous["knn"], tmp_path / "run")
    before = snapshot(out)
    monkeypatch.setattr(transfer.knn, "_knn_metrics", lambda *a, **k: {"top1@k=1": 1.0, "top1@k=3": float("nan")})
    with pytest.raises(ValueError, match=r"top1@k=3 = nan is not an accuracy in \[0, 100\]; '.*result.json' "
                                                 r"was not written"):
        run_tool("knn", common(data, checkpoint, out) + ARGS["knn"], monkeypatch)
    assert_untouched(before, out, log_may_grow=True)
    assert "run failed: InvalidResultError" in (out / "log.txt").read_text()


# ------------------------------------------------------------------------------------- 2. --set values are typed
def cfg_of(protocol: str, *argv: str) -> dict:
    args = build_parser(protocol).parse_args(["--dataset", "cifar10", "--data-root", "/d", *argv])
    return config_from_args(protocol, args)


@pytest.mark.parametrize("protocol, item, pattern", [
    ("finetune", "epochs=abc", r"config key 'epochs' must be an integer, got 'abc'"),
    ("finetune", "epochs=2.5", r"config key 'epochs' must be an integer, got 2\.5"),
    ("finetune", "epochs=true", r"config key 'epochs' must be an integer, got True"),
    ("linear", "batch_size=16.0", r"config key 'batch_size' must be an integer, got 16\.0"),
    ("finetune", "optim.lr=fast", r"config key 'optim.lr' must be a number, got 'fast'"),
    ("finetune", "amp=yes", r"config key 'amp' must be true or false or None, got 'yes'"),
    ("finetune", "progress=None", r"config key 'progress' must be true or false, got None"),
    ("knn", "ks=[1,2.5]", r"config key 'ks\[1\]' must be an integer, got 2\.5"),
    ("knn", "ks=5", r"config key 'ks' must be a list, got 5"),
    ("finetune", "aug.smoothing=[0.1]", r"config key 'aug.smoothing' must be a number, got \[0\.1\]"),
    ("finetune", "model=3", r"config key 'model' is a section, not a value"),
    ("finetune", "data.num_classes=ten", r"config key 'data.num_classes' must be an integer or None, got 'ten'"),
])
def test_set_values_are_type_checked(protocol: str, item: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        cfg_of(protocol, "--set", item)


@pytest.mark.parametrize("protocol, item, suggestion", [
    ("finetune", "epoch=3", "'epochs'"),
    ("finetune", "lr=1e-4", "'optim.lr'"),
    ("finetune", "optim.lrr=1e-4", "'optim.lr'"),
    ("linear", "lr=0.1", "'lrs'"),
    ("finetune", "aug.mixup_probability=0.5", "'aug.mixup_prob'"),
    ("knn", "report-k=3", "'report_k'"),
])
def test_unknown_set_keys_suggest_the_nearest(protocol: str, item: str, suggestion: str) -> None:
    with pytest.raises(ConfigKeyError, match=rf"unknown config key '{item.split('=')[0]}'.*did you mean {suggestion}"):
        cfg_of(protocol, "--set", item)


def test_set_values_take_the_default_config_types() -> None:
    cfg = cfg_of("finetune", "--set", "optim.lr=1", "optim.clip_grad=1", "model.name=007", "data.tag=2018",
                 "model.pretrain_data=22", "optim.layer_decay=None", "amp=None", "optim.betas=(0.9,0.99)",
                 "aug.auto_augment=None")
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert isinstance(cfg["optim"]["clip_grad"], float)
    assert (cfg["model"]["name"], cfg["data"]["tag"], cfg["model"]["pretrain_data"]) == ("007", "2018", "22")
    assert cfg["optim"]["layer_decay"] is None and cfg["amp"] is None and cfg["optim"]["betas"] == [0.9, 0.99]
    lin = cfg_of("linear", "--set", "lrs=[1,2]", "features=auto", "--arch", "vit_small")
    assert lin["lrs"] == [1.0, 2.0] and all(isinstance(v, float) for v in lin["lrs"])


def test_programmatic_overrides_are_type_checked() -> None:
    with pytest.raises(ValueError, match=r"config key 'epochs' must be an integer, got '3'"):
        resolve("linear", "cifar10", {"epochs": "3"})
    with pytest.raises(ValueError, match=r"config key 'model.patch_size' must be an integer or None"):
        resolve("knn", "cifar10", {"model": {"patch_size": "16"}})


def test_every_none_default_declares_its_kind() -> None:
    """A ``None`` default says nothing about the type a value must have: each one is listed in VALUE_KINDS."""
    from transfer.recipes import DATASET_NAMES, PROTOCOLS, VALUE_KINDS

    def none_keys(d: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            out |= none_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"} if v is None else set()
        return out

    for protocol in PROTOCOLS:
        for dataset in DATASET_NAMES:
            missing = none_keys(resolve(protocol, dataset)) - set(VALUE_KINDS)
            assert not missing, (protocol, dataset, missing)


# ------------------------------------------------------------------------- bad data: earlier files stay identical
def _truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])


@pytest.mark.parametrize("protocol", ["knn", "linear"])
@pytest.mark.parametrize("damage", ["truncated_image", "not_an_image", "empty_class_folder"])
def test_bad_data_fails_naming_the_file_and_keeps_earlier_results(
        protocol: str, damage: str, previous: dict[str, Path], data: Path, checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad_data"
    shutil.copytree(data, bad)
    if damage == "truncated_image":
        target = bad / "test" / "bee" / "1.png"
        _truncate(target)
        expected, pattern = OSError, r"(?s)test/bee/1\.png.*sample \d+ of 9.*replace the file"
    elif damage == "not_an_image":
        target = bad / "test" / "cat" / "2.png"
        target.write_text("not a PNG")
        expected, pattern = OSError, r"(?s)test/cat/2\.png.*replace the file"
    else:
        target = bad / "train" / "dog"
        target.mkdir()
        expected, pattern = DatasetLayoutError, r"class folder '.*train/dog' has no images.*at least one image"
    out = copy_run(previous[protocol], tmp_path / "run")
    before = snapshot(out)
    assert "result.json" in before
    with pytest.raises(expected, match=pattern) as err:
        run_tool(protocol, common(bad, checkpoint, out) + ARGS[protocol], monkeypatch)
    if expected is OSError:
        assert isinstance(err.value, BadImageError)  # the one image reader's error
    assert_untouched(before, out, log_may_grow=True)
    log = (out / "log.txt").read_text()
    assert "run failed" in log and str(target) in log
