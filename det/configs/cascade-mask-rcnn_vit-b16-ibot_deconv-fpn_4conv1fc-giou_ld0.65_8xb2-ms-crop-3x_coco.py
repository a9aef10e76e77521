# iBOT ViT-B/16, Cascade Mask R-CNN, COCO 3x as iBOT's released vit_base_giou_4conv1f_coco_3x.py
# (8 GPUs x 2 images, layer decay 0.65, 36 epochs with steps at 27 and 33).
_base_ = './cascade-mask-rcnn_vit-b16-ibot_deconv-fpn_4conv1fc-giou_ld0.75_8xb2-ms-crop-1x_coco.py'

train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
