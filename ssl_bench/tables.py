"""Paper-style tables from the results: one statistic (spread) per cell, optional paper numbers.

Rows and columns are settings of the grid (e.g. n_labeled x n_unlabeled), in the grid's order.
Only rows of the grid's current runs with status ``ok`` enter a cell; failed and diverged runs
are counted in the footnote. Every table states its statistic and selection rule.

Reference numbers are CSV files (``benchmarks/references/``) with the columns
``table,row,column,value,spread,source``; ``--compare`` shows ours | paper | difference.
"""
from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from .errors import UserError
from .grid import Run, TableSpec, metric_label
from .metric import SUMMARIES
from .protocol import METRICS

FORMATS = ("markdown", "latex", "csv", "html")
MISSING = "—"
MISSING_RUNS = "missing"  # the key counting a table's runs that have no row


def matches(flat: dict, where: dict) -> bool:
    """Whether a run's flat settings satisfy a table's ``where``: each key equal to its value, or,
    for a list of values (and a run setting that is not itself a list), equal to one of them:
    ``where = { method = ["snowball", "lmcs"] }``."""
    for key, wanted in where.items():
        have = flat.get(key)
        if isinstance(wanted, list) and not isinstance(have, (list, tuple)):
            if canon(have) not in {canon(v) for v in wanted}:
                return False
        elif canon(have) != canon(wanted):
            return False
    return True


def canon(value) -> str:
    """A setting as a table key: 1, 1.0 and "1" are the same cell; "all" stays "all"."""
    if isinstance(value, bool):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    return repr(number)


