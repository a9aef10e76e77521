# UperNet with an iBOT ViT, as in iBOT's evaluation/semantic_segmentation (mmseg 0.12 fork) ported to mmseg 1:
# ViT blocks (3, 5, 7, 11) (final LayerNorm applied, iBOT README `out_with_norm=true`) -> deconv pyramid (strides
# 4/8/16/32, SyncBN) -> UPerHead (channels = D) + auxiliary FCN head on level 2 (loss weight 0.4); sliding-window
# test 512 / 341.
_base_ = 'mmseg::_base_/models/upernet_r50.py'

custom_imports = dict(imports=['seg'], allow_failed_imports=False)

embed_dim = 384  # ViT-S; the ViT-B configs override it
# Backbone weights (see docs): override with --cfg-options model.backbone.init_cfg.checkpoint=PATH; full
# checkpoints that pickle objects need --trust-checkpoint (or convert them once with tools/convert_checkpoint.py).
pretrained = 'pretrained/ibot_vit_small_16_teacher.pth'
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type='iBOTViTBackbone',
        arch='vit_small',
        img_size=(512, 512),
        patch_size=16,
        drop_path_rate=0.1,
        out_indices=None,  # (3, 5, 7, 11) for 12 blocks, scaled for other depths
        out_with_norm=True,
        pyramid='deconv',
        pyramid_norm_cfg=norm_cfg,
        grad_checkpointing=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, checkpoint_key=None)),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dim, in_index=2, num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
