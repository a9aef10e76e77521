"""mmengine's checkpoint loading on torch >= 2.6 goes through ibot.checkpoint (clear opt-in)."""
from __future__ import annotations

import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ibot.checkpoint import UntrustedCheckpointError
from ibot.compat import mmengine as compat


@pytest.fixture()
def mmengine_ckpt(tmp_path):
    # What mmengine's Runner writes: weights plus a message hub with pickled HistoryBuffers.
    path = tmp_path / "epoch_1.pth"
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"log_scalars": {"loss": buf}}}, path)
    return path


def test_stock_mmengine_fails_opaquely(mmengine_ckpt) -> None:
    # Documents the problem the shim fixes: torch's weights-only default rejects mmengine's files.
    from mmengine.runner import checkpoint as ck

    with pytest.raises(Exception) as err:
        ck.load_from_local(str(mmengine_ckpt), map_location="cpu")
    assert "HistoryBuffer" in str(err.value)
    assert not isinstance(err.value, UntrustedCheckpointError)


def test_installed_loader_reads_runner_checkpoints_without_trust(mmengine_ckpt) -> None:
    compat.install()
    assert not compat.is_trusted(mmengine_ckpt)
    ckpt = CheckpointLoader.load_checkpoint(str(mmengine_ckpt), map_location="cpu")
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    buf = ckpt["message_hub"]["log_scalars"]["loss"]
    assert isinstance(buf, HistoryBuffer) and buf.mean() == 1.5 and buf.statistics("max") == 1.5


def test_installed_loader_names_the_opt_in(tmp_path) -> None:
    import argparse

    compat.install()
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    msg = str(err.value)
    assert str(path) in msg and "--trust-checkpoint" in msg and "argparse.Namespace" in msg


def test_trusted_file_loads(mmengine_ckpt) -> None:
    compat.install()
    compat.trust_checkpoint(mmengine_ckpt)
    ckpt = CheckpointLoader.load_checkpoint(str(mmengine_ckpt), map_location="cpu")
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert isinstance(ckpt["message_hub"]["log_scalars"]["loss"], HistoryBuffer)


def test_tensor_only_file_needs_no_trust(tmp_path) -> None:
    compat.install()
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(CheckpointLoader.load_checkpoint(str(path))["state_dict"]["w"], torch.zeros(3))
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / "missing.pth"))
