"""Robustness arithmetic against hand-computed values: CE / mCE / relative mCE, BG-gap, P / mPC / rPC, and the
reference tables (AlexNet errors keyed by name, the IN-9 mapping, the IN-A / IN-R class subsets)."""
from __future__ import annotations

import json

import pytest
import torch

from robustness import backgrounds, imagenet_c, ood
from robustness.metrics import (
    ALEXNET_CLEAN_ERR,
    ALEXNET_ERR,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    bg_gap,
    dense_summary,
    imagenet_c_summary,
)
from robustness.store import ConfigMismatchError, ResultStore

# google-research/augmix imagenet.py @ 9b9824c: CORRUPTIONS and ALEXNET_ERR as two parallel lists.
AUGMIX_ORDER = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression"]
AUGMIX_ERR = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
              0.564592, 0.853204, 0.646056, 0.717840, 0.606500]


def test_alexnet_table_is_keyed_by_name() -> None:
    assert dict(zip(AUGMIX_ORDER, AUGMIX_ERR)) == dict(ALEXNET_ERR)
    assert tuple(AUGMIX_ORDER) == BENCHMARK_CORRUPTIONS
    assert ALEXNET_ERR["impulse_noise"] == 0.922640  # not the 0.892 seen in a public copy


def _all_errors(value: float) -> dict[str, dict[int, float]]:
    return {c: {s: value for s in range(1, 6)} for c in BENCHMARK_CORRUPTIONS}


def test_mce_hand_computed() -> None:
    errors = _all_errors(0.5)
    errors["gaussian_noise"] = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}  # mean 0.3
    errors["brightness"] = {1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2, 5: 0.7}      # mean 0.3
    errors["speckle_noise"] = {s: 0.9 for s in range(1, 6)}              # extra: never in mCE
    out = imagenet_c_summary(errors, clean_err=0.2)
    # CE by hand: gaussian 100*0.3/0.886428 = 33.84369...; brightness 100*0.3/0.564592 = 53.13571...
    assert out["ce"]["gaussian_noise"] == pytest.approx(33.843696, abs=1e-5)
    assert out["ce"]["brightness"] == pytest.approx(53.135716, abs=1e-5)
    assert out["ce"]["contrast"] == pytest.approx(58.602627, abs=1e-5)  # 50 / 0.853204
    others = sum(50.0 / e for c, e in ALEXNET_ERR.items() if c not in ("gaussian_noise", "brightness"))
    by_hand = (33.843696 + 53.135716 + others) / 15
    assert out["mce"] == pytest.approx(by_hand, abs=1e-5)
    # relative CE: gaussian (0.3 - 0.2) / (0.886428 - 0.43478) = 22.141...
    assert out["relative_ce"]["gaussian_noise"] == pytest.approx(100 * 0.1 / (0.886428 - ALEXNET_CLEAN_ERR))
    assert ALEXNET_CLEAN_ERR == pytest.approx(1 - 0.56522)
    rel_by_hand = sum(100 * (e_mean - 0.2) / (ALEXNET_ERR[c] - 0.43478)
                      for c, e_mean in ((c, 0.3 if c in ("gaussian_noise", "brightness") else 0.5)
                                        for c in BENCHMARK_CORRUPTIONS)) / 15
    assert out["relative_mce"] == pytest.approx(rel_by_hand)
    assert out["mean_err_15"] == pytest.approx((0.3 * 2 + 0.5 * 13) / 15)
    assert out["mean_err_19"] is None  # 3 extras missing
    assert out["extra"]["corruption_err"] == {"speckle_noise": pytest.approx(0.9)}
    assert "speckle_noise" not in out["ce"] and out["complete"]
    assert out["groups"]["noise"] == pytest.approx((0.3 + 0.5 + 0.5) / 3)


