# Defaults = the official main_ibot.py argparse defaults (bytedance/ibot @ da316d8).
model = dict(
    arch="vit_small", patch_size=16, img_size=224, drop_path_rate=0.1,
    out_dim=8192, patch_out_dim=8192, shared_head=False, shared_head_teacher=True,
    norm_last_layer=True, grad_checkpointing=False, head_hidden_dim=2048, head_bottleneck_dim=256,
    vit_overrides=dict(),  # e.g. dict(embed_dim=64, depth=2, num_heads=2) for toy models
)
loss = dict(
    warmup_teacher_temp=0.04, teacher_temp=0.04,
    warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07,
    warmup_teacher_temp_epochs=30, lambda1=1.0, lambda2=1.0,
)
masking = dict(pred_ratio=0.3, pred_ratio_var=0.0, pred_shape="block", pred_start_epoch=0)
augmentation = dict(
    global_crops_number=2, local_crops_number=0,
    global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.4),
    global_crop_size=224, local_crop_size=96,
)
data = dict(
    root="data/imagenet/train",  # ImageNet layout train/<class>/*.JPEG, or layout='flat'
    layout="imagefolder",
    batch_size_per_gpu=128,
    num_workers=10,
    on_bad_file="skip",  # or 'fail'
    # True: workers only decode (longer side 8/7 x global crop, padded); crops, jitter, blur and
    # solarisation run batched on the device (pretrain/gpu_augment.py, kornia) with the official
    # per-image distributions. False: the official per-image PIL transforms in the workers.
    gpu_augment=False,
)
optim = dict(
    lr=5e-4,  # scaled by total batch / 256
    min_lr=1e-6, warmup_epochs=10,
    weight_decay=0.04, weight_decay_end=0.4,
    momentum_teacher=0.996,
    clip_grad=3.0, freeze_last_layer=1,
)
train = dict(
    epochs=100, seed=0,
    amp="bf16",  # 'bf16' | 'fp16' (GradScaler) | None (fp32); CPU runs fall back to fp32
    compile=False,
    head_on_masked_only=True,
    # 'ddp': full replicas per process | 'fsdp': FSDP2 shards weights, gradients and optimizer state
    # (same losses and checkpoint files; resume under either)
    parallel="ddp",
)
checkpoint = dict(interval_iters=0, keep_last=2, saveckp_freq=40)  # interval 0: at epoch ends only
log = dict(interval=10, tensorboard=True)
# Optional k-NN monitor of the teacher on a labelled folder root/<train_split|val_split>/<class>/*,
# e.g. --cfg-options monitor.knn.root=/data/imagenet-100 monitor.knn.interval_epochs=10 (root None: off).
monitor = dict(knn=dict(root=None, img_size=224, train_split="train", val_split="val", k=20,
                        temperature=0.07, batch_size=128, num_workers=4, interval_epochs=10))
