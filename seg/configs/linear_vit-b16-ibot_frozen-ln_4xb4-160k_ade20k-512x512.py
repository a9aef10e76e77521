# iBOT ViT-B/16, frozen backbone + linear head, ADE20K 160k (iBOT README: 4 GPUs x 4 images, lr 8e-4,
# out_with_norm). Paper (Table 6): 38.3 mIoU.
_base_ = [
    './_base_/models/linear_vit-ibot_frozen.py',
    './_base_/datasets/ade20k-512x512.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]
embed_dim = 768
pretrained = 'pretrained/ibot_vit_base_16_teacher.pth'
model = dict(
    backbone=dict(arch='vit_base', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim * 4))
# The backbone is frozen: plain AdamW on the head, no layer decay.
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.05))
train_dataloader = dict(batch_size=4)
