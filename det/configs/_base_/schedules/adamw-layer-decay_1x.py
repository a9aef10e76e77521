# iBOT detection optimisation: AdamW lr 1e-4, wd 0.05, layer-wise lr decay (rate set per config), 500-iteration
# linear warm-up, steps at epochs 8 and 11 of 12. fp32 by default; `tools/train.py --amp [fp16|bf16]` switches to
# mmengine's AmpOptimWrapper (the paper used apex O1 fp16).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.75),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
