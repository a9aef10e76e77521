"""Protocol defaults shared by every data set. Sources: iBOT ``run.sh`` / ``eval_cls.py`` (DeiT recipe),
DINO ``eval_knn.py``, iBOT ``eval_linear_multi.py`` (see shared notes ibot-reference §11)."""

#: Settings every protocol has.
COMMON = dict(
    seed=0,
    device="auto",  # 'auto' = cuda:<local rank> when available, else cpu
    amp=None,  # bf16 autocast; None = on for CUDA, off for CPU
    num_workers=8,  # per process
    progress=True,  # tqdm bars on the main process
    output_dir=None,  # None = work_dirs/transfer/<protocol>/<dataset>/<model>/seed<seed>
    data=dict(
        name=None,  # reader: cifar10 | cifar100 | flowers102 | cars | inat2018 | inat2019 | imagefolder
        root=None,
        layout="auto",  # reader-specific: pickle | imagefolder (CIFAR), devkit | annos | imagefolder (Cars)
        num_classes=None,  # checked against the data; None = take the data's
        train_split="train",
        test_split="test",
        tag=None,  # leaderboard column name; None = the reader name (e.g. tag=imagenet for an ImageFolder ImageNet)
    ),
    model=dict(
        # Overrides of the backbone description (None = the checkpoint's description; without a checkpoint
        # vit_small / 16, transfer.backbone.RANDOM_INIT). arch brings its preset shape; embed_dim / depth /
        # num_heads win over it (custom, e.g. tiny test, models).
        arch=None,
        patch_size=None,
        img_size=224,  # transfer input size (the checkpoint's position embedding is resized to it)
        embed_dim=None,
        depth=None,
        num_heads=None,
        pretrained=None,  # checkpoint path (any format ibot.checkpoint understands)
        checkpoint_key=None,  # None = auto (teacher, then student, then wrappers)
        trust_checkpoint=False,  # allow pickled objects (official full checkpoints)
        name=None,  # leaderboard row name; None = '<arch>/<patch> (<checkpoint stem>)' of the description
        pretrain_data=None,  # e.g. 'IN-1k' (leaderboard column)
    ),
)

#: DeiT fine-tuning as iBOT ran it for transfer (``run.sh``: batch 96 per GPU x 8 GPUs).
FINETUNE = dict(
    epochs=1000,
    batch_size=96,  # per process
    drop_path_rate=0.1,
    optim=dict(
        lr=7.5e-6,  # per lr_batch_ref images: lr_eff = lr * batch_size * world_size / lr_batch_ref
        lr_batch_ref=512,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        eps=1e-8,
        layer_decay=None,  # e.g. 0.75: block i gets lr * ld^(depth - i) (BEiT scheme, timm param groups)
        clip_grad=None,  # global grad-norm clip; DeiT default off
    ),
    sched=dict(warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5),  # cosine per epoch (timm CosineLRScheduler)
    aug=dict(
        auto_augment="rand-m9-mstd0.5-inc1",
        color_jitter=0.4,
        interpolation="bicubic",
        reprob=0.25,
        remode="pixel",
        recount=1,
        mixup=0.8,
        cutmix=1.0,
        mixup_prob=1.0,
        mixup_switch_prob=0.5,
        mixup_mode="batch",
        smoothing=0.1,
        repeated_aug=True,  # DeiT RASampler; only under torchrun (several processes)
    ),
    eval_every=1,  # epochs; the last epoch is always evaluated
    report="best",  # 'best' = max test top-1 over evaluated epochs (iBOT/DeiT protocol) or 'last'
)

#: Weighted k-NN on frozen features (DINO / iBOT ``eval_knn.py``).
KNN = dict(
    batch_size=128,
    ks=(10, 20, 100, 200),
    temperature=0.07,
    report_k=20,  # the k whose top-1 is the run's headline metric ("20 is usually working the best")
    feature=dict(n_last_blocks=1, pooling="cls"),  # final-norm [CLS] (ibot.features.FeatureSpec)
    cache=True,  # reuse features from <output_dir>/features/ (keyed by checkpoint hash, data, transform)
)

#: Linear probing: a sweep of heads trained together on one backbone pass per batch (iBOT ``eval_linear_multi``).
LINEAR = dict(
    epochs=100,
    batch_size=128,  # per process
    lrs=tuple(round(m * 10.0**e, 10) for e in range(-4, 1) for m in range(1, 10)),  # 45 lrs, 1e-4 .. 9
    lr_batch_ref=256,  # lr_eff = lr * batch_size * world_size / 256
    momentum=0.9,
    weight_decay=0.0,
    features="auto",  # 'auto' = per-arch preset below, or a list of dict(n_last_blocks=, pooling=) (FeatureSpec)
    train_aug=True,  # DINO protocol (RandomResizedCrop + flip); False = train on cached centre-crop features
    eval_every=1,
    cache=True,  # only used with train_aug=False
)

#: DINO / iBOT linear features: ViT-S concatenates [CLS] of the last 4 blocks, ViT-B/L use the last [CLS]
#: plus the mean patch token.
LINEAR_FEATURES_BY_ARCH = {
    "vit_tiny": [dict(n_last_blocks=4, pooling="cls")],
    "vit_small": [dict(n_last_blocks=4, pooling="cls")],
    "vit_base": [dict(n_last_blocks=1, pooling="cls+avgpool")],
    "vit_large": [dict(n_last_blocks=1, pooling="cls+avgpool")],
}
