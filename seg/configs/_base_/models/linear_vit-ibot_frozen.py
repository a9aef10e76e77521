# Linear segmentation head on a frozen iBOT ViT (iBOT's configs/linear): the four block outputs (3, 5, 7, 11, final
# LayerNorm applied), resized and concatenated at stride 16 -> BN-free 1x1 convolution to the classes; logits are
# bilinearly upsampled to the label size in the loss and at test time.
_base_ = 'mmseg::_base_/models/upernet_r50.py'

custom_imports = dict(imports=['seg'], allow_failed_imports=False)

embed_dim = 384
pretrained = 'pretrained/ibot_vit_small_16_teacher.pth'

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
        out_indices=None,
        out_with_norm=True,
        pyramid=None,
        frozen_stages=12,  # = depth: everything frozen (forward runs without autograd)
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, checkpoint_key=None)),
    decode_head=dict(
        _delete_=True,
        type='FCNHead',
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        input_transform='resize_concat',
        channels=embed_dim * 4,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None,
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
