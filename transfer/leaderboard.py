"""Leaderboard: result JSONs -> one table, rendered as Markdown, CSV, HTML and LaTeX.

Rows are models (name, parameter count, pretraining data); columns are data set x protocol, then the mean over
columns. A cell is the mean ± sample standard deviation over seeds (the seed count shown when > 1); a missing
cell is "–"; the best value of each column is bold (Markdown ``**``, HTML ``<b>``, LaTeX ``\\textbf``, CSV a
``_best`` flag). The mean column is only filled for rows with every column present (a partial mean would not
compare). With ``references=True`` the paper's rows (``transfer.references``) join, marked † and cited, with
their cells in the shown columns only; a paper row that reports none of the shown columns is left out.

Columns are named by each result's ``dataset.name`` (``data.tag``, else the reader; an ``imagefolder`` run without a
tag is named after its data root's folder, also in result files written before that rule).

Reading aids: a "chance (majority class)" row gives, per column, the top-1 of always predicting the test set's most
frequent class (from the results' ``chance`` section; never marked best, left out when no result has it). When
linear or fine-tune columns are shown, a note says that those cells are the maximum test top-1 over evaluated epochs
(and the linear sweep's heads), with the counts and test-set sizes the results record: a maximum taken on the test
set itself, optimistic on a small one.

Bad input: a result file that cannot be read (truncated, not JSON, a required field missing or mistyped) stops the
tool with an error naming the file (``--skip-invalid``: a warning naming it, and the file is left out of the table
and of the count). A readable record whose metric is not a result (a failed run, ``null`` / NaN, outside [0, 100]:
:func:`transfer.results.metric_problem`) makes its cell "invalid", with a warning naming the file: an invalid cell
holds no number, is never marked best and leaves its row without a mean.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibot.atomic import atomic_write_text
from ibot.report import Page, Strong
from transfer.references import REFERENCE_ROWS
from transfer.results import SCHEMA, ResultFormatError, dataset_column, find_result_files, load_result, metric_problem

__all__ = ["Cell", "Row", "Table", "build_table", "record_dataset", "selected_over", "to_markdown", "to_csv",
           "to_html", "to_latex", "FORMATS", "main"]

log = logging.getLogger(__name__)

Column = tuple[str, str]  # (dataset, protocol)

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "flowers102": "Flowers", "cars": "Cars",
                  "inat2018": "iNat18", "inat2019": "iNat19", "imagenet": "ImageNet"}
PROTOCOL_LABELS = {"knn": "k-NN", "linear": "linear", "finetune": "fine-tune"}
PROTOCOL_ORDER = ("knn", "linear", "finetune")
MISSING = "–"
INVALID = "invalid"
DAGGER = "†"
CHANCE = "chance (majority class)"
#: Protocols whose headline is a maximum over test evaluations (epochs, and the linear sweep's heads).
SELECTED_PROTOCOLS = ("linear", "finetune")


@dataclass
class Cell:
    """One table cell: the headline value of every seed run; ``invalid``: why runs of this cell gave no result
    (any one makes the whole cell invalid: a mean over the remaining seeds would hide the failure)."""

    values: list[float]
    invalid: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether the cell holds a result: at least one value and no invalid run."""
        return bool(self.values) and not self.invalid

    @property
    def n(self) -> int:
        """Seed count."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Row:
    """One model: its cells by (data set, protocol) column; ``reference`` cites a published row."""

    name: str
    params: int | None
    pretrain_data: str
    cells: dict[Column, Cell] = field(default_factory=dict)
    reference: str | None = None  # citation for published rows
    baseline: bool = False  # the chance row: a floor to compare against, never marked best

    def mean(self, columns: Sequence[Column]) -> float | None:
        """Mean of the cell means over ``columns``; ``None`` unless every column is present and valid."""
        if not columns or any(c not in self.cells or not self.cells[c].valid for c in columns):
            return None
        return statistics.fmean(self.cells[c].mean for c in columns)


@dataclass
class Table:
    """Rows x columns, and the metric names each column was built from (to flag mixed metrics)."""

    columns: list[Column]
    rows: list[Row]
    metric_names: dict[Column, list[str]]
    #: per column: how its headline was selected, ``{"heads": H or None, "epochs": E or None, "num_test": N or None}``
    #: for each distinct selection of its records (linear / fine-tune 'best' only)
    selections: dict[Column, list[dict[str, int | None]]] = field(default_factory=dict)

    def best(self) -> dict[Column | str, float]:
        """Highest value per column (and 'mean'), over every row with a valid cell there (not the chance row)."""
        out: dict[Column | str, float] = {}
        for c in self.columns:
            vals = [r.cells[c].mean for r in self.rows if c in r.cells and r.cells[c].valid and not r.baseline]
            if vals:
                out[c] = max(vals)
        means = [m for r in self.rows if not r.baseline and (m := r.mean(self.columns)) is not None]
        if means:
            out["mean"] = max(means)
        return out


def _column_sort_key(col: Column) -> tuple[int, str, int, str]:
    """Known data sets and protocols in display order, unknown ones after them alphabetically."""
    ds, proto = col
    ds_rank = list(DATASET_LABELS).index(ds) if ds in DATASET_LABELS else len(DATASET_LABELS)
    pr_rank = PROTOCOL_ORDER.index(proto) if proto in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return (ds_rank, ds, pr_rank, proto)


def record_dataset(rec: dict[str, Any]) -> str:
    """A record's data-set column: ``dataset.name``, except that an untagged ``imagefolder`` run written before
    columns were named after the data root (``dataset.name == 'imagefolder'``) is named after its root's folder."""
    ds = rec["dataset"]
    name = ds["name"]
    data_cfg = (rec.get("config") or {}).get("data") or {}
    if name == "imagefolder" and ds.get("reader") == "imagefolder" and ds.get("root") and not data_cfg.get("tag"):
        return dataset_column({"name": "imagefolder", "root": ds["root"], "tag": None})
    return name


