"""Published reference numbers the leaderboard can print beside measured rows (always with their citation).

Values are top-1 (%) as the sources state them; the column keys are (data set, protocol) as in result files.
"""
from __future__ import annotations

IBOT_PAPER = ("Zhou et al., \"iBOT: Image BERT Pre-Training with Online Tokenizer\", ICLR 2022 "
              "(arXiv:2111.07832): Table 7 (transfer fine-tuning); ImageNet-1k k-NN / linear from Table 1 and the "
              "official README")

#: One dict per reference row: name, params, pretraining data, source, and {(dataset, protocol): top-1}.
REFERENCE_ROWS = [
    dict(name="iBOT ViT-S/16 (paper)", params=21_000_000, pretrain_data="IN-1k", source=IBOT_PAPER,
         cells={("cifar10", "finetune"): 99.1, ("cifar100", "finetune"): 90.7, ("flowers102", "finetune"): 98.6,
                ("cars", "finetune"): 94.0, ("inat2018", "finetune"): 73.7, ("inat2019", "finetune"): 78.5,
                ("imagenet", "knn"): 75.2, ("imagenet", "linear"): 77.9}),
    dict(name="iBOT ViT-B/16 (paper)", params=85_000_000, pretrain_data="IN-1k", source=IBOT_PAPER,
         cells={("cifar10", "finetune"): 99.2, ("cifar100", "finetune"): 92.2, ("flowers102", "finetune"): 98.9,
                ("cars", "finetune"): 94.3, ("inat2018", "finetune"): 74.6, ("inat2019", "finetune"): 79.6,
                ("imagenet", "knn"): 77.1, ("imagenet", "linear"): 79.5}),
]
