"""Any ImageFolder data set (<root>/<split>/<class>/*); the class count is read from the folders."""

DATA = dict(name="imagefolder", num_classes=None)

# No published recipe: the CIFAR settings (DeiT recipe, lr 7.5e-6 per 512 images); set epochs for the data size.
FINETUNE = dict(epochs=1000, optim=dict(lr=7.5e-6))
FINETUNE_BY_ARCH: dict = {}