def selected_over(rec: dict[str, Any]) -> dict[str, int | None] | None:
    """What a record's headline is the maximum over, ``{"heads", "epochs", "num_test"}`` (None = unknown), or
    ``None`` when it is no maximum (k-NN, fine-tuning with ``report='last'``). Taken from ``metric.selected_over``,
    else (older files) from the metrics and history."""
    if rec.get("protocol") not in SELECTED_PROTOCOLS:
        return None
    metric = rec.get("metric") if isinstance(rec.get("metric"), dict) else {}
    config = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    if rec["protocol"] == "finetune" and (config.get("report") == "last"
                                           or str(metric.get("selection", "")).startswith("test top-1 after the last")):
        return None
    stored = metric.get("selected_over") if isinstance(metric.get("selected_over"), dict) else {}
    history = rec.get("history") if isinstance(rec.get("history"), list) else []
    evaluated = sum(1 for h in history if isinstance(h, dict) and "top1" in h) or None
    heads = None
    if rec["protocol"] == "linear":
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
        heads = stored.get("heads") or (len(metrics["heads"]) if isinstance(metrics.get("heads"), list) else None)
    num_test = rec["dataset"].get("num_test") if isinstance(rec.get("dataset"), dict) else None
    return {"heads": heads, "epochs": stored.get("epochs") or evaluated,
            "num_test": num_test if isinstance(num_test, int) else None}


