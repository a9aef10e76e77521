"""Stanford Cars: 8,144 train / 8,041 test images, 196 classes."""

DATA = dict(name="cars", num_classes=196)

# iBOT run.sh (--data_set Cars): DeiT recipe, 1000 epochs, lr 7.5e-5 per 512 images (10x the CIFAR lr).
FINETUNE = dict(epochs=1000, optim=dict(lr=7.5e-5))
FINETUNE_BY_ARCH: dict = {}
