"""CIFAR-100: 50,000 train / 10,000 test images (32x32, upsampled to 224), 100 fine classes."""

DATA = dict(name="cifar100", num_classes=100)

# iBOT run.sh (--data_set CIFAR): DeiT recipe, 1000 epochs, lr 7.5e-6 per 512 images.
FINETUNE = dict(epochs=1000, optim=dict(lr=7.5e-6))
FINETUNE_BY_ARCH: dict = {}
