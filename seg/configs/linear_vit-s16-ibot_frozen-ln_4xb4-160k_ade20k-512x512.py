# iBOT ViT-S/16, frozen backbone + linear head, ADE20K 160k. The iBOT README gives this command for ViT-B only;
# this config uses the same settings (lr 8e-4, 4 GPUs x 4 images, out_with_norm).
_base_ = [
    './_base_/models/linear_vit-ibot_frozen.py',
    './_base_/datasets/ade20k-512x512.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.05))
train_dataloader = dict(batch_size=4)
