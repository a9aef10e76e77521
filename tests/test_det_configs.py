"""det/configs: every config parses and encodes the iBOT detection recipe its name promises."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO
from mmengine.config import Config

ROOT = REPO
CONFIGS = sorted(p for p in (ROOT / "det/configs").glob("*.py") if "_scenes-" not in p.name)  # paper recipes
DEMO_CONFIGS = sorted((ROOT / "det/configs").glob("*_scenes-*.py"))  # demo scale, on ibot.scenes data
NAME = re.compile(r"cascade-mask-rcnn_vit-(?P<arch>[sb])16-ibot_(?P<neck>[a-z0-9-]+)_4conv1fc-giou_ld(?P<ld>[0-9.]+)"
                  r"_8xb(?P<batch>\d)-ms-crop-(?P<sched>[13])x_coco\.py")


def test_expected_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    for arch, ld1, ld3, b3 in (("s", "0.8", "0.75", 2), ("b", "0.75", "0.65", 2)):
        b1 = 4 if arch == "s" else 2
        assert f"cascade-mask-rcnn_vit-{arch}16-ibot_deconv-fpn_4conv1fc-giou_ld{ld1}_8xb{b1}-ms-crop-1x_coco.py" \
            in names
        assert f"cascade-mask-rcnn_vit-{arch}16-ibot_deconv-fpn_4conv1fc-giou_ld{ld3}_8xb{b3}-ms-crop-3x_coco.py" \
            in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_encodes_its_recipe(path: Path) -> None:
    m = NAME.fullmatch(path.name)
    assert m, f"config name does not follow the naming scheme: {path.name}"
    cfg = Config.fromfile(path)
    assert cfg.default_scope == "mmdet" and cfg.custom_imports.imports == ["det"]
    model = cfg.model
    assert model.type == "CascadeRCNN" and model.backbone.type == "iBOTViTBackbone"
    dim = {"s": 384, "b": 768}[m["arch"]]
    assert model.backbone.arch == {"s": "vit_small", "b": "vit_base"}[m["arch"]]
    assert model.backbone.drop_path_rate == {"s": 0.1, "b": 0.2}[m["arch"]]
    assert model.backbone.init_cfg.type == "Pretrained" and model.backbone.out_with_norm is False
    if m["neck"] == "deconv-fpn":
        assert model.backbone.pyramid == "deconv" and model.backbone.pyramid_norm_cfg.type == "SyncBN"
        assert model.neck.type == "FPN" and model.neck.in_channels == [dim] * 4 and model.neck.num_outs == 5
    else:
        assert model.backbone.pyramid is None and model.neck.type == "SimpleFeaturePyramid"
        assert model.neck.in_channels == dim and model.backbone.window_size == 14
    for stage in model.roi_head.bbox_head:
        assert (stage.type, stage.num_shared_convs, stage.num_shared_fcs) == ("ConvFCBBoxHead", 4, 1)
        assert stage.norm_cfg.type == "SyncBN" and stage.loss_bbox == dict(type="GIoULoss", loss_weight=10.0)
        assert stage.reg_decoded_bbox is True
    assert model.roi_head.mask_head.type == "FCNMaskHead"
    # DETR-style augmentation: flip + RandomChoice(multi-scale | resize-crop-resize)
    types = [t["type"] for t in cfg.train_dataloader.dataset.pipeline]
    assert types == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice", "PackDetInputs"]
    assert cfg.train_dataloader.batch_size == int(m["batch"])
    assert cfg.val_evaluator.metric == ["bbox", "segm"]
    # AdamW 1e-4, wd 0.05, layer decay as named; 1x = 12 epochs (8, 11), 3x = 36 epochs (27, 33)
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and ow.constructor == "ViTLayerDecayOptimWrapperConstructor"
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay) == ("AdamW", 1e-4, 0.05)
    assert ow.paramwise_cfg.layer_decay_rate == float(m["ld"])
    epochs, steps = {"1": (12, [8, 11]), "3": (36, [27, 33])}[m["sched"]]
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.param_scheduler[0].type == "LinearLR" and cfg.param_scheduler[0].end == 500
    assert cfg.param_scheduler[1].milestones == steps and cfg.param_scheduler[1].end == epochs
    assert cfg.auto_scale_lr.base_batch_size == 8 * int(m["batch"])


def test_vit_s_config_builds_the_recipe_model() -> None:
    """The real ViT-S/16 model (no weights loaded): parameters, pyramid strides and FPN outputs."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.model import revert_sync_batchnorm

    register_all_modules()
    cfg = Config.fromfile(ROOT / "det/configs/cascade-mask-rcnn_vit-s16-ibot_deconv-fpn_4conv1fc-giou_ld0.8_8xb4-"
                                 "ms-crop-1x_coco.py")
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    backbone_params = sum(p.numel() for p in model.backbone.vit.parameters())
    # ViT-S/16 backbone: 21,666,048 with the student's mask token (ibot-reference §10), minus that token (384),
    # plus pos_embed positions for the (800, 1008) grid instead of 14 x 14, minus the final norm (not used in det)
    assert backbone_params == 21_666_048 - 384 + (50 * 63 - 196) * 384 - 2 * 384
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 128, 160))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 32, 40), (1, 256, 16, 20), (1, 256, 8, 10), (1, 256, 4, 5),
                                               (1, 256, 2, 3)]


