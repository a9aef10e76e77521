# iBOT ViT-S/16, Cascade Mask R-CNN, COCO 3x as iBOT's released vit_small_giou_4conv1f_coco_3x.py
# (8 GPUs x 2 images, layer decay 0.75).
_base_ = [
    './_base_/models/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou.py',
    './_base_/datasets/coco-instance_ms-crop.py',
    './_base_/schedules/adamw-layer-decay_3x.py',
    'mmdet::_base_/default_runtime.py',
]
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
