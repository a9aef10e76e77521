"""Smoke tests of the OpenMMLab stack on CPU: imports, compiled mmcv ops, and one loss forward +
backward of the two reference models (Cascade Mask R-CNN, UperNet) on a 2-image batch."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("name", ["ibot", "pretrain", "det", "seg", "robustness", "transfer",
                                  "mmcv", "mmengine", "mmdet", "mmseg", "timm", "pycocotools"])
def test_imports(name: str) -> None:
    importlib.import_module(name)


def test_mmcv_ops_cpu() -> None:
    from mmcv.ops import RoIAlign, batched_nms, nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    # Same boxes in different classes are kept.
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(type="nms", iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]
    # RoIAlign of a linear ramp with aligned=True samples bin centres exactly: value = x coordinate.
    feat = torch.arange(8.0).repeat(8, 1).view(1, 1, 8, 8).requires_grad_()
    rois = torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feat, rois)
    expected = torch.tensor([[2.5, 4.5], [2.5, 4.5]]).view(1, 1, 2, 2)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert feat.grad is not None and torch.isclose(feat.grad.sum(), torch.tensor(4.0))


def _masks(h: int, w: int, boxes: np.ndarray):
    from mmdet.structures.mask import BitmapMasks

    m = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        m[i, y1:y2, x1:x2] = 1
    return BitmapMasks(m, h, w)


@pytest.mark.slow  # ~15 s; the quick demo trains the same detector in the default run
def test_mmdet_cascade_mask_rcnn_loss_backward() -> None:
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.structures import InstanceData

    register_all_modules()
    cfg = get_config("mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py")
    cfg.model.backbone.depth = 18  # small and fast; the heads are the real thing
    cfg.model.backbone.init_cfg = None  # no download
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    h = w = 128
    samples, imgs = [], []
    for i in range(2):
        boxes = np.array([[10, 12, 70, 80], [50, 40, 120, 110]], dtype=np.float32) + i
        ds = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
        ds.gt_instances = InstanceData(bboxes=torch.from_numpy(boxes), labels=torch.tensor([1, 5]),
                                       masks=_masks(h, w, boxes))
        samples.append(ds)
        imgs.append(torch.randn(3, h, w))
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), training=True)
    losses = model(data["inputs"], data["data_samples"], mode="loss")
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    assert any(k.startswith("s2.") and "mask" in k for k in losses), sorted(losses)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.roi_head.mask_head[2].conv_logits.weight.grad.abs().sum() > 0


def test_mmseg_upernet_loss_backward() -> None:
    from mmengine.hub import get_config
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = get_config("mmseg::_base_/models/upernet_r50.py")
    cfg.model.backbone.depth = 18
    cfg.model.backbone.init_cfg = None
    cfg.model.pretrained = None
    cfg.model.decode_head.in_channels = [64, 128, 256, 512]
    cfg.model.decode_head.channels = 64
    cfg.model.decode_head.num_classes = 5
    cfg.model.auxiliary_head.in_channels = 256
    cfg.model.auxiliary_head.channels = 32
    cfg.model.auxiliary_head.num_classes = 5
    # SyncBN needs a process group; the CPU smoke test uses plain BN.
    _replace_syncbn(cfg.model)
    cfg.model.data_preprocessor.size = (64, 64)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    samples, imgs = [], []
    for i in range(2):
        ds = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        label = torch.randint(0, 5, (1, 64, 64))
        label[:, :4] = 255  # ignore index
        ds.gt_sem_seg = PixelData(data=label)
        samples.append(ds)
        imgs.append(torch.randn(3, 64, 64))
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), training=True)
    losses = model(data["inputs"], data["data_samples"], mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0


def _replace_syncbn(cfg) -> None:
    if isinstance(cfg, dict):
        if cfg.get("type") == "SyncBN":
            cfg["type"] = "BN"
        for v in cfg.values():
            _replace_syncbn(v)
    elif isinstance(cfg, list):
        for v in cfg:
            _replace_syncbn(v)
