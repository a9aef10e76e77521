# ViT-B/16, 400 epochs (paper §3.2 / App. B: AdamW, batch 1024, 10 warm-up epochs, random MIM
# ratio 0 / 0.3 ± 0.2, output dim 8192, shared head; teacher temperatures 0.04 -> 0.07 for [CLS]
# and patches, as quoted from the unpublished args.txt). NOT confirmed by published code: crop
# scales (taken from ViT-S), norm_last_layer (argparse help: "typically True with vit_base"),
# drop_path (0.1, the default), freeze_last_layer (1, the default). Reported: k-NN 77.1, linear 79.5.
_base_ = ["./_base_/default.py"]
model = dict(arch="vit_base", shared_head=True, norm_last_layer=True, out_dim=8192, patch_out_dim=8192)
loss = dict(teacher_temp=0.07, teacher_patch_temp=0.07, warmup_teacher_temp_epochs=30)
masking = dict(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
augmentation = dict(local_crops_number=10, global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25))
data = dict(batch_size_per_gpu=64)  # x 16 GPUs = 1024
train = dict(epochs=400)
