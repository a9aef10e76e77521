"""seg/configs: every config parses and encodes the iBOT segmentation recipe its name promises; the linear-head
variant trains only its head."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO
from mmengine.config import Config

ROOT = REPO
CONFIGS = sorted(p for p in (ROOT / "seg/configs").glob("*.py") if "_scenes-" not in p.name)  # paper recipes
DEMO_CONFIGS = sorted((ROOT / "seg/configs").glob("*_scenes-*.py"))  # demo scale, on ibot.scenes data
UPERNET = re.compile(r"upernet_vit-(?P<arch>[sb])16-ibot_deconv-ln_ld(?P<ld>[0-9.]+)_(?P<gpus>\d)xb(?P<batch>\d)"
                     r"-(?P<iters>\d+)k_(?P<data>ade20k-512x512|camvid-352x480)\.py")
LINEAR = re.compile(r"linear_vit-(?P<arch>[sb])16-ibot_frozen-ln_(?P<gpus>\d)xb(?P<batch>\d)-160k_ade20k-512x512\.py")
LR = {("s", "upernet"): 3e-5, ("b", "upernet"): 8e-5, ("s", "linear"): 8e-4, ("b", "linear"): 8e-4}


def test_expected_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"upernet_vit-s16-ibot_deconv-ln_ld0.9_4xb4-160k_ade20k-512x512.py",
            "upernet_vit-b16-ibot_deconv-ln_ld0.65_8xb2-160k_ade20k-512x512.py",
            "linear_vit-b16-ibot_frozen-ln_4xb4-160k_ade20k-512x512.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_encodes_its_recipe(path: Path) -> None:
    m = UPERNET.fullmatch(path.name) or LINEAR.fullmatch(path.name)
    assert m, f"config name does not follow the naming scheme: {path.name}"
    kind = "upernet" if path.name.startswith("upernet") else "linear"
    cfg = Config.fromfile(path)
    assert cfg.default_scope == "mmseg" and cfg.custom_imports.imports == ["seg"]
    model, dim = cfg.model, {"s": 384, "b": 768}[m["arch"]]
    assert model.type == "EncoderDecoder" and model.pretrained is None
    bb = model.backbone
    assert bb.type == "iBOTViTBackbone" and bb.arch == {"s": "vit_small", "b": "vit_base"}[m["arch"]]
    assert bb.out_with_norm is True and bb.init_cfg.type == "Pretrained" and bb.drop_path_rate == 0.1
    assert cfg.train_dataloader.batch_size == int(m["batch"])
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    sched = cfg.param_scheduler
    assert (sched[0].type, sched[0].start_factor, sched[0].end) == ("LinearLR", 1e-6, 1500)
    assert (sched[1].type, sched[1].power, sched[1].eta_min) == ("PolyLR", 1.0, 0.0)
    assert cfg.val_evaluator.iou_metrics == ["mIoU"] and model.test_cfg.mode == "slide"
    if kind == "upernet":
        assert bb.pyramid == "deconv" and bb.pyramid_norm_cfg.type == "SyncBN"
        head, aux = model.decode_head, model.auxiliary_head
        assert head.type == "UPerHead" and head.in_channels == [dim] * 4 and head.channels == dim
        assert head.pool_scales == (1, 2, 3, 6)
        assert aux.type == "FCNHead" and aux.in_index == 2 and aux.loss_decode.loss_weight == 0.4
        assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimWrapperConstructor"
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == float(m["ld"])
        iters = int(m["iters"]) * 1000
    else:
        assert bb.pyramid is None and bb.frozen_stages == 12
        head = model.decode_head
        assert (head.type, head.num_convs, head.input_transform, head.channels) == \
            ("FCNHead", 0, "resize_concat", 4 * dim)
        assert model.auxiliary_head is None and "constructor" not in cfg.optim_wrapper
        iters = 160000
    assert cfg.train_cfg.max_iters == iters and sched[1].end == iters
    if kind == "linear" or m["data"].startswith("ade20k"):
        assert model.test_cfg.crop_size == (512, 512) and model.test_cfg.stride == (341, 341)
        assert model.decode_head.num_classes == 150 and cfg.train_dataloader.dataset.type == "ADE20KDataset"
        assert cfg.optim_wrapper.optimizer.lr == LR[(m["arch"], kind)]
    else:
        assert model.decode_head.num_classes == 11 and cfg.train_dataloader.dataset.type == "CamVidDataset"


def test_linear_variant_trains_only_the_head() -> None:
    from mmengine.model import revert_sync_batchnorm
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(ROOT / "seg/configs/linear_vit-b16-ibot_frozen-ln_4xb4-160k_ade20k-512x512.py")
    cfg.merge_from_dict({"model.backbone.init_cfg": None, "model.backbone.arch": None,
                         "model.backbone.embed_dim": 32, "model.backbone.depth": 12, "model.backbone.num_heads": 2,
                         "model.decode_head.in_channels": [32] * 4, "model.decode_head.channels": 128,
                         "model.data_preprocessor.size": (64, 64)})
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).train()
    samples = [SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)),
                             gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64)))) for _ in range(2)]
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)] * 2,
                                        data_samples=samples), training=True)
    loss, _ = model.parse_losses(model(data["inputs"], data["data_samples"], mode="loss"))
    loss.backward()
    assert not any(p.requires_grad or p.grad is not None for p in model.backbone.parameters())
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0
    assert not any(b.training for b in model.backbone.vit.blocks)  # frozen blocks stay in eval mode


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=lambda p: p.stem)
def test_demo_config_keeps_the_recipe_structure_on_scene_classes(path: Path) -> None:
    """The scene config is the recipe's UperNet at toy widths, reading the generated label maps (0 = background,
    ignored; 1..C = the classes in ibot.scenes order)."""
    from ibot.scenes import DEFAULT_CLASSES

    cfg = Config.fromfile(path)
    model = cfg.model
    assert model.type == "EncoderDecoder" and model.backbone.type == "iBOTViTBackbone"
    assert model.backbone.out_with_norm is True and model.backbone.pyramid == "deconv"
    assert model.decode_head.type == "UPerHead" and model.decode_head.in_channels == [model.backbone.embed_dim] * 4
    assert model.decode_head.num_classes == model.auxiliary_head.num_classes == len(DEFAULT_CLASSES)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        ds = loader.dataset
        assert ds.metainfo.classes == DEFAULT_CLASSES and ds.reduce_zero_label is True
        assert ds.data_root == cfg.data_root
    assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimWrapperConstructor"
    assert cfg.train_cfg.max_iters == cfg.param_scheduler[1].end