def test_simple_pyramid_window_variant_trains() -> None:
    """The ViTDet-style alternative (simple feature pyramid neck, windowed attention) through a loss + backward."""
    import numpy as np
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    from mmengine.model import revert_sync_batchnorm
    from mmengine.structures import InstanceData

    register_all_modules()
    cfg = Config.fromfile(ROOT / "det/configs/cascade-mask-rcnn_vit-b16-ibot_simple-fpn-win14_4conv1fc-giou_ld0.75_"
                                 "8xb2-ms-crop-1x_coco.py")
    w = 16
    opts = {"model.backbone.init_cfg": None, "model.backbone.arch": None, "model.backbone.embed_dim": 32,
            "model.backbone.depth": 12, "model.backbone.num_heads": 2, "model.backbone.window_size": 3,
            "model.neck.in_channels": 32, "model.neck.out_channels": w, "model.rpn_head.in_channels": w,
            "model.rpn_head.feat_channels": w, "model.roi_head.bbox_roi_extractor.out_channels": w,
            "model.roi_head.mask_roi_extractor.out_channels": w, "model.roi_head.mask_head.in_channels": w,
            "model.roi_head.mask_head.conv_out_channels": w, "model.train_cfg.rpn_proposal.max_per_img": 32}
    for i in range(3):
        opts.update({f"model.roi_head.bbox_head.{i}.{k}": v for k, v in
                     (("in_channels", w), ("conv_out_channels", w), ("fc_out_channels", 2 * w))})
    cfg.merge_from_dict(opts, allow_list_keys=True)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).train()
    assert model.backbone.window_block_indices == frozenset({0, 1, 3, 4, 6, 7, 9, 10})
    boxes = np.array([[8, 10, 60, 70], [40, 30, 120, 100]], dtype=np.float32)
    masks = np.zeros((2, 112, 128), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[i, y1:y2, x1:x2] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(112, 128), ori_shape=(112, 128), scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.from_numpy(boxes), labels=torch.tensor([3, 7]),
                                       masks=BitmapMasks(masks, 112, 128))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 112, 128), dtype=torch.uint8)],
                                        data_samples=[sample]), training=True)
    feats = model.extract_feat(data["inputs"])  # padded to 128x128; 8x8 patches in 3x3 windows (padded to 9x9)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2] and all(f.shape[1] == w for f in feats)
    loss, _ = model.parse_losses(model(data["inputs"], data["data_samples"], mode="loss"))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=lambda p: p.stem)
def test_demo_config_keeps_the_recipe_structure_on_scene_classes(path: Path) -> None:
    """The scene config is the recipe's model at toy widths, reading the generated data's classes in their order."""
    from ibot.scenes import DEFAULT_CLASSES

    cfg = Config.fromfile(path)
    model = cfg.model
    assert model.type == "CascadeRCNN" and model.backbone.type == "iBOTViTBackbone"
    assert model.backbone.pyramid == "deconv" and model.neck.in_channels == [model.backbone.embed_dim] * 4
    assert cfg.train_dataloader.dataset.metainfo.classes == DEFAULT_CLASSES
    assert cfg.val_dataloader.dataset.metainfo.classes == DEFAULT_CLASSES
    for stage in model.roi_head.bbox_head:
        assert stage.type == "ConvFCBBoxHead" and stage.num_classes == len(DEFAULT_CLASSES)
        assert stage.loss_bbox.type == "GIoULoss" and stage.in_channels == model.neck.out_channels
    assert model.roi_head.mask_head.num_classes == len(DEFAULT_CLASSES)
    assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimWrapperConstructor"
    assert cfg.val_evaluator.metric == ["bbox", "segm"] and cfg.val_evaluator.ann_file.startswith(cfg.data_root)
