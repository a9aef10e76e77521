"""Robustness metrics: ImageNet-C CE / mCE / relative mCE, ImageNet-9 BG-gap, dense P / mPC / rPC.

Pure arithmetic on numbers already measured; nothing here touches a model or a data set.

Conventions: errors and accuracies are *fractions* in [0, 1] on input; CE, mCE and relative mCE are returned in
percent of the baseline (AlexNet = 100), as in Hendrycks & Dietterich, ICLR 2019 ("Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", arXiv 1903.12261). Dense metrics (AP, mIoU) are passed through
in whatever unit the evaluator reports; rPC is returned in percent.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALEXNET_CLEAN_ERR",
    "ALEXNET_ERR",
    "BENCHMARK_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "CORRUPTION_GROUPS",
    "SEVERITIES",
    "bg_gap",
    "corruption_errors",
    "dense_summary",
    "expand_corruptions",
    "imagenet_c_summary",
    "mean",
]

#: The 15 ImageNet-C benchmark corruptions, in the order of imagecorruptions' ``corruption_tuple`` (0-14).
BENCHMARK_CORRUPTIONS: Final[tuple[str, ...]] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 extra ("validation" / hold-out) corruptions, reported separately and never part of mCE.
EXTRA_CORRUPTIONS: Final[tuple[str, ...]] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: Final[tuple[str, ...]] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
CORRUPTION_GROUPS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "noise": BENCHMARK_CORRUPTIONS[0:3],
    "blur": BENCHMARK_CORRUPTIONS[3:7],
    "weather": BENCHMARK_CORRUPTIONS[7:11],
    "digital": BENCHMARK_CORRUPTIONS[11:15],
    "extra": EXTRA_CORRUPTIONS,
})
SEVERITIES: Final[tuple[int, ...]] = (1, 2, 3, 4, 5)

#: AlexNet's top-1 error on ImageNet-C, averaged over severities 1-5, per benchmark corruption (fractions).
#: Source: google-research/augmix ``imagenet.py`` @ 9b9824c, ``ALEXNET_ERR`` ("Raw AlexNet errors taken from
#: https://github.com/hendrycks/robustness"), a list in the order of its ``CORRUPTIONS`` list, which equals
#: ``BENCHMARK_CORRUPTIONS``. Keyed by name here so no list order can mismatch (a pitfall seen in public code).
ALEXNET_ERR: Final[Mapping[str, float]] = MappingProxyType({
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
})
#: AlexNet's clean ImageNet top-1 error, for relative mCE. hendrycks/robustness ``ImageNet-C/test.py`` evaluates
#: torchvision's AlexNet; torchvision documents ``AlexNet_Weights.IMAGENET1K_V1`` acc@1 = 56.522 (error 43.478 %),
#: matching the 43.5 % of Hendrycks & Dietterich (2019). Override it when you evaluate AlexNet in this harness.
ALEXNET_CLEAN_ERR: Final[float] = 0.43478


def expand_corruptions(names: Iterable[str]) -> list[str]:
    """Corruption names and groups (``benchmark``, ``extra``, ``all``, ``noise``, ``blur``, ``weather``,
    ``digital``) -> the corruption names, in order, without repeats; raises ``ValueError`` naming the choices."""
    groups = {"benchmark": BENCHMARK_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, "all": ALL_CORRUPTIONS,
              **CORRUPTION_GROUPS}
    out: list[str] = []
    for n in names:
        if n in groups:
            out += groups[n]
        elif n in ALL_CORRUPTIONS:
            out.append(n)
        else:
            raise ValueError(f"unknown corruption or group {n!r}; names: {list(ALL_CORRUPTIONS)}, groups: "
                             f"benchmark, extra, all, {', '.join(CORRUPTION_GROUPS)}")
    return list(dict.fromkeys(out))


def mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def corruption_errors(errors: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Mean error over the severities present, per corruption: ``{c: {s: err}}`` -> ``{c: mean_s err}``."""
    return {c: mean(by_sev.values()) for c, by_sev in errors.items() if by_sev}


def _complete(errors: Mapping[str, Mapping[int, float]], names: Iterable[str]) -> bool:
    return all(set(SEVERITIES) <= set(int(s) for s in errors.get(c, {})) for c in names)


