# iBOT ViT-S/16, UperNet, ADE20K 160k (iBOT README: 4 GPUs x 4 images, lr 3e-5, layer decay 0.9, out_with_norm).
# Paper (Table 6): 45.4 mIoU.
_base_ = [
    './_base_/models/upernet_vit-ibot_deconv.py',
    './_base_/datasets/ade20k-512x512.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]
optim_wrapper = dict(optimizer=dict(lr=3e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
train_dataloader = dict(batch_size=4)
