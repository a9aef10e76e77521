"""Dense robustness with stock mmdet / mmseg configs on real data: a tiny Cascade Mask R-CNN on tiny COCO (bbox +
segm P / mPC / rPC), a tiny UperNet on ADE20K-format data (mIoU), corruptions in RGB order, resumable cells."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from robustness_helpers import REPO, check_html_report, load_tool, shared_data_path

from ibot.compat.imagecorruptions import corrupt
from robustness.corruptions import sample_seed
from robustness.metrics import BENCHMARK_CORRUPTIONS

DET_CFG = """
_base_ = ['mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py']
data_root = '{root}/'
C = 32
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=C),
    rpn_head=dict(in_channels=C, feat_channels=C),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=C),
        bbox_head=[dict(type='Shared2FCBBoxHead', in_channels=C, fc_out_channels=64, roi_feat_size=7,
                        num_classes=80, bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                                                        target_stds=[s, s, 2 * s, 2 * s]),
                        reg_class_agnostic=True, loss_cls=dict(type='CrossEntropyLoss', loss_weight=1.0),
                        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)) for s in (0.1, 0.05, 0.033)],
        mask_roi_extractor=dict(out_channels=C),
        mask_head=dict(in_channels=C, conv_out_channels=C, num_convs=1)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=20), rcnn=dict(score_thr=0.0, max_per_img=5)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(batch_size=1, num_workers={workers}, persistent_workers=False,
                       dataset=dict(data_root=data_root, ann_file='instances_train2017_small.json',
                                    data_prefix=dict(img='train_2017_small/'), pipeline=test_pipeline,
                                    indices={n}))
