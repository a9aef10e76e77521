"""iNaturalist 2018: 437,513 train / 24,426 val (used as test) images, 8,142 classes."""

DATA = dict(name="inat2018", num_classes=8142)

# iBOT run.sh (--data_set INAT): 360 epochs, random erasing 0.1, lr 7.5e-6 per 512 images (ViT-B);
# the iBOT README gives ViT-S lr 5e-5.
FINETUNE = dict(epochs=360, optim=dict(lr=7.5e-6), aug=dict(reprob=0.1))
FINETUNE_BY_ARCH = {"vit_small": dict(optim=dict(lr=5e-5))}
