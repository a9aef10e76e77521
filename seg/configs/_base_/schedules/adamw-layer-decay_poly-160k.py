# iBOT segmentation optimisation on mmseg's 160k schedule: AdamW (lr set per config), wd 0.05, layer-wise lr decay
# (rate per config), 1,500-iteration linear warm-up from 1e-6, then poly (power 1, to 0) until 160k iterations.
# fp32 by default; `tools/train.py --amp [fp16|bf16]` switches to mmengine's AmpOptimWrapper (the paper used apex
# O1 fp16).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

max_iters = 160000
optimizer = dict(_delete_=True, type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05)  # unused alias
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9),
    optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
default_hooks = dict(checkpoint=dict(max_keep_ckpts=3))
