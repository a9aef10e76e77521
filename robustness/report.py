"""Robustness reports: result files of one or several models -> Markdown, a self-contained HTML page, a JSON summary.

Tables follow the field's formats: ``Model | Clean err | mCE | rel. mCE`` (Hendrycks & Dietterich; hendrycks/robustness
README), IN-9 variant accuracies with BG-Gap (Xiao et al.), occlusion accuracy per information loss (Naseer et al.),
``Model | P | mPC | rPC`` (Michaelis et al.). Plots (matplotlib, Agg): error vs severity per corruption, occlusion
curves, background-variant bars, dense metric vs severity. The page is built once with :class:`ibot.report.Page`
(the suite's report kit): the HTML file embeds every plot as a base64 PNG, so it is one file that can be mailed or
archived; the Markdown file references the same PNGs written next to it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from ibot.records import RecordError, schema_tag, write_record
from ibot.report import Page

from . import backgrounds, imagenet_c, occlusion, ood
from .metrics import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
from .store import load_results

__all__ = ["SUMMARY_SCHEMA", "build_report", "summarize_results"]

#: Schema tag of ``summary.json`` (the :mod:`ibot.records` convention).
SUMMARY_SCHEMA: Final = schema_tag("robustness-summary", 1)

_VARIANT_TITLES = {"original": "Original", "only_fg": "Only-FG", "mixed_same": "Mixed-Same", "mixed_rand": "Mixed-Rand",
                   "mixed_next": "Mixed-Next", "no_fg": "No-FG", "only_bg_b": "Only-BG-B", "only_bg_t": "Only-BG-T"}
_OOD_TITLES = {"imagenet_a": "IN-A", "imagenet_r": "IN-R", "imagenet_sketch": "IN-Sketch"}
_SHORT = {"gaussian_noise": "Gauss", "shot_noise": "Shot", "impulse_noise": "Impulse", "defocus_blur": "Defocus",
          "glass_blur": "Glass", "motion_blur": "Motion", "zoom_blur": "Zoom", "snow": "Snow", "frost": "Frost",
          "fog": "Fog", "brightness": "Bright", "contrast": "Contrast", "elastic_transform": "Elastic",
          "pixelate": "Pixel", "jpeg_compression": "JPEG", "speckle_noise": "Speckle", "gaussian_blur": "G-Blur",
          "spatter": "Spatter", "saturate": "Saturate"}


# ------------------------------------------------------------------------------------------------ summaries
def summarize_results(data: Mapping[str, Any], *, baseline: Mapping[str, Any] | None = None) -> dict:
    """Summary of one result file (see :mod:`robustness.store`); ``baseline``: another result file whose
    ``imagenet_c`` cells normalise CE instead of the published AlexNet errors."""
    groups = data.get("groups", {})
    out: dict[str, Any] = {"model": data.get("model"), "meta": data.get("meta", {})}
    if imagenet_c.GROUP in groups:
        kw = {}
        if baseline is not None:
            base, base_clean = imagenet_c.baseline_from_cells(baseline["groups"][imagenet_c.GROUP]["cells"])
            kw = dict(baseline=base, baseline_clean_err=base_clean)
        s = imagenet_c.summarize(groups[imagenet_c.GROUP]["cells"], **kw)
        if baseline is not None:
            s["baseline"] = f"{_one_line(baseline.get('model'))} (evaluated in this harness)"
        s["config"] = groups[imagenet_c.GROUP].get("config", {})
        s["dataset"] = imagenet_c.dataset_of(s["config"])
        s["ce_shown"] = baseline is not None or s["dataset"] == "imagenet"
        if not s["ce_shown"]:
            _hide_ce(s)
        out["imagenet_c"] = s
    if occlusion.GROUP in groups:
        out["occlusion"] = occlusion.summarize(groups[occlusion.GROUP]["cells"])
        out["occlusion"]["config"] = groups[occlusion.GROUP].get("config", {})
    if backgrounds.GROUP in groups:
        out["backgrounds"] = backgrounds.summarize(groups[backgrounds.GROUP]["cells"])
        out["backgrounds"]["config"] = groups[backgrounds.GROUP].get("config", {})
    if ood.GROUP in groups:
        out["ood"] = ood.summarize(groups[ood.GROUP]["cells"])
    for task in ("det_c", "seg_c"):
        if task in groups and "clean" in groups[task]["cells"]:
            from . import dense  # needs mmcv / mmengine: imported only for files with dense results

            out[task] = dense.summarize(groups[task]["cells"], task)
    return out


def _hide_ce(s: dict) -> None:
    """Drop the AlexNet-normalised numbers of an ImageNet-C summary whose data is not ImageNet (or not known to be):
    AlexNet's ImageNet-C errors normalise nothing else."""
    s["mce"] = s["relative_mce"] = None
    s["ce"], s["relative_ce"] = {}, {}
    s["extra"]["ce"] = {}
    s["baseline"] = ("– (data set not recorded)" if s["dataset"] is None else "– (not ImageNet data)")


