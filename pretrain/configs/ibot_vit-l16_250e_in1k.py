# ViT-L/16. The paper gives 250 epochs in the text and 300 in Table 15 (unverified which); other
# values as ViT-B (unverified). Gradient checkpointing keeps activations in memory.
_base_ = ["./ibot_vit-b16_400e_in1k.py"]
model = dict(arch="vit_large", drop_path_rate=0.3, grad_checkpointing=True)
data = dict(batch_size_per_gpu=32)  # x 32 GPUs = 1024
# FSDP: DDP keeps the whole student (weights, gradients, two AdamW moments) and teacher on every GPU,
# ~20 bytes x 300M parameters = 6 GB; FSDP shards them over the GPUs (same losses, same checkpoints).
train = dict(epochs=250, parallel="fsdp")
