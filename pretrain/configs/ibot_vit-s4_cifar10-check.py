# The learning check of the pretraining issue (benchmarks/learning_check.py): ViT-S with 4-pixel patches on
# 32-pixel CIFAR-10 images (8 x 8 tokens, as DINO/iBOT CIFAR runs do), a 10-minute budget on one H100.
# Short-schedule settings that keep a small data set from collapsing (measured on the demo: see
# ibot_vit-tiny_demo.py): a sharp, constant teacher temperature and a normalised last layer.
_base_ = ["./_base_/default.py"]
model = dict(arch="vit_small", patch_size=4, img_size=32, drop_path_rate=0.1,
             out_dim=4096, patch_out_dim=4096, shared_head=True, norm_last_layer=True)
loss = dict(teacher_temp=0.04, warmup_teacher_temp_epochs=0)
masking = dict(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
augmentation = dict(local_crops_number=6, global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25),
                    global_crop_size=32, local_crop_size=16)
data = dict(root=None, batch_size_per_gpu=256, num_workers=12)
optim = dict(lr=5e-4, warmup_epochs=5, momentum_teacher=0.99)
train = dict(epochs=60, amp="bf16")
checkpoint = dict(interval_iters=0, keep_last=1)
log = dict(interval=20, tensorboard=False)