test_evaluator = dict(ann_file=data_root + 'instances_train2017_small.json', metric=['bbox', 'segm'])
default_hooks = dict(logger=dict(interval=1000))
"""

SEG_CFG = """
_base_ = ['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py']
data_root = '{root}'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=None, size_divisor=32),
    backbone=dict(depth=18, init_cfg=None, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=32, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=16, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(batch_size=1, num_workers={workers}, persistent_workers=False,
                       dataset=dict(data_root=data_root,
                                    data_prefix=dict(img_path='images', seg_map_path='annotations'),
                                    pipeline=test_pipeline))
default_hooks = dict(logger=dict(interval=1000))
"""



def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _det_config(tmp_path: Path, n: int = 2, workers: int = 0) -> Path:
    text = DET_CFG.format(root=shared_data_path("tiny_coco"), n=n, workers=workers)
    return _write(tmp_path / "tiny_cascade.py", text)


def _seg_config(tmp_path: Path, workers: int = 0) -> Path:
    return _write(tmp_path / "tiny_upernet.py", SEG_CFG.format(root=shared_data_path("ade20k_sample"), workers=workers))


def _check_summary(summary: dict, cells: dict, metric: str, n_corrupted: int) -> None:
    """P / mPC / rPC recomputed by hand from the stored cells."""
    d = summary[metric]
    vals = [rec[metric] for key, rec in cells.items() if key != "clean"]
    assert len(vals) == n_corrupted == d["n_cells"]
    assert d["P"] == cells["clean"][metric]
    assert d["mPC"] == pytest.approx(sum(vals) / len(vals))
    if d["P"] > 0:
        assert d["rPC"] == pytest.approx(100 * d["mPC"] / d["P"])
    else:
        assert d["rPC"] is None


# ------------------------------------------------------------------------------------------------ units
def test_corrupt_rgb_converts_mmcv_bgr_on_camvid() -> None:
    from mmcv.transforms import LoadImageFromFile

    from robustness.dense import CorruptRGB

    path = sorted(shared_data_path("camvid", "val").glob("*.jpg"))[0]
    bgr = LoadImageFromFile()(dict(img_path=str(path)))["img"]
    assert bgr.shape == (360, 480, 3) and bgr.dtype == np.uint8
    out = CorruptRGB("frost", 3, seed=5).transform(dict(img=bgr.copy(), img_path=str(path)))["img"]
    np.random.seed(sample_seed(5, "frost", 3, path.name))
    expected = corrupt(np.ascontiguousarray(bgr[..., ::-1]), "frost", 3)[..., ::-1]
    assert np.array_equal(out, expected)
    np.random.seed(sample_seed(5, "frost", 3, path.name))
    naive = corrupt(bgr, "frost", 3)  # what mmdet's Corrupt does with mmcv's BGR image
    assert np.abs(naive.astype(int) - out.astype(int)).mean() > 1.0
    again = CorruptRGB("frost", 3, seed=5).transform(dict(img=bgr.copy(), img_path=str(path)))["img"]
    assert np.array_equal(again, out)  # seeded per image
    rgb_in = CorruptRGB("frost", 3, seed=5, channel_order="rgb").transform(
        dict(img=np.ascontiguousarray(bgr[..., ::-1]), img_path=str(path)))["img"]
    assert np.array_equal(rgb_in, out[..., ::-1])
    as_float = CorruptRGB("contrast", 2).transform(dict(img=bgr.astype(np.float32), img_path=str(path)))["img"]
    assert as_float.dtype == np.float32 and as_float.shape == bgr.shape


def test_insert_corruption_placement() -> None:
    from robustness.dense import insert_corruption

    pipe = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(10, 10)), dict(type="PackDetInputs")]
    out = insert_corruption(pipe, "fog", 2, seed=3)
    assert [s["type"] for s in out] == ["LoadImageFromFile", "CorruptRGB", "Resize", "PackDetInputs"]
    assert out[1] == dict(type="CorruptRGB", corruption="fog", severity=2, seed=3, channel_order="bgr")
    assert len(pipe) == 3  # the input pipeline is not modified
    pipe2 = [dict(type="mmdet.LoadAnnotations"), dict(type="mmdet.LoadImageFromFile", channel_order="rgb"),
             dict(type="Resize")]
    out2 = insert_corruption(pipe2, "fog", 2)
    assert out2[2]["type"] == "CorruptRGB" and out2[2]["channel_order"] == "rgb"  # after the loader, not index 1
    assert insert_corruption(pipe, "fog", 2, after="Resize")[2]["type"] == "CorruptRGB"
    with pytest.raises(ValueError, match="LoadImageFromFile"):
        insert_corruption([dict(type="Resize")], "fog", 1)


# ------------------------------------------------------------------------------------------------ end to end
def test_dense_detection_tiny_cascade_mask_rcnn_on_tiny_coco(tmp_path) -> None:
    """Acceptance (subset of cells): tools/robustness_dense.py on tiny COCO -> P / mPC / rPC for bbox and segm."""
    dense = load_tool("robustness_dense")
    cfg = _det_config(tmp_path)
    out = tmp_path / "cascade.json"
    probes: dict[str, torch.Tensor] = {}

    def probe(key: str, record: dict, runner) -> None:
        ds = runner.test_loop.dataloader.dataset
        names = [type(t).__name__ for t in ds.pipeline.transforms]
        if key == "clean":
            assert "CorruptRGB" not in names
        else:
            assert names[:2] == ["LoadImageFromFile", "CorruptRGB"]
            step = ds.pipeline.transforms[1]
            assert f"{step.corruption}/{step.severity}" == key and step.channel_order == "bgr"
        probes[key] = ds[0]["inputs"]
        assert torch.equal(ds[0]["inputs"], probes[key])  # corruption seeded per image

    summary = dense.main([str(cfg), "--out", str(out), "--name", "tiny-cascade", "--corruptions", "gaussian_noise",
                          "jpeg_compression", "--severities", "1", "5", "--no-progress"], on_cell_done=probe)
    cells = json.loads(out.read_text())["groups"]["det_c"]["cells"]
    assert list(cells) == ["clean", "gaussian_noise/1", "gaussian_noise/5", "jpeg_compression/1",
                           "jpeg_compression/5"]
    assert set(summary) == {"coco/bbox_mAP", "coco/segm_mAP"}
    for metric in summary:
        _check_summary(summary, cells, metric, 4)
        assert not summary[metric]["complete"]
    for key in list(cells)[1:]:
        assert not torch.equal(probes[key], probes["clean"]), key
    assert (probes["gaussian_noise/5"].float() - probes["clean"].float()).abs().mean() > \
        (probes["gaussian_noise/1"].float() - probes["clean"].float()).abs().mean()


@pytest.mark.slow  # ~30 s; the default run keeps the detection path and the dense reliability tests
def test_dense_segmentation_tiny_upernet_ade20k_interrupt_and_resume(tmp_path) -> None:
    """Acceptance (all 15 corruptions at one severity, corrupted after the test Resize to keep glass blur cheap):
    ADE20K-format data, mIoU per cell, P / mPC / rPC; an interrupted run resumes without recomputing finished
    cells; the result feeds the report."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from ibot.checkpoint import save_file
    from robustness.dense import DenseSettings, run_dense

    cfg_path = _seg_config(tmp_path)
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(cfg_path)).model)
    sd = model.state_dict()
    sd["decode_head.conv_seg.bias"][2] += 4.0  # sky vs building: the dominant classes of these 3 images, so the
    sd["decode_head.conv_seg.bias"][1] += 3.9  # random model's mIoU is > 0 and depends on the pixels
    ckpt = tmp_path / "upernet.pth"
    save_file({"state_dict": sd, "meta": {}}, ckpt)

    out = tmp_path / "upernet.json"
    settings = DenseSettings(corruptions=BENCHMARK_CORRUPTIONS, severities=[2], corrupt_after="Resize", progress=False)

    class Stop(Exception):
        pass

    first: list[str] = []

    def stop_after_two(key, record, runner) -> None:
        first.append(key)
        if len(first) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_dense(cfg_path, ckpt, out, settings, on_cell_done=stop_after_two)
    assert list(json.loads(out.read_text())["groups"]["seg_c"]["cells"]) == ["clean", "gaussian_noise/2"]
    second: list[str] = []

    def record(key, rec, runner) -> None:
        second.append(key)
        names = [type(t).__name__ for t in runner.test_loop.dataloader.dataset.pipeline.transforms]
        assert names[:3] == ["LoadImageFromFile", "Resize", "CorruptRGB"]

    summary = run_dense(cfg_path, ckpt, out, settings, on_cell_done=record)
    assert second == [f"{c}/2" for c in BENCHMARK_CORRUPTIONS[1:]]
    cells = json.loads(out.read_text())["groups"]["seg_c"]["cells"]
    assert set(summary) == {"mIoU"}
    _check_summary(summary, cells, "mIoU", 15)
    assert summary["mIoU"]["P"] > 0 and summary["mIoU"]["rPC"] is not None
    assert all({"aAcc", "mIoU", "mAcc"} <= set(rec) for rec in cells.values())

    from robustness.report import build_report

    report = build_report([out], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Model | metric | P | mPC | rPC (%) | all 15 × 5 |" in md
    probe = check_html_report(tmp_path / "report" / "report.html", min_plots=1)
    assert {"P", "mPC", "rPC (%)"} <= set(probe.headers)
    assert report["models"][0]["seg_c"]["mIoU"]["mPC"] == pytest.approx(summary["mIoU"]["mPC"])


# ------------------------------------------------------------------------------------------------ full grids (slow)
@pytest.mark.slow
def test_dense_full_grid_det_and_seg(tmp_path) -> None:
    """All 15 corruptions × 5 severities for both tasks (corrupted at test resolution to keep glass blur cheap),
    with data-loader workers; P / mPC / rPC complete."""
    from robustness.dense import DenseSettings, run_dense

    settings = DenseSettings(corrupt_after="Resize", progress=False)
    det = run_dense(_det_config(tmp_path, n=2, workers=1), None, tmp_path / "det.json", settings)
    seg = run_dense(_seg_config(tmp_path, workers=1), None, tmp_path / "seg.json", settings)
    for summary, task, metrics in ((det, "det_c", {"coco/bbox_mAP", "coco/segm_mAP"}), (seg, "seg_c", {"mIoU"})):
        assert set(summary) == metrics
        cells = json.loads((tmp_path / f"{task[:3]}.json").read_text())["groups"][task]["cells"]
        assert len(cells) == 76
        for m in metrics:
            assert summary[m]["complete"]
            _check_summary(summary, cells, m, 75)


@pytest.mark.slow
def test_dense_with_the_project_vit_harness_on_camvid(tmp_path) -> None:
    """Our iBOT ViT in mmseg (seg/configs, CamVid recipe) through the same runner: 2 real CamVid val images."""
    from robustness.dense import DenseSettings, run_dense

    config = REPO / "seg" / "configs" / "upernet_vit-s16-ibot_deconv-ln_ld0.9_2xb8-20k_camvid-352x480.py"
    if not config.is_file():
        pytest.fail(f"{config} is missing (the seg harness' CamVid example config)")
    camvid = shared_data_path("camvid")
    summary = run_dense(config, None, tmp_path / "camvid.json", DenseSettings(
                        corruptions=["fog", "frost"], severities=[3], progress=False, cfg_options={
                            "test_dataloader.dataset.data_root": str(camvid),
                            "test_dataloader.dataset.data_prefix": dict(img_path="val", seg_map_path="valannot"),
                            "test_dataloader.dataset.img_suffix": ".jpg",
                            "test_dataloader.dataset.indices": 2,
                            "test_dataloader.num_workers": 1,
                            "test_dataloader.persistent_workers": False,
                            "model.backbone.depth": 2}))
    cells = json.loads((tmp_path / "camvid.json").read_text())["groups"]["seg_c"]["cells"]
    assert list(cells) == ["clean", "fog/3", "frost/3"]
    _check_summary(summary, cells, "mIoU", 2)
