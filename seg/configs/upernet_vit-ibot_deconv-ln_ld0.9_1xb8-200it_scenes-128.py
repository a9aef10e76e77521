# Demo scale, not a paper recipe: the iBOT UperNet (deconv pyramid, final LayerNorm on every output, auxiliary FCN
# head 0.4, layer-wise lr decay) at toy widths on the suite's generated scenes (`ibot.scenes`: 128 px JPEGs,
# ADE20K-style label maps, 0 = background -> ignored, 1..8 = shape classes). Used by tools/evaluate_backbone.py
# through transfer/configs/suite_scenes.py and by tools/demo.sh. The backbone defaults to the demo's ViT (96-d,
# 4 blocks, patch 8); the suite sets the backbone shape and the heads' input widths from the checkpoint it
# evaluates. Data root: --data-root <scenes>/ade.
_base_ = [
    './_base_/models/upernet_vit-ibot_deconv.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/adamw-layer-decay_poly-160k.py',
]

data_root = 'data/scenes/ade'
# ibot.scenes class order (alphabetical; label value = index + 1, so reduce_zero_label maps it to the index)
classes = ('cross', 'disk', 'ellipse', 'hexagon', 'ring', 'square', 'star', 'triangle')
embed_dim = 96
width = 64  # UPerHead / FCN channels (the paper recipe: embed_dim)
crop_size = (128, 128)
max_iters = 200  # a CPU demo budget (~1 min on 2 cores with start-up and test): raise it on a GPU

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='vit_tiny', embed_dim=embed_dim, depth=4, num_heads=3, patch_size=8, img_size=crop_size,
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=width, num_classes=len(classes)),
    auxiliary_head=dict(in_channels=embed_dim, channels=width, num_classes=len(classes)),
    test_cfg=dict(mode='whole'))

dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
               reduce_zero_label=True, metainfo=dict(classes=classes))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# AdamW + layer decay as the recipe (poly after a linear warm-up), a higher lr for the short schedule
optim_wrapper = dict(optimizer=dict(lr=4e-4), paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
