"""Oxford Flowers-102: train = official train + val (2,040 images), test = 6,149 images, 102 classes."""

DATA = dict(name="flowers102", num_classes=102)

# iBOT run.sh (--data_set Flwrs): DeiT recipe, 1000 epochs, lr 7.5e-6 per 512 images.
FINETUNE = dict(epochs=1000, optim=dict(lr=7.5e-6))
FINETUNE_BY_ARCH: dict = {}
