"""benchmarks/learning_check.py end to end on CPU with a toy model (the real check is a GPU test)."""
from __future__ import annotations

import importlib.util

from conftest import REPO, shared_data_path

from ibot.records import read_record


def _module():
    spec = importlib.util.spec_from_file_location("learning_check", REPO / "benchmarks" / "learning_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_learning_check_writes_its_result(tmp_path, monkeypatch) -> None:
    data = shared_data_path("cifar10", "test")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = _module().main(["--tiny", "--data", str(data), "--work-dir", str(tmp_path)])
    saved = read_record(tmp_path / "learning_check.json", schema="ibot-suite/learning-check/1")
    assert saved == result
    assert (saved["train_per_class"], saved["test_per_class"], saved["epochs"]) == (20, 5, 1)
    for key in ("knn_top1_pretrained", "knn_top1_random_init"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["gain_points"] == round(saved["knn_top1_pretrained"] - saved["knn_top1_random_init"], 2)
    # the split is class-balanced and disjoint: 10 classes x (20 train + 5 held out)
    split = tmp_path / "split"
    train = {p.resolve() for p in (split / "train").rglob("*.jpg")}
    test = {p.resolve() for p in (split / "test").rglob("*.jpg")}
    assert len(train) == 200 and len(test) == 50 and not train & test
    assert (tmp_path / "pretrain" / "teacher_backbone.pth").is_file()
    # the teacher was loaded from its own description: the tiny ViT of --tiny
    backbone = saved["backbone"]
    assert backbone["described"] and backbone["source"]["kind"] == "ibot-pretrain"
    assert {k: backbone["model"][k] for k in ("embed_dim", "depth", "num_heads")} == {"embed_dim": 64, "depth": 2,
                                                                                        "num_heads": 2}
