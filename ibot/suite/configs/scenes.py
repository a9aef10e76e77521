"""Data config of the suite runner (``python -m ibot.suite``) on the embedded scene data set (``ibot.scenes``),
tiny CPU budgets.

    python tools/evaluate_backbone.py work_dirs/x/teacher_backbone.pth \\
        --suite knn linear robustness --data-config ibot/suite/configs/scenes.py --work-dir work_dirs/eval/x

The data set is generated on first use (seconds, cached under ``$IBOT_CACHE_DIR/scenes``). Raise the epochs for a
GPU run; on real data sets copy this file and point the roots at them (see ``ibot/suite/runner.py``).
"""
import os as _os
from pathlib import Path as _Path

from ibot.scenes import ensure_scenes as _ensure_scenes

# IBOT_SCENES_ROOT: an already generated scene data set (the demo passes its own, larger one);
# otherwise the SceneSpec defaults: 64 px objects, 40 train / 10 val per class, 128 px scenes.
_root = _Path(_os.environ["IBOT_SCENES_ROOT"]) if _os.environ.get("IBOT_SCENES_ROOT") else _ensure_scenes()

classification = dict(dataset="imagefolder", root=str(_root / "classification"), train_split="train",
                      test_split="val")
robustness = dict(
    data=str(_root / "classification" / "val"),
    masks=str(_root / "classification" / "masks" / "val"),  # foreground masks: backgrounds (IN-9 style) on the fly
    tests=["imagenet-c", "occlusion", "backgrounds"],
    corruptions=["gaussian_noise", "defocus_blur", "contrast", "jpeg_compression"],
    severities=[1, 3, 5],
    occlusion_modes=["random", "salient"],
    occlusion_levels=[0.25, 0.5, 0.75],
    batch_size=64,
)
knn = dict(batch_size=64, options={"ks": [10, 20], "report_k": 20})
linear = dict(epochs=10, batch_size=32, options={"lrs": [0.001, 0.01, 0.1]})
finetune = dict(epochs=3, batch_size=32)
# Detection / segmentation fine-tuning at demo scale (the configs' docstrings say what they keep of the recipes);
# det.cli's --backbone sets the backbone shape and neck / head input widths from the backbone file.
det = dict(config="det/configs/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou_ld0.8_1xb8-3e_scenes-128.py",
           data_root=str(_root / "coco"), metric="coco/bbox_mAP",
           cfg_options={"train_cfg.val_begin": 10**6})  # no validation while training: tools/test.py evaluates
seg = dict(config="seg/configs/upernet_vit-ibot_deconv-ln_ld0.9_1xb8-200it_scenes-128.py",
           data_root=str(_root / "ade"), metric="mIoU",
           cfg_options={"train_cfg.val_begin": 10**6})
common = dict(device="auto", num_workers=0)
