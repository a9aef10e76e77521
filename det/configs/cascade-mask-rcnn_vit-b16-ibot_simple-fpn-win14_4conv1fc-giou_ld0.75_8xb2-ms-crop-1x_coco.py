# Alternative (not a paper recipe): iBOT ViT-B/16 with the ViTDet-style simple feature pyramid built from the last
# block only (LN2d, 256 channels, 5 levels), and windowed attention (14x14 patches) in all blocks except
# 2, 5, 8, 11, which keeps memory flat for large inputs. Everything else as the deconv-pyramid 1x config.
_base_ = './cascade-mask-rcnn_vit-b16-ibot_deconv-fpn_4conv1fc-giou_ld0.75_8xb2-ms-crop-1x_coco.py'
model = dict(
    backbone=dict(out_indices=(11,), pyramid=None, window_size=14,
                  window_block_indices=(0, 1, 3, 4, 6, 7, 9, 10)),
    neck=dict(_delete_=True, type='SimpleFeaturePyramid', in_channels=768, out_channels=256,
              scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs=5, norm_cfg=dict(type='LN2d')))
