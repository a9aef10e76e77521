"""Transfer evaluation of pretrained backbones: fine-tuning, k-NN and linear probing, and the leaderboard.

Modules: ``datasets`` (readers, no downloads), ``transforms``, ``loaders``, ``features`` (frozen-feature
extraction and cache; the feature definition is ``ibot.features``), ``knn`` / ``linear`` / ``finetune`` (the
protocols), ``recipes`` + ``configs/`` (one recipe table per data set), ``backbone`` (``ibot.checkpoint.load_backbone``
and the result's model description), ``session`` / ``state`` / ``runtime`` (run scaffolding: torchrun via
``ibot.distributed``, AMP, seeds, resumption), ``results`` / ``leaderboard`` / ``references`` (result records via
``ibot.records``, tables via ``ibot.report``), ``bench`` (throughput), ``subset`` (smoke-test subsets), ``cli``
(``python -m transfer.cli knn|linear|finetune ...``).
"""
