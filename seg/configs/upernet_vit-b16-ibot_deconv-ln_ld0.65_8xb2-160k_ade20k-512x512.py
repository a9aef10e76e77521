# iBOT ViT-B/16, UperNet, ADE20K 160k (iBOT README: 8 GPUs x 2 images, lr 8e-5, layer decay 0.65, out_with_norm).
# Paper (Table 6): 50.0 mIoU.
_base_ = [
    './_base_/models/upernet_vit-ibot_deconv.py',
    './_base_/datasets/ade20k-512x512.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]
embed_dim = 768
pretrained = 'pretrained/ibot_vit_base_16_teacher.pth'
model = dict(
    backbone=dict(arch='vit_base', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
    auxiliary_head=dict(in_channels=embed_dim))
optim_wrapper = dict(optimizer=dict(lr=8e-5), paramwise_cfg=dict(layer_decay_rate=0.65))
train_dataloader = dict(batch_size=2)
