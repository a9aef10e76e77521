# iBOT ViT-B/16, Cascade Mask R-CNN, COCO 1x (iBOT README: 8 GPUs x 2 images, layer decay 0.75).
# Paper (Table 6): 51.2 box AP / 44.2 mask AP.
_base_ = [
    './_base_/models/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou.py',
    './_base_/datasets/coco-instance_ms-crop.py',
    './_base_/schedules/adamw-layer-decay_1x.py',
    'mmdet::_base_/default_runtime.py',
]
embed_dim = 768
pretrained = 'pretrained/ibot_vit_base_16_teacher.pth'
model = dict(
    backbone=dict(arch='vit_base', img_size=(672, 1092), drop_path_rate=0.2,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dim] * 4))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
