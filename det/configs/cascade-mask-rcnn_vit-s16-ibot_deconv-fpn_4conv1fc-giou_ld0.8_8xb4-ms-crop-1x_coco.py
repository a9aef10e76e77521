# iBOT ViT-S/16, Cascade Mask R-CNN, COCO 1x (iBOT README: 8 GPUs x 4 images, layer decay 0.8).
# Paper (Table 6): 49.4 box AP / 42.6 mask AP.
_base_ = [
    './_base_/models/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou.py',
    './_base_/datasets/coco-instance_ms-crop.py',
    './_base_/schedules/adamw-layer-decay_1x.py',
    'mmdet::_base_/default_runtime.py',
]
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)
