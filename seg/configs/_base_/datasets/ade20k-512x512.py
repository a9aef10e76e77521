# ADE20K (SceneParse150) as mmseg's ade20k.py (512x512 crops, ratio 0.5-2.0 of 2048x512, photometric distortion).
# Data root: --data-root DIR on tools/train.py / tools/test.py, or --cfg-options.
_base_ = 'mmseg::_base_/datasets/ade20k.py'

data_root = 'data/ade/ADEChallengeData2016'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
