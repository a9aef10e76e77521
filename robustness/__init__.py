"""Robustness evaluation: ImageNet-C (released or on the fly), occlusion, background shift, OOD sets, and dense
(COCO-C / ADE20K-C) robustness, with resumable result files and Markdown / HTML / JSON reports.

Entry point: ``python -m robustness.cli {imagenet-c,occlusion,backgrounds,ood,dense,report} ...`` (also
``tools/robustness_eval.py``, ``tools/robustness_dense.py``, ``tools/robustness_report.py``). Python API: build cells
with :mod:`robustness.imagenet_c`, :mod:`robustness.occlusion`, :mod:`robustness.backgrounds`, :mod:`robustness.ood`;
evaluate any classifier with :func:`robustness.engine.run_cells`; metrics in :mod:`robustness.metrics`.
:mod:`robustness.dense` needs mmdet / mmseg and is not imported here.
"""
from .classifier import BackboneWithLinearHead, ImageClassifier, build_ibot_linear_classifier
from .engine import Cell, run_cells
from .store import ResultStore

__all__ = ["BackboneWithLinearHead", "Cell", "ImageClassifier", "ResultStore", "build_ibot_linear_classifier",
           "run_cells"]
