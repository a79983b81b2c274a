"""A metric against a setting, one line per value of another setting (``ssl-bench plot``):
e.g. CCLP's validation error against its chain length S (Fig. 4 of Kamnitsas et al.)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .grid import Run, TableSpec
from .protocol import METRICS
from .tables import cell_values, statistic


def plot_metric(runs: list[Run], rows: pd.DataFrame, *, x: str, metric: str, series: str | None,
                stat: str, title: str, path: Path) -> Path:
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} unknown; one of {', '.join(METRICS)}")
    for key in (x, series):
        if key is not None and not all(key in run.flat() for run in runs):
            raise UserError(f"{key!r} is not a setting of every run of the grid")
    spec = TableSpec(name="plot", rows=series or x, columns=x, metric=metric, statistic=stat, spread="std")
    series_labels, x_labels, cells, excluded, _ = cell_values(spec, runs, rows)
    try:
        x_values = [float(v) for v in x_labels]
    except ValueError:
        x_values = list(range(len(x_labels)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = 0
    for label in series_labels:
        centres, spreads = zip(*(statistic(cells.get((label, c), np.array([])), spec) for c in x_labels))
        centres, spreads = np.array(centres), np.nan_to_num(np.array(spreads))
        if np.all(np.isnan(centres)):
            continue
        plotted += 1
        line = ax.plot(x_values, centres, marker="o", label=f"{series} = {label}" if series else None)[0]
        ax.fill_between(x_values, centres - spreads, centres + spreads, color=line.get_color(), alpha=0.15)
    if not plotted:
        raise UserError("no finished runs to plot: run the grid first (with the same --set/--smoke options)")
    if not all(isinstance(v, float) for v in x_values):
        ax.set_xticks(x_values, x_labels)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} ({stat}, band: std)")
    note = ", ".join(f"{n} {s}" for s, n in excluded.items())
    ax.set_title(title + (f"\n(excluded: {note})" if note else ""), fontsize=9)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