def load_reference(path: Path, table: str) -> dict[tuple[str, str], tuple[float, float]]:
    if not path.exists():
        raise UserError(f"reference file {path} (named by table {table!r}) does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    need = {"table", "row", "column", "value"}
    if not need <= set(frame.columns):
        raise UserError(f"reference file {path} needs the columns {', '.join(sorted(need))}")
    frame = frame[frame["table"] == table]
    out = {}
    for _, r in frame.iterrows():
        spread = float(r["spread"]) if r.get("spread", "") not in ("", None) else float("nan")
        out[(canon(r["row"]), canon(r["column"]))] = (float(r["value"]), spread)
    return out


_ACCURACY_OF_ERROR = {"_max": "_min", "_min": "_max"}


def metric_column(metric: str, columns) -> tuple[str, bool] | None:
    """Where a table's metric comes from: (column, derived as 100 - an error?). A bare metric
    name (``cluster_accuracy``) means the main evaluation set's (``test_cluster_accuracy``). A
    ``SET_accuracy[...]`` missing from the rows (results written before the accuracy metric)
    is 100 minus the matching ``SET_error`` summary (``_max`` of accuracy is ``_min`` of error)."""
    for name in (metric, f"test_{metric}"):
        if name in columns:
            return name, False
        if "_accuracy" in name and "cluster_accuracy" not in name:
            head, _, tail = name.partition("_accuracy")
            column = f"{head}_error{_ACCURACY_OF_ERROR.get(tail, tail)}"
            if column in columns:
                return column, True
    return None


def describe_metric(metric: str) -> str:
    """How a table's metric was obtained, for its caption: the classic columns' own words,
    else the column's set and metric and its summary (``ssl_bench.metric.SUMMARIES``)."""
    if metric in METRICS:
        return METRICS[metric]
    for suffix, summary in (("_min", "best"), ("_max", "best"), ("_last_k", "last_k"), ("_best_val", "best_val")):
        if metric.endswith(suffix):
            return f"{metric[:-len(suffix)]}, {SUMMARIES[summary]}"
    return f"{metric}, {SUMMARIES['']}"


def describe_metrics(metrics: list[str]) -> str:
    """:func:`describe_metric` of several columns, their shared summary said once."""
    texts = [describe_metric(m) for m in metrics]
    tails = {t[len(m):] for m, t in zip(metrics, texts) if t.startswith(m + ", ")}
    if len(metrics) > 1 and len(tails) == 1 and all(t.startswith(m + ", ") for m, t in zip(metrics, texts)):
        return ", ".join(metrics) + next(iter(tails))
    return "; ".join(texts)


def row_name(spec: TableSpec, flat: dict) -> str:
    """A run's row in the table: its value of ``spec.rows``, or the name ``row_names`` gives it."""
    value = canon(flat[spec.rows])
    return spec.row_names.get(value, value)


def cell_values(spec: TableSpec, runs: list[Run], rows: pd.DataFrame):
    """(row labels, column labels, {(row, col): array of metric values}, excluded-status counts,
    {(row, col): the setting chosen by ``spec.select``}). With ``select``, the runs of a cell that
    differ in more than their seed are candidate settings; the cell holds the runs of the one
    whose median ``select`` value is best (by that column's direction)."""
    selected = []  # (run, row label, column label, the cell's metric)
    for run in runs:
        flat = run.flat()
        if not matches(flat, spec.where):
            continue
        if spec.metrics:  # columns = "metric": one cell per metric
            selected += [(run, row_name(spec, flat), metric_label(m), m) for m in spec.metrics]
        else:
            selected.append((run, row_name(spec, flat), canon(flat[spec.columns]), spec.metric))
    row_labels = list(dict.fromkeys(r for _, r, _, _ in selected))
    col_labels = list(dict.fromkeys(c for _, _, c, _ in selected))
    by_id = rows.set_index("run_id") if len(rows) else None
    excluded: dict[str, int] = {}

    def value(row, metric: str) -> float | None:
        found = metric_column(metric, row.index)
        v = row.get(found[0]) if found else None
        if v is None or pd.isna(v):
            return None
        return 100.0 - float(v) if found[1] else float(v)

    # cell -> candidate setting -> [(metric value, select value)] of its finished, ok runs
    candidates: dict[tuple[str, str], dict[str, list[tuple[float | None, float | None]]]] = {}
    settings: dict[str, dict] = {}
    counted: set[str] = set()
    for run, r, c, metric in selected:
        flat = {k: v for k, v in run.flat().items() if k != "seed"}
        key = repr(sorted((k, canon(v)) for k, v in flat.items())) if spec.select else ""
        settings[key] = flat
        found = candidates.setdefault((r, c), {}).setdefault(key, [])
        first = run.run_id not in counted  # a run shows in one cell per metric, but counts once
        counted.add(run.run_id)
        if by_id is None or run.run_id not in by_id.index:
            excluded[MISSING_RUNS] = excluded.get(MISSING_RUNS, 0) + first
            continue
        row = by_id.loc[run.run_id]
        if row["status"] != "ok":
            excluded[row["status"]] = excluded.get(row["status"], 0) + first
            continue
        found.append((value(row, metric), value(row, spec.select) if spec.select else None))

    cells: dict[tuple[str, str], np.ndarray] = {}
    choices: dict[tuple[str, str], dict] = {}
    for cell, options in candidates.items():
        chosen = next(iter(options))
        if spec.select:
            scored = {k: np.median([s for _, s in v if s is not None]) for k, v in options.items()
                      if any(s is not None for _, s in v)}
            if scored:
                sign = -1.0 if higher_is_better(spec.select) else 1.0
                chosen = min(scored, key=lambda k: sign * scored[k])  # first of equals: the grid's order
                varying = {k for k in set().union(*(settings[o] for o in options))
                           if len({canon(settings[o].get(k)) for o in options}) > 1}
                choices[cell] = {k: settings[chosen].get(k) for k in sorted(varying)}
            else:
                options = {chosen: []}  # nothing to select by yet: the cell is empty
        cells[cell] = np.array([m for m, _ in options[chosen] if m is not None])
    return row_labels, col_labels, cells, excluded, choices


def higher_is_better(metric: str) -> bool:
    """A metric column's direction, from its name (errors and mmd fall, the rest rise)."""
    return not any(word in metric for word in ("error", "mmd", "loss"))


def statistic(values: np.ndarray, spec: TableSpec) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    if spec.statistic == "best":
        centre = float(np.max(values) if higher_is_better(spec.metric) else np.min(values))
    else:
        centre = float(np.median(values) if spec.statistic == "median" else np.mean(values))
    spread = float(np.std(values, ddof=1)) if spec.spread == "std" and len(values) > 1 else float("nan")
    return centre, spread


def format_cell(centre: float, spread: float, fmt: str, n: int | None = None) -> str:
    if math.isnan(centre):
        return MISSING
    text = format(centre, fmt)
    if not math.isnan(spread):
        text += f" ({format(spread, fmt)})"
    if n is not None:
        text += f" [n={n}]"
    return text


def describe(spec: TableSpec, excluded: dict[str, int], choices: dict | None = None) -> str:
    stat = ("best run" if spec.statistic == "best" else spec.statistic) + (" (std, ddof=1)" if spec.spread == "std" else "")
    text = f"Cells: {stat} over runs; {describe_metrics(spec.metrics or [spec.metric])}."
    if spec.select:
        text += (f" Each cell shows the setting with the best median {spec.select} over its seeds "
                 f"({describe_metric(spec.select)}), chosen per cell")
        chosen = "; ".join(f"{r} @ {c}: " + ", ".join(f"{k.rsplit('.', 1)[-1]}={canon(v)}" for k, v in setting.items())
                           for (r, c), setting in choices.items() if setting)
        text += f": {chosen}." if chosen else "."
    missing = excluded.get(MISSING_RUNS, 0)
    excluded = {k: v for k, v in excluded.items() if k != MISSING_RUNS}
    if excluded:
        text += " Excluded: " + ", ".join(f"{n} {status}" for status, n in sorted(excluded.items())) + " run(s)."
    if missing:
        text += f" Missing: {missing} run(s) without a result (not run yet, or a damaged file moved aside)."
    return text


#: a coverage filter value that stands for the cell's column label (one bound per column)
COLUMN = "{column}"


def coverage_per_column(spec: TableSpec) -> bool:
    """Whether ``spec.coverage`` has a bound per column: some filter value is ``"{column}"``
    (e.g. ``target = "{column}"`` in a table whose columns are the targets of several domain
    pairs); otherwise one source-only and one target-only value serve every column."""
    return any(v == COLUMN for filt in spec.coverage.values() for v in filt.values())


def coverage_filter(filt: dict, column: str | None) -> dict:
    """A coverage filter with ``"{column}"`` replaced by the column label ``column``."""
    return {k: column if v == COLUMN and column is not None else v for k, v in filt.items()}


def coverage_bounds(spec: TableSpec, runs: list[Run], rows: pd.DataFrame,
                    column: str | None = None) -> dict[str, tuple[float, int]]:
    """Source-only and target-only values for ``spec.coverage``: the table's statistic over the
    runs matching each filter (whatever the table's own ``where``; ``"{column}"`` in a filter
    standing for ``column``), and how many there were."""
    out = {}
    for key, filt in spec.coverage.items():
        bound = dataclasses.replace(spec, where=coverage_filter(filt, column), select="", coverage={}, rows="seed",
                                    columns="seed")
        _, _, cells, _, _ = cell_values(bound, runs, rows)
        values = np.concatenate([v for v in cells.values()] or [np.array([])])
        out[key] = (statistic(values, spec)[0], len(values))
    return out


def table_frame(spec: TableSpec, runs: list[Run], rows: pd.DataFrame, *, compare: bool = False,
                show_n: bool = False) -> tuple[pd.DataFrame, str]:
    """The table as a DataFrame of cell strings, and its description line."""
    row_labels, col_labels, cells, excluded, choices = cell_values(spec, runs, rows)
    bounds: dict[str, dict[str, tuple[float, int]]] = {}  # column -> source_only/target_only -> (value, n)
    if spec.coverage and coverage_per_column(spec):
        bounds = {c: coverage_bounds(spec, runs, rows, c) for c in col_labels}
    elif spec.coverage:
        shared = coverage_bounds(spec, runs, rows)
        bounds = {c: shared for c in col_labels}
    reference = {}
    if compare:
        if spec.reference is None:
            raise UserError(f"table {spec.name!r} has no reference numbers (no `reference = ...` in its grid)")
        reference = load_reference(spec.reference, spec.name)
    body = []
    for r in row_labels:
        line = {}
        for c in col_labels:
            values = cells.get((r, c), np.array([]))
            centre, spread = statistic(values, spec)
            ours = format_cell(centre, spread, spec.format, len(values) if show_n else None)
            if bounds:
                (so, _), (to, _) = bounds[c]["source_only"], bounds[c]["target_only"]
                gap = to - so  # must point the metric's better way: target only beats source only
                better = gap > 0 if higher_is_better(spec.metric) else gap < 0
                covered = 100.0 * (centre - so) / gap + 0.0 if better else float("nan")  # + 0.0: no "-0.0"
                line[f"{c} coverage %"] = MISSING if math.isnan(covered) else format(covered, ".1f")
            if not compare:
                line[c] = ours
                continue
            paper = reference.get((r, c))
            line[f"{c} ours"] = ours
            line[f"{c} paper"] = format_cell(*paper, spec.format) if paper else MISSING
            line[f"{c} diff"] = (format(centre - paper[0], "+" + spec.format)
                                 if paper and not math.isnan(centre) else MISSING)
        body.append(line)
    frame = pd.DataFrame(body, index=pd.Index(row_labels, name=f"{spec.rows} \\ {spec.columns}"))
    if bounds:  # the value columns first, then their coverage
        frame = frame[[c for c in frame.columns if not c.endswith(" coverage %")]
                      + [c for c in frame.columns if c.endswith(" coverage %")]]
    note = describe(spec, excluded, choices)
    if bounds and coverage_per_column(spec):
        per = "; ".join(f"{c}: source only = {format_cell(b['source_only'][0], math.nan, spec.format)} "
                        f"({b['source_only'][1]} runs), target only = "
                        f"{format_cell(b['target_only'][0], math.nan, spec.format)} ({b['target_only'][1]} runs)"
                        for c, b in bounds.items())
        note += (f" Coverage = (cell - source only) / (target only - source only), in %, per column ({COLUMN} = the "
                 f"column): source only = runs matching {spec.coverage['source_only']}, target only = runs matching "
                 f"{spec.coverage['target_only']}, the same statistic; {per}; undefined (—) unless target only is "
                 f"better than source only.")
    elif bounds:
        (so, n_so), (to, n_to) = next(iter(bounds.values()))["source_only"], next(iter(bounds.values()))["target_only"]
        note += (f" Coverage = (cell - source only) / (target only - source only), in %: source only = "
                 f"{format(so, spec.format)} ({n_so} runs matching {spec.coverage['source_only']}), target only = "
                 f"{format(to, spec.format)} ({n_to} runs matching {spec.coverage['target_only']}), the same "
                 f"statistic; undefined (—) unless target only is better than source only.")
    return frame, note


def render(spec: TableSpec, runs: list[Run], rows: pd.DataFrame, fmt: str = "markdown", *,
           compare: bool = False, show_n: bool = False) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} unknown; one of {', '.join(FORMATS)}")
    frame, note = table_frame(spec, runs, rows, compare=compare, show_n=show_n)
    caption = f"{spec.caption} {note}".strip()
    if fmt == "csv":  # the description as a comment line: pd.read_csv(..., comment="#") skips it
        return f"# {spec.name}: {caption}\n" + frame.to_csv()
    headers = [frame.index.name, *frame.columns]
    data = [[idx, *vals] for idx, vals in zip(frame.index, frame.itertuples(index=False))]
    if fmt == "markdown":
        return f"**{spec.name}**: {caption}\n\n" + tabulate(data, headers, tablefmt="pipe", stralign="right",
                                                          disable_numparse=True)
    if fmt == "html":
        return (f"<p><b>{html.escape(spec.name)}</b>: {html.escape(caption)}</p>\n"
                + tabulate(data, headers, tablefmt="html", disable_numparse=True))
    latex = tabulate([[str(v).replace(MISSING, "--") for v in line] for line in data], headers,
                     tablefmt="latex_booktabs", disable_numparse=True)
    return ("\\begin{table}\n\\centering\n" + latex + f"\n\\caption{{{_latex_escape(caption)}}}\n"
            f"\\label{{tab:{spec.name}}}\n\\end{{table}}")


_LATEX = {"\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
