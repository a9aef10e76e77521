# Demo scale, not a paper recipe: the iBOT Cascade Mask R-CNN (deconv pyramid, FPN, 4conv1fc GIoU box heads,
# layer-wise lr decay) at toy widths on the suite's generated scenes (`ibot.scenes`: 128 px JPEGs, 8 shape classes,
# COCO json with RLE masks). Used by tools/evaluate_backbone.py through transfer/configs/suite_scenes.py and by
# tools/demo.sh. The backbone defaults to the demo's ViT (96-d, 4 blocks, patch 8); the suite sets the backbone
# shape and the neck's input widths from the checkpoint it evaluates. Data root: --data-root <scenes>/coco.
_base_ = [
    './_base_/models/cascade-mask-rcnn_vit-ibot_deconv-fpn_4conv1fc-giou.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
]

data_root = 'data/scenes/coco/'
# ibot.scenes class order (alphabetical; COCO category_id = index + 1)
classes = ('cross', 'disk', 'ellipse', 'hexagon', 'ring', 'square', 'star', 'triangle')
num_classes = len(classes)
embed_dim = 96
width = 64  # FPN / head channels (the paper recipe: 256)
max_epochs = 3  # a CPU demo budget: raise it with --cfg-options train_cfg.max_epochs=N on a GPU


def _stage(stds):  # noqa: E302  (a helper of this config; mmengine does not keep it)
    return dict(type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=width,
                conv_out_channels=width, fc_out_channels=4 * width, roi_feat_size=7, num_classes=num_classes,
                reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


def _rcnn_train(iou):  # noqa: E302  (mmdet's cascade stage with 64 sampled RoIs instead of 512)
    return dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False)


model = dict(
    backbone=dict(arch='vit_tiny', embed_dim=embed_dim, depth=4, num_heads=3, patch_size=8, img_size=(128, 128),
                  drop_path_rate=0.0),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width,
                  # objects are 16-50 px: anchors of 16-128 px on strides 4-64
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=[_stage([0.1, 0.1, 0.2, 0.2]), _stage([0.05, 0.05, 0.1, 0.1]),
                   _stage([0.033, 0.033, 0.067, 0.067])],
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=[_rcnn_train(0.5), _rcnn_train(0.6), _rcnn_train(0.7)]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(112, 112), (128, 128), (144, 144)], keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train.json', data_prefix=dict(img='images/train/'),
                 metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val.json', data_prefix=dict(img='images/val/'),
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# AdamW + layer decay as the recipe, a higher lr for the short schedule, 20-iteration warm-up, one step at 3/4
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3 * max_epochs // 4], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.8),
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