# ------------------------------------------------------------------------------------------------ formatting
def _one_line(text: Any) -> str:
    """Text from a result file (a model name, a config value) for display: control characters and line breaks become
    spaces, runs of whitespace one space (a name cannot start a heading, list or table row in the Markdown page;
    ``|``, ``<`` and ``>`` are escaped by :class:`ibot.report.Page`)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())


def _label(s: Mapping[str, Any]) -> str:
    """The display name of a model summary."""
    return _one_line(s["model"])


def _plot_label(text: str) -> str:
    """A legend label shown literally: ``$`` would start matplotlib mathtext, a leading ``_`` hides the entry."""
    text = _one_line(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100.0 * x:.{digits}f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid_plot(series: Mapping[str, Mapping[str, Mapping[str, float]]], names: Sequence[str], ylabel: str,
               title: str, percent: bool = True, clean: Mapping[str, float | None] | None = None):
    """One subplot per corruption: value vs severity, one line per model (``series[model][corruption][sev]``),
    with the model's clean value as a dotted line of the same colour."""
    plt = _plt()
    names = [n for n in names if any(n in s for s in series.values())]
    cols = min(5, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        for model, per_c in series.items():
            if name not in per_c:
                continue
            pts = sorted((int(s), v) for s, v in per_c[name].items())
            scale = 100.0 if percent else 1.0
            (line,) = ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o", ms=3,
                              label=_plot_label(model))
            ref = (clean or {}).get(model)
            if ref is not None:
                ax.axhline(scale * ref, color=line.get_color(), ls=":", lw=1)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xticks([1, 2, 3, 4, 5])
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1, :]:
        ax.set_xlabel("severity")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(title)
    # fixed margins instead of tight_layout: a 19-panel figure would be drawn twice (slow on a busy CPU)
    legend_rows = -(-len(labels) // 4) if handles else 0
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.8 / (2.4 * rows), hspace=0.55, wspace=0.08,
                        bottom=(0.55 + 0.25 * legend_rows) / (2.4 * rows))
    return fig


# ------------------------------------------------------------------------------------------------ sections
def _headline_columns(s: dict) -> dict[str, str]:
    """The one-row-per-model overview (the layout of iBOT's Table 8, plus dense rPC)."""
    cols: dict[str, str] = {}
    if "imagenet_c" in s:
        c = s["imagenet_c"]
        cols.update({"Clean err": _pct(c["clean_err"]), "mCE ↓": _num(c["mce"]),
                     "rel. mCE ↓": _num(c["relative_mce"])})
    for mode, title in (("random", "Occl. random"), ("salient", "Occl. salient"), ("non_salient", "Occl. non-sal.")):
        curve = s.get("occlusion", {}).get("curves", {}).get(mode)
        if curve and 0.5 in curve["level"]:
            cols[f"{title} @0.5"] = _pct(curve["acc"][curve["level"].index(0.5)])
    if "backgrounds" in s:
        for v in ("original", "mixed_same", "mixed_rand"):
            if v in s["backgrounds"]["acc"]:
                cols[_VARIANT_TITLES[v]] = _pct(s["backgrounds"]["acc"][v])
        cols["BG-Gap"] = _pct(s["backgrounds"]["bg_gap"])
    for k, v in s.get("ood", {}).get("acc", {}).items():
        cols[_OOD_TITLES[k]] = _pct(v)
    for task in ("det_c", "seg_c"):
        for metric, d in s.get(task, {}).items():
            name = metric.split("/")[-1]
            cols[f"{name} P / mPC / rPC"] = f"{_num(d['P'], 3)} / {_num(d['mPC'], 3)} / {_num(d['rPC'])}"
    return cols


