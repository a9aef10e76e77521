# Cascade Mask R-CNN with an iBOT ViT, as in iBOT's evaluation/object_detection (mmdet 2.11 fork) ported to
# mmdet 3: ViT blocks (3, 5, 7, 11) -> deconv pyramid (strides 4/8/16/32, SyncBN) -> FPN(256, 5 levels) -> RPN ->
# 3 cascade stages of 4conv1fc box heads (SyncBN, GIoU loss weight 10, decoded-box regression) + FCN mask head.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'

custom_imports = dict(imports=['det'], allow_failed_imports=False)

embed_dim = 384  # ViT-S; the ViT-B configs override it
# Backbone weights: our pre-training checkpoint, an official iBOT/DINO full or backbone checkpoint, or timm weights
# (see docs). Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH; full checkpoints that pickle
# objects need --trust-checkpoint (or convert them once with tools/convert_checkpoint.py).
pretrained = 'pretrained/ibot_vit_small_16_teacher.pth'

box_head = dict(
    type='ConvFCBBoxHead',
    num_shared_convs=4,
    num_shared_fcs=1,
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


def _stage(stds):  # noqa: E302  (mmengine configs may define helpers; they are not kept in the config)
    return dict(box_head, bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                          target_stds=stds))


model = dict(
    backbone=dict(
        _delete_=True,
        type='iBOTViTBackbone',
        arch='vit_small',
        img_size=(800, 1008),  # pos_embed grid stored in the model; resized again to every input at run time
        patch_size=16,
        drop_path_rate=0.1,
        out_indices=None,  # (3, 5, 7, 11) for 12 blocks, scaled for other depths
        out_with_norm=False,
        pyramid='deconv',
        pyramid_norm_cfg=dict(type='SyncBN', requires_grad=True),
        grad_checkpointing=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, checkpoint_key=None)),
    neck=dict(type='FPN', in_channels=[embed_dim] * 4, out_channels=256, num_outs=5),
    roi_head=dict(bbox_head=[
        _stage([0.1, 0.1, 0.2, 0.2]),
        _stage([0.05, 0.05, 0.1, 0.1]),
        _stage([0.033, 0.033, 0.067, 0.067]),
    ]))