def imagenet_c_summary(
    errors: Mapping[str, Mapping[int, float]],
    clean_err: float | None = None,
    *,
    baseline: Mapping[str, float] = ALEXNET_ERR,
    baseline_clean_err: float | None = ALEXNET_CLEAN_ERR,
) -> dict:
    """ImageNet-C summary from top-1 errors ``{corruption: {severity: error}}`` (fractions).

    * ``CE_c = 100 · mean_s E_{s,c} / baseline_c`` (equal to the sum/sum form of Hendrycks & Dietterich).
    * ``mCE = mean_c CE_c`` over the 15 benchmark corruptions — ``None`` unless all 15 × severities 1-5 are present.
    * ``relative CE_c = 100 · (mean_s E_{s,c} − E_clean) / (baseline_c − baseline_clean)``; relative mCE likewise
      (needs ``clean_err`` and ``baseline_clean_err``).
    * ``mean_err_15`` / ``mean_err_19``: the plain (un-normalised) means over the 15 / all 19 corruptions that
      hendrycks' and iBOT's scripts print as "mCE (unnormalized)" — ``None`` unless all 15 (19) corruptions × severities
      1-5 are present, like mCE (a mean over a subset is not comparable with published numbers).
    * ``mean_err_cells`` / ``n_cells``: the mean error over every evaluated (corruption, severity) cell, benchmark and
      extra, whatever subset ran, and how many cells that is.
    * The 4 extra corruptions are summarised separately (``extra``) and never enter mCE.

    ``baseline`` defaults to :data:`ALEXNET_ERR`; pass another model's per-corruption mean errors (e.g. AlexNet
    evaluated in this harness on the same on-the-fly corruptions) to normalise by that instead.
    """
    per_c = corruption_errors(errors)
    bench = [c for c in BENCHMARK_CORRUPTIONS if c in per_c]
    extra = [c for c in EXTRA_CORRUPTIONS if c in per_c]
    unknown = sorted(set(per_c) - set(ALL_CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption names {unknown}")
    ce = {c: 100.0 * per_c[c] / baseline[c] for c in per_c if c in baseline}
    rel = {}
    if clean_err is not None and baseline_clean_err is not None:
        rel = {c: 100.0 * (per_c[c] - clean_err) / (baseline[c] - baseline_clean_err)
               for c in per_c if c in baseline}
    complete = _complete(errors, BENCHMARK_CORRUPTIONS) and all(c in baseline for c in BENCHMARK_CORRUPTIONS)
    cell_errs = [float(e) for c in ALL_CORRUPTIONS for s, e in errors.get(c, {}).items() if int(s) in SEVERITIES]
    out = {
        "clean_err": clean_err,
        "corruption_err": {c: per_c[c] for c in bench},
        "ce": {c: ce[c] for c in bench if c in ce},
        "relative_ce": {c: rel[c] for c in bench if c in rel},
        "mce": mean(ce[c] for c in BENCHMARK_CORRUPTIONS) if complete else None,
        "relative_mce": (mean(rel[c] for c in BENCHMARK_CORRUPTIONS) if complete and rel else None),
        "mean_err_15": (mean(per_c[c] for c in BENCHMARK_CORRUPTIONS)
                        if _complete(errors, BENCHMARK_CORRUPTIONS) else None),
        "mean_err_19": (mean(per_c[c] for c in ALL_CORRUPTIONS) if _complete(errors, ALL_CORRUPTIONS) else None),
        "mean_err_cells": mean(cell_errs) if cell_errs else None,
        "n_cells": len(cell_errs),
        "complete": complete,
        "n_benchmark_corruptions": len(bench),
        "extra": {
            "corruption_err": {c: per_c[c] for c in extra},
            "ce": {c: ce[c] for c in extra if c in ce},
            "mean_err": mean(per_c[c] for c in extra) if extra else None,
        },
        "groups": {g: mean(per_c[c] for c in names) for g, names in CORRUPTION_GROUPS.items()
                   if names and all(c in per_c for c in names)},
    }
    return out


def bg_gap(mixed_same_acc: float, mixed_rand_acc: float) -> float:
    """Background gap of Xiao et al. (ICLR 2021): accuracy on Mixed-Same minus accuracy on Mixed-Rand."""
    return mixed_same_acc - mixed_rand_acc


def dense_summary(
    clean: float,
    corrupted: Mapping[str, Mapping[int, float]],
) -> dict:
    """P / mPC / rPC of Michaelis et al. 2019 ("Benchmarking Robustness in Object Detection", arXiv 1907.07484).

    ``P`` = clean performance; ``mPC`` = mean over the 15 benchmark corruptions × severities 1-5 of the performance
    under corruption; ``rPC = 100 · mPC / P`` (``None`` when ``P == 0``). Extra corruptions are averaged separately.
    ``mPC`` is computed over the cells present; ``complete`` says whether all 75 were.
    """
    bench_vals = [v for c in BENCHMARK_CORRUPTIONS for s, v in corrupted.get(c, {}).items() if int(s) >= 1]
    extra_vals = [v for c in EXTRA_CORRUPTIONS for s, v in corrupted.get(c, {}).items() if int(s) >= 1]
    unknown = sorted(set(corrupted) - set(ALL_CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption names {unknown}")
    mpc = mean(bench_vals) if bench_vals else None
    return {
        "P": clean,
        "mPC": mpc,
        "rPC": (100.0 * mpc / clean) if (mpc is not None and clean) else None,
        "per_corruption": {c: mean(corrupted[c][s] for s in corrupted[c] if int(s) >= 1)
                           for c in ALL_CORRUPTIONS if corrupted.get(c)},
        "per_severity": {s: mean(corrupted[c][s] for c in BENCHMARK_CORRUPTIONS if s in corrupted.get(c, {}))
                         for s in SEVERITIES if any(s in corrupted.get(c, {}) for c in BENCHMARK_CORRUPTIONS)},
        "extra_mPC": mean(extra_vals) if extra_vals else None,
        "complete": _complete(corrupted, BENCHMARK_CORRUPTIONS),
        "n_cells": len(bench_vals),
    }