def test_mce_needs_all_cells_and_custom_baseline() -> None:
    errors = _all_errors(0.5)
    del errors["fog"][3]
    out = imagenet_c_summary(errors, clean_err=0.1)
    assert out["mce"] is None and out["relative_mce"] is None and not out["complete"]
    assert out["ce"]["fog"] == pytest.approx(100 * 0.5 / 0.819324)  # CE still reported per corruption
    base = {c: 0.25 for c in BENCHMARK_CORRUPTIONS} | {"speckle_noise": 0.1}
    errors = _all_errors(0.5) | {"speckle_noise": {s: 0.9 for s in range(1, 6)}}
    out = imagenet_c_summary(errors, 0.1, baseline=base, baseline_clean_err=0.05)
    assert out["mce"] == pytest.approx(200.0)  # the extra corruption's CE (900) stays out of mCE
    assert out["extra"]["ce"]["speckle_noise"] == pytest.approx(900.0)
    assert out["relative_mce"] == pytest.approx(100 * 0.4 / 0.2)


def test_imagenet_c_summary_from_cells() -> None:
    cells = {"clean": {"err": 0.25}}
    for c in BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS:
        for s in range(1, 6):
            cells[f"{c}/{s}"] = {"err": 0.1 * s}
    out = imagenet_c.summarize(cells)
    assert out["clean_err"] == 0.25
    assert out["corruption_err"]["fog"] == pytest.approx(0.3)
    assert out["mean_err_19"] == pytest.approx(0.3)
    assert out["mce"] == pytest.approx(sum(30.0 / e for e in ALEXNET_ERR.values()) / 15)
    # a baseline evaluated in the harness: same numbers -> CE 100 for every corruption
    base, base_clean = imagenet_c.baseline_from_cells(cells)
    out = imagenet_c.summarize(cells, baseline=base, baseline_clean_err=base_clean)
    assert out["mce"] == pytest.approx(100.0) and out["relative_mce"] == pytest.approx(100.0)


def test_bg_gap_hand_computed() -> None:
    assert bg_gap(0.897, 0.817) == pytest.approx(0.080)  # iBOT Table 8: 89.7 - 81.7
    cells = {v: {"acc": a} for v, a in [("original", 0.9), ("mixed_same", 6 / 8), ("mixed_rand", 3 / 8)]}
    out = backgrounds.summarize(cells)
    assert out["bg_gap"] == pytest.approx(0.375)
    assert backgrounds.summarize({"original": {"acc": 1.0}})["bg_gap"] is None


def test_dense_p_mpc_rpc_hand_computed() -> None:
    cells = {c: {s: 0.2 for s in range(1, 6)} for c in BENCHMARK_CORRUPTIONS}
    cells["gaussian_noise"] = {s: 0.1 for s in range(1, 6)}
    cells["spatter"] = {1: 0.05}  # extra corruption: separate
    out = dense_summary(0.4, cells)
    assert out["mPC"] == pytest.approx((14 * 5 * 0.2 + 5 * 0.1) / 75)  # 0.19333
    assert out["rPC"] == pytest.approx(100 * 0.193333333 / 0.4, abs=1e-6)  # 48.33 %
    assert out["extra_mPC"] == pytest.approx(0.05) and out["complete"] and out["n_cells"] == 75
    assert out["per_corruption"]["gaussian_noise"] == pytest.approx(0.1)
    assert out["per_severity"][3] == pytest.approx((14 * 0.2 + 0.1) / 15)
    zero = dense_summary(0.0, {"fog": {1: 0.0}})
    assert zero["rPC"] is None and not zero["complete"]


def test_in_to_in9_mapping_counts() -> None:
    table = backgrounds.in_to_in9()
    assert table.shape == (1000,)
    assert int((table >= 0).sum()) == 370 and int((table == -1).sum()) == 630
    counts = torch.bincount(table[table >= 0], minlength=9).tolist()
    # dog 116, bird 52, vehicle 42, reptile 36, carnivore 35, insect 27, instrument 26, primate 20, fish 16
    assert counts == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert table[151:269].eq(0).sum() == 116 and table[171] == -1 and table[0] == 8
    logits = torch.full((3, 1000), -1.0)
    logits[0, 160] = 5  # a dog
    logits[1, 500] = 5  # unmapped class -> -1 (wrong whatever the label)
    logits[2, 395] = 5  # a fish
    assert backgrounds.in9_predict(logits).tolist() == [0, -1, 8]