def _section_overview(page: Page, summaries: Sequence[dict]) -> None:
    per_model = [_headline_columns(s) for s in summaries]
    header = list(dict.fromkeys(k for cols in per_model for k in cols))
    if not header:
        return
    page.heading("Overview")
    page.table(["Model"] + header, [[_label(s)] + [cols.get(h, "–") for h in header]
                                   for s, cols in zip(summaries, per_model)])
    page.para("Accuracies and errors in %; occlusion at information loss 0.5; ↓ = lower is better. Details and "
             "protocol notes in the sections below.")


def _section_imagenet_c(page: Page, summaries: Sequence[dict]) -> None:
    models = [s for s in summaries if "imagenet_c" in s]
    if not models:
        return
    page.heading("ImageNet-C")
    counts = {s["imagenet_c"].get("n_cells", 0) for s in models}
    one_count = len(counts) == 1
    cells_header = f"mean err ({counts.pop()} cells)" if one_count else "mean err (n cells)"
    rows = []
    for s in models:
        c = s["imagenet_c"]
        subset = _pct(c.get("mean_err_cells"))
        if not one_count and c.get("mean_err_cells") is not None:
            subset += f" ({c.get('n_cells', 0)})"
        rows.append([_label(s), _pct(c["clean_err"]), _num(c["mce"]), _num(c["relative_mce"]),
                     _pct(c["mean_err_15"]), _pct(c["mean_err_19"]), subset, c["baseline"]])
    page.table(["Model", "Clean err", "mCE", "rel. mCE", "mean err (15)", "mean err (19)", cells_header,
                "CE normalised by"], rows)
    page.para("Errors are top-1 in %. mCE = mean over the 15 benchmark corruptions of CE_c = 100 · mean_s err / "
             "AlexNet err_c (lower is better; '–' when not all 15 × 5 cells were evaluated). 'mean err (15)' and "
             "'(19)' are the un-normalised means over all 15 / 19 corruptions × severities 1–5 that hendrycks' and "
             "iBOT's scripts print ('–' unless every one of those cells was evaluated); the 'cells' column is the "
             "mean over the corruption × severity cells that were evaluated, whatever subset ran (not comparable "
             "with published numbers). Corruptions computed on the fly differ from the released ImageNet-C JPEGs; "
             "normalise by an AlexNet evaluated the same way (--baseline) for a like-for-like CE.")
    hidden = [s for s in models if not s["imagenet_c"].get("ce_shown", True)]
    if hidden:
        page.para("CE, mCE and relative mCE are not shown ('–') for " + ", ".join(_label(s) for s in hidden)
                  + ": they are normalised by AlexNet's ImageNet-C errors, which describe ImageNet only, and the "
                  "result file does not say the data is ImageNet (imagenet-c records 'dataset': 'imagenet' for the "
                  "released ImageNet-C folders and for WordNet-id class folders, or when run with --dataset "
                  "imagenet). To compare on other data, evaluate a baseline model the same way and pass its result "
                  "file to report --baseline."
                  + (" A file written before the data set was recorded ('data set not recorded') records it when the "
                     "same imagenet-c command is run again (stored cells are not recomputed)."
                     if any(s["imagenet_c"].get("dataset") is None for s in hidden) else ""))
    present = [c for c in BENCHMARK_CORRUPTIONS if any(c in s["imagenet_c"]["corruption_err"] for s in models)]
    page.table(["Model (err %)"] + [_SHORT[c] for c in present],
              [[_label(s)] + [_pct(s["imagenet_c"]["corruption_err"].get(c)) for c in present] for s in models])
    if any(s["imagenet_c"]["ce"] for s in models):
        page.table(["Model (CE)"] + [_SHORT[c] for c in present],
                  [[_label(s)] + [_num(s["imagenet_c"]["ce"].get(c)) for c in present] for s in models])
    extra = [c for c in EXTRA_CORRUPTIONS if any(c in s["imagenet_c"]["extra"]["corruption_err"] for s in models)]
    if extra:
        page.heading("Extra (hold-out) corruptions — not part of mCE", 3)
        page.table(["Model (err %)"] + [_SHORT[c] for c in extra] + ["mean"],
                  [[_label(s)] + [_pct(s["imagenet_c"]["extra"]["corruption_err"].get(c)) for c in extra]
                   + [_pct(s["imagenet_c"]["extra"]["mean_err"])] for s in models])
    series = {_label(s): s["imagenet_c"]["errors"] for s in models}
    clean = {_label(s): s["imagenet_c"]["clean_err"] for s in models}
    page.figure(_grid_plot(series, ALL_CORRUPTIONS, "top-1 err (%)", "ImageNet-C: error vs severity (dotted: clean)",
                          clean=clean),
               "imagenet_c_error_vs_severity", "ImageNet-C top-1 error vs severity, per corruption")


