# A tiny configuration for tests and the CPU demo: 2-block ViT on 32 px crops (patch 8),
# 2 global + 2 local crops, small heads. Same algorithm, toy sizes.
_base_ = ["./_base_/default.py"]
model = dict(
    arch="vit_tiny", patch_size=8, img_size=32, drop_path_rate=0.0,
    out_dim=256, patch_out_dim=256, shared_head=True, norm_last_layer=False,
    head_hidden_dim=128, head_bottleneck_dim=64,
    vit_overrides=dict(embed_dim=64, depth=2, num_heads=2),
)
loss = dict(teacher_temp=0.07, warmup_teacher_temp_epochs=1)
masking = dict(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
augmentation = dict(local_crops_number=2, global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25),
                    global_crop_size=32, local_crop_size=16)
data = dict(root="../shared/data/cifar10/test", batch_size_per_gpu=8, num_workers=0)
optim = dict(warmup_epochs=1)
train = dict(epochs=2, amp=None)
checkpoint = dict(interval_iters=5, keep_last=2)
log = dict(interval=2, tensorboard=False)
