"""Reliability of ``robustness.cli dense`` (mmseg tiny UperNet on the ADE20K sample): every setting is checked before a
model is built, a bad checkpoint fails before anything is written (so the corrected run needs no --restart), and a
checkpoint replaced by another of the same size is recognised by its SHA-256."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_robustness_dense import _seg_config

from ibot.checkpoint import CheckpointError, save_file
from robustness import cli
from robustness.store import ConfigMismatchError


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building an mmengine Runner (the model) fails the test: the checks must come first."""
    from mmengine.runner import Runner

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(Runner, "from_cfg", built)


def test_dense_arguments_are_checked_before_any_evaluation(tmp_path: Path, no_model: None) -> None:
    """Bad severities, corruption names, a --corrupt-after step the pipeline lacks or a missing checkpoint are
    refused at once, naming the value, before a model is built; nothing is written."""
    from robustness.dense import DenseSettings, run_dense

    cfg = str(_seg_config(tmp_path))
    out = tmp_path / "seg.json"
    with pytest.raises(ValueError, match=r"--severities: \[0, 6\]"):
        cli.main(["dense", cfg, "--out", str(out), "--severities", "0", "3", "6"])
    with pytest.raises(ValueError, match="fogg"):
        cli.main(["dense", cfg, "--out", str(out), "--corruptions", "fog", "fogg"])
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        cli.main(["dense", cfg, str(tmp_path / "missing.pth"), "--out", str(out)])
    with pytest.raises(ValueError, match=r"severities \[7\]"):
        DenseSettings(severities=[1, 7])
    with pytest.raises(ValueError, match=r"NoSuchStep.*LoadImageFromFile"):
        run_dense(cfg, None, out, DenseSettings(corruptions=["fog"], severities=[1], corrupt_after="NoSuchStep"))
    assert not out.exists()


def _checkpoint(cfg_path: Path, path: Path, bias: float) -> Path:
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    sd = MODELS.build(Config.fromfile(str(cfg_path)).model).state_dict()
    sd["decode_head.conv_seg.bias"][2] += bias
    save_file({"state_dict": sd, "meta": {}}, path)
    return path


def test_dense_bad_or_replaced_checkpoint_changes_nothing(tmp_path: Path) -> None:
    """A bad checkpoint fails before the model is built and writes nothing; the corrected run needs no --restart; a
    same-size replacement of the checkpoint is refused naming the file, the key and the fix."""
    cfg = _seg_config(tmp_path)
    ckpt, out = tmp_path / "upernet.pth", tmp_path / "seg.json"
    args = ["dense", str(cfg), str(ckpt), "--out", str(out), "--corruptions", "contrast", "--severities", "1",
            "--corrupt-after", "Resize", "--no-progress"]
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"upernet\.pth"):
        cli.main(args)
    assert not out.exists()

    _checkpoint(cfg, ckpt, 4.0)
    cli.main(args)  # corrected: no --restart needed
    stored = out.read_bytes()
    data = json.loads(stored)["groups"]["seg_c"]
    assert list(data["cells"]) == ["clean", "contrast/1"] and len(data["config"]["checkpoint_sha256"]) == 64

    size = ckpt.stat().st_size
    _checkpoint(cfg, ckpt, 2.0)  # other weights, same size
    assert ckpt.stat().st_size == size
    with pytest.raises(ConfigMismatchError) as err:
        cli.main(args)
    for part in (str(out), "'checkpoint_sha256'", str(ckpt), "--restart", "another --out"):
        assert part in str(err.value), (part, str(err.value))
    ckpt.write_bytes(b"broken again")
    with pytest.raises(CheckpointError):
        cli.main(args + ["--restart"])
    assert out.read_bytes() == stored
