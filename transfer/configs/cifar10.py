"""CIFAR-10: 50,000 train / 10,000 test images (32x32, upsampled to 224), 10 classes."""

DATA = dict(name="cifar10", num_classes=10)

# iBOT run.sh: DeiT recipe, 1000 epochs, lr 7.5e-6 per 512 images. ViT-S/16 and ViT-B/16 share it.
FINETUNE = dict(epochs=1000, optim=dict(lr=7.5e-6))
FINETUNE_BY_ARCH: dict = {}