def _section_occlusion(page: Page, summaries: Sequence[dict]) -> None:
    models = [s for s in summaries if "occlusion" in s]
    if not models:
        return
    page.heading("Occlusion (PatchDrop)")
    levels = sorted({lv for s in models for c in s["occlusion"]["curves"].values() for lv in c["level"]})
    rows = []
    for s in models:
        for mode, c in sorted(s["occlusion"]["curves"].items()):
            acc = dict(zip(c["level"], c["acc"]))
            rows.append([_label(s), mode] + [_pct(acc.get(lv)) for lv in levels])
    page.table(["Model", "mode"] + [f"IL {occlusion.format_level(lv)}" for lv in levels], rows)
    cfg = models[0]["occlusion"].get("config", {})
    page.para(f"Top-1 accuracy (%) after dropping a fraction of a {_one_line(cfg.get('grid', '?'))} patch grid "
             f"(information loss, IL). Dropped pixels: {_one_line(cfg.get('fill', '?'))}. salient / non_salient rank "
             "patches by the model's last-block [CLS] attention on the clean image (*_mask: by the foreground mask).")
    page.figure(_occlusion_figure(models, levels), "occlusion_curves", "Occlusion: accuracy vs information loss")


def _occlusion_figure(models: Sequence[dict], levels: Sequence[float]):
    """One panel per mode: accuracy vs information loss, ticks at the evaluated levels labelled exactly."""
    plt = _plt()
    modes = sorted({m for s in models for m in s["occlusion"]["curves"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(3.4 * len(modes), 2.8), squeeze=False, sharey=True)
    ticks = list(levels) if len(levels) <= 6 else list(levels)[::2]  # at most 6 labels: no overlap
    for ax, mode in zip(axes[0], modes):
        for s in models:
            c = s["occlusion"]["curves"].get(mode)
            if c:
                ax.plot(c["info_loss"], [100 * a for a in c["acc"]], marker="o", ms=3,
                        label=_plot_label(_label(s)))
        ax.set_xticks(ticks, [occlusion.format_level(lv) for lv in ticks])
        ax.set_title(mode)
        ax.set_xlabel("information loss")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("top-1 acc (%)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _section_backgrounds(page: Page, summaries: Sequence[dict]) -> None:
    models = [s for s in summaries if "backgrounds" in s]
    if not models:
        return
    page.heading("Background shift (ImageNet-9 variants)")
    variants = [v for v in backgrounds.IN9_VARIANTS if any(v in s["backgrounds"]["acc"] for s in models)]
    page.table(["Model"] + [_VARIANT_TITLES[v] for v in variants] + ["BG-Gap"],
              [[_label(s)] + [_pct(s["backgrounds"]["acc"].get(v)) for v in variants]
               + [_pct(s["backgrounds"]["bg_gap"])] for s in models])
    page.para("Top-1 accuracy (%). BG-Gap = Mixed-Same − Mixed-Rand (percentage points; smaller = less reliance on "
             "background correlations).")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) * max(1, len(models)) ** 0.5), 3.0))
    width = 0.8 / len(models)
    for k, s in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(variants))]
        ax.bar(xs, [100 * s["backgrounds"]["acc"].get(v, float("nan")) for v in variants], width,
               label=_plot_label(_label(s)))
    ax.set_xticks(range(len(variants)), [_VARIANT_TITLES[v] for v in variants], rotation=30, ha="right")
    ax.set_ylabel("top-1 acc (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    page.figure(fig, "background_variants", "Accuracy per background variant")


def _section_ood(page: Page, summaries: Sequence[dict]) -> None:
    models = [s for s in summaries if "ood" in s]
    if not models:
        return
    page.heading("Out-of-distribution test sets")
    sets = [k for k in ood.OOD_SETS if any(k in s["ood"]["acc"] for s in models)]
    page.table(["Model"] + [_OOD_TITLES[k] for k in sets],
              [[_label(s)] + [_pct(s["ood"]["acc"].get(k)) for k in sets] for s in models])
    page.para("Top-1 accuracy (%). IN-A and IN-R: logits restricted to their 200 ImageNet classes.")


def _section_dense(page: Page, summaries: Sequence[dict], task: str, title: str) -> None:
    models = [s for s in summaries if task in s]
    if not models:
        return
    page.heading(title)
    rows = []
    for s in models:
        for metric, d in s[task].items():
            rows.append([_label(s), metric, _num(d["P"], 3), _num(d["mPC"], 3), _num(d["rPC"]),
                         "yes" if d["complete"] else f"no ({d['n_cells']} of 75 cells)"])
    page.table(["Model", "metric", "P", "mPC", "rPC (%)", "all 15 × 5"], rows)
    page.para("P = clean performance, mPC = mean over the 15 benchmark corruptions × severities 1–5, rPC = mPC / P "
             "(Michaelis et al. 2019). Corruptions applied in RGB order right after image loading.")
    metrics = sorted({m for s in models for m in s[task]})
    series: dict[str, Mapping[str, Mapping[str, float]]] = {}
    clean: dict[str, float | None] = {}
    for metric in metrics:
        per = {_label(s): s[task][metric]["per_corruption"] for s in models if metric in s[task]}
        present = [c for c in ALL_CORRUPTIONS if any(c in p for p in per.values())]
        page.table([f"Model ({metric})"] + [_SHORT[c] for c in present],
                  [[m] + [_num(p.get(c), 3) for c in present] for m, p in per.items()])
        for s in models:
            if metric in s[task]:
                label = _label(s) if len(metrics) == 1 else f"{_label(s)} · {_one_line(metric)}"
                series[label] = s[task][metric]["cells"]
                clean[label] = s[task][metric]["P"]
    page.figure(_grid_plot(series, ALL_CORRUPTIONS, "value", f"{title}: metric vs severity (dotted: clean)",
                          percent=False, clean=clean),
               f"{task}_vs_severity", f"{', '.join(metrics)} vs severity, per corruption")


def _summarize_file(path: str | os.PathLike[str], baseline: Mapping[str, Any] | None) -> dict:
    """:func:`summarize_results` of one file; cells that are not what the benchmarks write name the file."""
    data = load_results(path)
    try:
        return summarize_results(data, baseline=baseline)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise RecordError(f"{os.fspath(path)}: its cells cannot be summarised ({type(exc).__name__}: {exc}); the file "
                          "is damaged or was edited by hand: re-run the benchmark with --restart into it, restore it "
                          "from a backup, or leave it out of the report") from exc


def build_report(result_files: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 title: str = "Robustness report", baseline_file: str | os.PathLike[str] | None = None) -> dict:
    """Write ``report.md``, ``report.html``, ``summary.json`` and ``plots/*.png`` to ``out_dir``; return the
    summary. Models appear in the order of ``result_files``."""
    if not result_files:
        raise ValueError("no result files")
    baseline = load_results(baseline_file) if baseline_file is not None else None
    if baseline is not None and not baseline["groups"].get(imagenet_c.GROUP, {}).get("cells"):
        raise RecordError(f"{baseline_file}: key 'groups.{imagenet_c.GROUP}' holds no cells, so it cannot normalise "
                          "ImageNet-C CE; pass the result file of a baseline evaluated with robustness.cli imagenet-c")
    summaries = [_summarize_file(p, baseline) for p in result_files]  # every file read before anything is written
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = _build_page(title, summaries, f"Generated {stamp} from {len(result_files)} result file(s): "
                       + ", ".join(f"{_label(s)}" for s in summaries) + ".")
    out_dir = Path(out_dir)
    page.write(out_dir)
    summary = {"title": title, "generated": stamp, "models": summaries, "plots": list(page.figures),
               "sources": [os.fspath(p) for p in result_files]}
    write_record(out_dir / "summary.json", summary, schema=SUMMARY_SCHEMA)
    return summary


def _build_page(title: str, summaries: Sequence[dict], intro: str) -> Page:
    """Every section, in report order; a section without data adds nothing."""
    page = Page(title)
    page.para(intro)
    _section_overview(page, summaries)
    _section_imagenet_c(page, summaries)
    _section_occlusion(page, summaries)
    _section_backgrounds(page, summaries)
    _section_ood(page, summaries)
    _section_dense(page, summaries, "det_c", "Detection under corruption (COCO-C style)")
    _section_dense(page, summaries, "seg_c", "Segmentation under corruption (ADE20K-C style)")
    return page
