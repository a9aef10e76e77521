# As adamw-layer-decay_1x.py with the 3x schedule of iBOT's released configs: 36 epochs, steps at 27 and 33.
_base_ = './adamw-layer-decay_1x.py'

train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
