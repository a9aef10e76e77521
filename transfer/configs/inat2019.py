"""iNaturalist 2019: 265,213 train / 3,030 val (used as test) images, 1,010 classes."""

DATA = dict(name="inat2019", num_classes=1010)

# iBOT run.sh (--data_set INAT19): 360 epochs, random erasing 0.1, lr 7.5e-6 per 512 images (ViT-B);
# the iBOT README gives ViT-S lr 2.5e-5.
FINETUNE = dict(epochs=360, optim=dict(lr=7.5e-6), aug=dict(reprob=0.1))
FINETUNE_BY_ARCH = {"vit_small": dict(optim=dict(lr=2.5e-5))}
