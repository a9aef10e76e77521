# Example of a custom dataset (not a paper recipe): iBOT ViT-S/16 UperNet on CamVid (11 classes), 20k iterations,
# 2 GPUs x 8 images.
_base_ = [
    './_base_/models/upernet_vit-ibot_deconv.py',
    './_base_/datasets/camvid.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]
crop_size = (352, 480)
max_iters = 20000
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size),
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11),
    test_cfg=dict(crop_size=crop_size, stride=(234, 320)))
optim_wrapper = dict(optimizer=dict(lr=6e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
train_dataloader = dict(batch_size=8)