def test_imagenet_a_r_subsets_match_timm_indices() -> None:
    from robustness.data import timm_info_lines

    for name in ("imagenet_a", "imagenet_r"):
        idx = ood.subset_indices(name)
        assert len(idx) == 200 and idx == sorted(idx)
        assert idx == [int(v) for v in timm_info_lines(f"{name}_indices.txt")]
    logits = torch.zeros(2, 1000)
    a = ood.subset_indices("imagenet_a")
    logits[0, 0] = 10.0      # class 0 is not in IN-A: ignored
    logits[0, a[7]] = 1.0
    logits[1, a[199]] = 3.0
    assert ood.restricted_predict(a)(logits).tolist() == [7, 199]


def test_result_store_atomic_and_config_guard(tmp_path) -> None:
    path = tmp_path / "r.json"
    store = ResultStore(path, model="m")
    store.open_group("imagenet_c", {"seed": 0})
    store.put("imagenet_c", "fog/1", {"err": 0.5})
    assert json.loads(path.read_text())["groups"]["imagenet_c"]["cells"]["fog/1"] == {"err": 0.5}
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind
    again = ResultStore(path)
    assert again.model == "m" and again.has("imagenet_c", "fog/1")
    again.open_group("imagenet_c", {"seed": 0})  # same config: cells kept
    assert again.has("imagenet_c", "fog/1")
    with pytest.raises(ConfigMismatchError, match="seed"):
        again.open_group("imagenet_c", {"seed": 1})
    again.open_group("imagenet_c", {"seed": 1}, restart=True)
    assert not again.has("imagenet_c", "fog/1")


def test_result_store_schema_nan_and_version_1_files(tmp_path) -> None:
    """Result files carry the suite's schema tag, store NaN as null, and version-1 files ({'format':
    'ibot-robustness/1'}) are read and rewritten in the current version; other files are refused by name."""
    from ibot.records import RecordError

    path = tmp_path / "r.json"
    store = ResultStore(path, model="m", meta={"arch": ("vit_small", 16)})
    store.open_group("occlusion", {"grid": (14, 14)})
    store.put("occlusion", "random/0.50", {"acc": float("nan"), "total": 3})
    data = json.loads(path.read_text())
    assert next(iter(data)) == "schema" and data["schema"] == "ibot-suite/robustness/2"
    assert data["groups"]["occlusion"]["cells"]["random/0.50"] == {"acc": None, "total": 3}
    assert data["meta"] == {"arch": ["vit_small", 16]} and store.config("occlusion") == {"grid": [14, 14]}
    store.open_group("occlusion", {"grid": (14, 14)})  # the same config as stored (tuples compare as lists)

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "ibot-robustness/1", "model": "v1", "meta": {},
                               "groups": {"ood": {"config": {}, "cells": {"imagenet_a": {"acc": 0.5}}}}}))
    migrated = ResultStore(old)
    assert migrated.model == "v1" and migrated.get("ood", "imagenet_a") == {"acc": 0.5}
    migrated.put("ood", "imagenet_r", {"acc": 0.25})
    rewritten = json.loads(old.read_text())
    assert rewritten["schema"] == "ibot-suite/robustness/2" and "format" not in rewritten
    assert set(rewritten["groups"]["ood"]["cells"]) == {"imagenet_a", "imagenet_r"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "ibot-suite/transfer/1", "metric": {}}))
    with pytest.raises(RecordError, match="other.json.*ibot-suite/transfer/1"):
        ResultStore(other)
