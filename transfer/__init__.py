"""Transfer evaluation of pretrained backbones: fine-tuning, k-NN and linear probing, and the leaderboard.

Modules: ``datasets`` (readers, no downloads), ``transforms``, ``loaders``, ``features`` (frozen features,
cached), ``knn`` / ``linear`` / ``finetune`` (the protocols), ``recipes`` + ``configs/`` (one recipe table per
data set), ``backbone`` (strict loading, checkpoint hash), ``session`` / ``state`` / ``runtime`` /
``distributed`` (run scaffolding: torchrun, AMP, seeds, resumption), ``results`` / ``leaderboard`` /
``references`` (result JSONs and tables), ``bench`` (throughput), ``subset`` (smoke-test subsets), ``cli``.
"""