def _chance_value(rec: dict[str, Any]) -> float | None:
    """The record's majority-class top-1 (%), when it has a usable one."""
    chance = rec.get("chance")
    value = chance.get("majority_top1") if isinstance(chance, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
        return None
    return float(value)


def _chance_row(records: Sequence[dict[str, Any]]) -> Row | None:
    """The "chance (majority class)" row: per column, the majority-class top-1 its results recorded (the highest,
    with a warning, when results of one column disagree: they were tested on different sets)."""
    by_col: dict[Column, set[float]] = {}
    for rec in records:
        value = _chance_value(rec)
        if value is not None:
            by_col.setdefault((record_dataset(rec), rec["protocol"]), set()).add(round(value, 6))
    if not by_col:
        return None
    for col, values in by_col.items():
        if len(values) > 1:
            log.warning("column %s: results disagree on the test set's majority-class top-1 (%s): were they tested "
                        "on different test sets? the chance row shows the highest", col, sorted(values))
    return Row(CHANCE, None, MISSING, {c: Cell([max(v)]) for c, v in by_col.items()}, baseline=True)


def build_table(records: Iterable[dict[str, Any]], references: bool = False,
                columns: Sequence[Column] | None = None) -> Table:
    """Group result records into a table.

    Records of the same model, column and seed are duplicates: the one finished last is kept (with a warning).
    A record whose metric is not a result (:func:`transfer.results.metric_problem`) makes its cell invalid, with a
    warning naming its file (``rec['path']`` when the record has one). ``columns`` fixes the columns and their
    order; by default every measured (data set, protocol), or the reference rows' columns when there are no records.
    """
    by_key: dict[tuple[str, Column, int], dict[str, Any]] = {}
    for rec in records:
        key = (rec["model"]["name"], (record_dataset(rec), rec["protocol"]), int(rec["seed"]))
        old = by_key.get(key)
        if old is not None:
            log.warning("duplicate result for model %r, column %s, seed %d: keeping the one finished later", *key)
            if str(old.get("finished", "")) > str(rec.get("finished", "")):
                continue
        by_key[key] = rec
    rows: dict[str, Row] = {}
    metric_names: dict[Column, list[str]] = {}
    for (name, col, seed), rec in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        m = rec["model"]
        row = rows.setdefault(name, Row(name, m.get("params"), m.get("pretrain_data") or "unknown"))
        if m.get("params") is not None and row.params is not None and m["params"] != row.params:
            log.warning("model %r: results disagree on the parameter count (%s vs %s)", name, row.params, m["params"])
        cell = row.cells.setdefault(col, Cell([]))
        problem = metric_problem(rec)
        if problem is None:
            cell.values.append(float(rec["metric"]["value"]))
        else:
            where = f"'{rec['path']}'" if rec.get("path") else f"the record of model {name!r}, column {col}"
            log.warning("%s (seed %d): %s; its cell is shown as %s (re-run that run, or move the file away)", where,
                        seed, problem, INVALID)
            cell.invalid.append(f"{where}: {problem}")
        names = metric_names.setdefault(col, [])
        if rec["metric"]["name"] not in names:
            names.append(rec["metric"]["name"])
    for col, names in metric_names.items():
        if len(names) > 1:
            log.warning("column %s mixes metrics %s", col, names)
    measured = sorted({c for r in rows.values() for c in r.cells}, key=_column_sort_key)
    out_rows = list(rows.values())
    if references:
        for ref in REFERENCE_ROWS:
            out_rows.append(Row(ref["name"], ref["params"], ref["pretrain_data"],
                                {c: Cell([v]) for c, v in ref["cells"].items()}, reference=ref["source"]))
    if columns is None:
        columns = measured or sorted({c for r in out_rows for c in r.cells}, key=_column_sort_key)
    columns = list(columns)
    for r in out_rows:  # drop cells outside the chosen columns (e.g. paper ImageNet cells in a transfer-only table)
        r.cells = {c: v for c, v in r.cells.items() if c in columns}
    dropped = [r.name for r in out_rows if r.reference and not r.cells]
    if dropped:  # a paper row of nothing but "–" only says the paper did not run these data sets
        log.info("left out %s: the paper reports none of the shown columns", ", ".join(dropped))
        out_rows = [r for r in out_rows if not (r.reference and not r.cells)]
    kept = list(by_key.values())
    chance = _chance_row(kept)
    if chance is not None:
        chance.cells = {c: v for c, v in chance.cells.items() if c in columns}
        if chance.cells:
            out_rows.append(chance)
    selections: dict[Column, list[dict[str, int | None]]] = {}
    for rec in kept:
        col = (record_dataset(rec), rec["protocol"])
        sel = selected_over(rec)
        if col in columns and sel is not None and sel not in selections.setdefault(col, []):
            selections[col].append(sel)
    return Table(columns, out_rows, metric_names, {c: v for c, v in selections.items() if v})


# ------------------------------------------------------------------------------------------------------- rendering
def column_label(col: Column) -> str:
    """``('cifar10', 'knn')`` -> ``'CIFAR-10 k-NN'``."""
    ds, proto = col
    return f"{DATASET_LABELS.get(ds, ds)} {PROTOCOL_LABELS.get(proto, proto)}"


def _params(p: int | None) -> str:
    """Parameter count in millions (``21.7M``)."""
    return MISSING if p is None else f"{p / 1e6:.1f}M"


def _number(cell: Cell, digits: int, pm: str) -> str:
    """``mean`` or ``mean ± std (seeds)``."""
    text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        text += f" {pm} {cell.std:.{digits}f} ({cell.n})"
    return text


def _is_best(value: float | None, best: float | None, digits: int) -> bool:
    """Whether ``value`` equals the column's best at ``digits`` decimals."""
    # compare at the printed precision so visually equal values are all marked
    return value is not None and best is not None and round(value, digits) == round(best, digits)


def _row_name(row: Row) -> str:
    """The model name, with a dagger on published rows."""
    return row.name + (DAGGER if row.reference else "")


def _notes(table: Table) -> list[str]:
    """The lines under the table: how to read it, non-top-1 metrics, citations."""
    notes = ["Cells: top-1 (%); with several seeds mean ± sample std (seed count); – = not run; best per column in "
             "bold; Mean only for rows with every column."]
    selected = [c for c in table.columns if c[1] in SELECTED_PROTOCOLS and c in table.selections]
    if selected:
        notes.append(_selection_note(table, selected))
    if any(r.baseline for r in table.rows):
        notes.append(f"{CHANCE} = top-1 of always predicting the test set's most frequent class (from the results' "
                     "test class counts): the floor every model must clear; never marked best.")
    if any(not cell.valid for r in table.rows for c, cell in r.cells.items() if c in table.columns):
        notes.append(f"{INVALID} = a run of this cell gave no valid accuracy (failed, or not in [0, 100]); the "
                     "leaderboard's warnings name its file.")
    special = {f"{column_label(c)}: {', '.join(n)}" for c, n in table.metric_names.items() if n != ["top1"]}
    if special:
        notes.append("Metrics: " + "; ".join(sorted(special)) + ".")
    cites = sorted({r.reference for r in table.rows if r.reference})
    for cite in cites:
        notes.append(f"{DAGGER} {cite}.")
    return notes


def _selection_text(sel: dict[str, int | None]) -> str:
    """``{"heads": 6, "epochs": 2, "num_test": 40}`` -> ``'best of 6 heads x 2 epochs on 40 test images'``."""
    parts = [f"{sel['heads']} heads" if sel.get("heads") else None,
             f"{sel['epochs']} evaluated epoch{'s' if sel['epochs'] != 1 else ''}" if sel.get("epochs") else None]
    known = [p for p in parts if p]
    text = "best of " + " x ".join(known) if known else "best of the evaluations (counts not recorded)"
    if sel.get("num_test"):
        text += f" on {sel['num_test']} test images"
    return text


def _selection_note(table: Table, columns: Sequence[Column]) -> str:
    """The note on maximum-over-test-evaluations cells, with what each column selected over."""
    per_col = "; ".join(f"{column_label(c)}: " + " / ".join(_selection_text(s) for s in table.selections[c])
                        for c in columns)
    return ("Linear and fine-tune cells are the best test top-1 over the evaluated epochs (linear: and over the "
            "heads of its learning-rate sweep), as the iBOT paper reports them; a maximum picked on the test set "
            "itself is optimistic, the more so the smaller the test set and the more evaluations it is taken over "
            f"(the result files keep the last-epoch numbers). Selected over: {per_col}.")


def _cells(table: Table, row: Row, digits: int, pm: str) -> list[tuple[str, bool]]:
    """(text, is_best) for each column and the mean."""
    best = table.best()
    out = []
    for c in table.columns:
        cell = row.cells.get(c)
        out.append((MISSING, False) if cell is None else (INVALID, False) if not cell.valid else
                   (_number(cell, digits, pm), not row.baseline and _is_best(cell.mean, best.get(c), digits)))
    mean = row.mean(table.columns)
    out.append((MISSING, False) if mean is None else
               (f"{mean:.{digits}f}", not row.baseline and _is_best(mean, best.get("mean"), digits)))
    return out


def to_markdown(table: Table, digits: int = 1) -> str:
    """A Markdown table (best per column in ``**bold**``) followed by the notes."""
    header = ["Model", "Params", "Pretrain data", *map(column_label, table.columns), "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for row in table.rows:
        cells = [f"**{t}**" if b else t for t, b in _cells(table, row, digits, "±")]
        lines.append("| " + " | ".join([_row_name(row).replace("|", "\\|"), _params(row.params),
                                        row.pretrain_data, *cells]) + " |")
    return "\n".join(lines + [""] + _notes(table)) + "\n"


def to_csv(table: Table, digits: int = 4) -> str:
    """One CSV row per model: per column its mean, std, seed count, a 0/1 best flag and the count of invalid runs
    (an invalid cell has an empty mean), then the mean."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [f"{ds}/{proto}" for ds, proto in table.columns]
    w.writerow(["model", "params", "pretrain_data", "reference",
                *[f"{c}{s}" for c in cols for s in ("", "_std", "_seeds", "_best", "_invalid")], "mean", "mean_best"])
    best = table.best()
    for row in table.rows:
        out: list[Any] = [row.name, row.params if row.params is not None else "", row.pretrain_data,
                          row.reference or ("baseline: always the test set's most frequent class" if row.baseline
                                            else "")]
        for c in table.columns:
            cell = row.cells.get(c)
            if cell is None:
                out += ["", "", 0, 0, 0]
            elif not cell.valid:
                out += ["", "", cell.n, 0, len(cell.invalid)]
            else:
                out += [round(cell.mean, digits), "" if cell.std is None else round(cell.std, digits), cell.n,
                        int(not row.baseline and _is_best(cell.mean, best.get(c), digits)), 0]
        mean = row.mean(table.columns)
        out += ["" if mean is None else round(mean, digits),
                int(not row.baseline and _is_best(mean, best.get("mean"), digits))]
        w.writerow(out)
    return buf.getvalue()


def _dataset_groups(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """Runs of consecutive columns of one data set: ``[(dataset, span), ...]``."""
    groups: list[tuple[str, int]] = []
    for ds, _ in columns:
        if groups and groups[-1][0] == ds:
            groups[-1] = (ds, groups[-1][1] + 1)
        else:
            groups.append((ds, 1))
    return groups


def to_html(table: Table, digits: int = 1, title: str = "Transfer leaderboard") -> str:
    """One self-contained HTML page (``ibot.report.Page``): data sets span their protocols in a first header row,
    the best value of each column in bold, the notes below."""
    page = Page(title)
    groups = [("", 3), *((DATASET_LABELS.get(ds, ds), n) for ds, n in _dataset_groups(table.columns)), ("", 1)]
    header = ["Model", "Params", "Pretrain data", *(PROTOCOL_LABELS.get(p, p) for _, p in table.columns), "Mean"]
    rows = [[_row_name(row), _params(row.params), row.pretrain_data,
             *(Strong(t) if b else t for t, b in _cells(table, row, digits, "±"))] for row in table.rows]
    page.table(header, rows, groups=groups)
    for note in _notes(table):
        page.para(note)
    return page.html()


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", DAGGER: r"$^\dagger$", "±": r"$\pm$", "–": "--"}


def _tex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table, digits: int = 1) -> str:
    """A ``tabular`` (needs ``\\usepackage{booktabs}``) with data sets spanning their protocols."""
    n_cols = 3 + len(table.columns) + 1
    groups = _dataset_groups(table.columns)
    lines = [r"\begin{tabular}{lrl" + "r" * (len(table.columns) + 1) + "}", r"\toprule"]
    top = ["", "", ""] + [rf"\multicolumn{{{n}}}{{c}}{{{_tex(DATASET_LABELS.get(ds, ds))}}}" for ds, n in groups] + [""]
    lines.append(" & ".join(top) + r" \\")
    rules, start = [], 4
    for _, n in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    lines.append(" & ".join(["Model", "Params", "Pretrain data",
                             *[_tex(PROTOCOL_LABELS.get(p, p)) for _, p in table.columns], "Mean"]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [rf"\textbf{{{_tex(t)}}}" if b else _tex(t) for t, b in _cells(table, row, digits, "±")]
        lines.append(" & ".join([_tex(_row_name(row)), _tex(_params(row.params)), _tex(row.pretrain_data), *cells])
                     + r" \\")
    lines.append(r"\bottomrule")
    for note in _notes(table):
        lines.append(rf"\multicolumn{{{n_cols}}}{{l}}{{\footnotesize {_tex(note)}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "html": to_html, "tex": to_latex}


# ------------------------------------------------------------------------------------------------------------- CLI
def _parse_column(text: str) -> Column:
    """``'cifar10/finetune'`` -> ``('cifar10', 'finetune')`` (an ``argparse`` type)."""
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"column {text!r} must be <dataset>/<protocol>, e.g. cifar10/finetune")
    ds, proto = text.split("/", 1)
    return ds, proto


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """``tools/transfer_leaderboard.py``: returns {format: text} and writes files when ``--out`` is given."""
    p = argparse.ArgumentParser(description="Collect transfer result JSONs into a leaderboard table.")
    p.add_argument("results", nargs="+", help="result JSON files or folders searched recursively for them")
    p.add_argument("--out", help="output path stem: writes <stem>.md, .csv, .html, .tex (only --formats given)")
    p.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=sorted(FORMATS))
    p.add_argument("--paper", action="store_true", help="add the iBOT paper's rows (cited)")
    p.add_argument("--columns", nargs="+", type=_parse_column, help="fix columns, e.g. cifar10/finetune cars/knn")
    p.add_argument("--digits", type=int, default=1, help="decimals in md/html/tex (csv keeps 4)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave unreadable result files (truncated, wrong fields) out of the table with a warning "
                        "naming each, instead of stopping with an error")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    broken: list[Path] = []
    files = find_result_files(args.results, broken=broken if args.skip_invalid else None)
    records, skipped = [], [(f, "not valid JSON (truncated?)") for f in broken]
    for f in files:
        try:
            rec = load_result(f)
        except ResultFormatError as exc:
            if not args.skip_invalid:
                raise ResultFormatError(f"{exc}; or pass --skip-invalid to leave it out of the table") from exc
            skipped.append((f, str(exc)))
            continue
        rec.setdefault("path", str(f))
        records.append(rec)
    for f, why in skipped:
        log.warning("skipped result file '%s' (--skip-invalid; not counted): %s", f, why)
    if not records:
        raise SystemExit(f"no readable transfer result files (schema {SCHEMA}) under {args.results}"
                         + (f" ({len(skipped)} skipped as unreadable)" if skipped else ""))
    table = build_table(records, references=args.paper, columns=args.columns)
    out = {fmt: (FORMATS[fmt](table) if fmt == "csv" else FORMATS[fmt](table, args.digits)) for fmt in args.formats}
    if args.out:
        for fmt, text in out.items():
            path = Path(f"{args.out}.{fmt}")
            atomic_write_text(path, text)
            log.info("wrote %s", path)
    else:
        print(out.get("md") or next(iter(out.values())))
    log.info("%d result files, %d rows, %d columns%s", len(records), len(table.rows), len(table.columns),
             f"; {len(skipped)} unreadable files skipped" if skipped else "")
    return out
