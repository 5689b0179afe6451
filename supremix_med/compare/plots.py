"""The comparison's figure: every seed's value and the mean per row, one panel per metric column."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from supremix_med.io import atomic_write

__all__ = ["plot_comparison"]

_MARKERS = "osD^vP*Xhp<>"


def plot_comparison(values: pd.DataFrame, path: str | os.PathLike,
                    display_name: Callable[[str], str] = str, panels_per_row: int = 4) -> None:
    """Save a PNG with one panel per column of ``values``: a point per seed and a bar at the mean per row.

    Args:
        values: index ``(row, seed)``, one float column per metric (nan: no value), as
            :func:`supremix_med.compare.report.cell_values` gives (a row is a method or a named variant).
        path: the PNG to write (atomically).
        display_name: row -> x-axis label.
        panels_per_row: panels per row of the grid.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(values.index.get_level_values("row")))
    seeds = list(dict.fromkeys(values.index.get_level_values("seed")))
    columns = list(values.columns)
    cols = max(1, min(panels_per_row, len(columns)))
    rows = max(1, math.ceil(len(columns) / cols))
    figure = Figure(figsize=(3.2 * cols + 1.2, 2.8 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    x = np.arange(len(names))
    style = [{"marker": _MARKERS[k % len(_MARKERS)], "color": f"C{k % 10}", "linestyle": "none", "markersize": 5}
             for k in range(len(seeds))]
    for ax, column in zip(axes, columns):
        table = values[column].unstack("seed").reindex(index=names, columns=seeds)  # [rows, seeds]
        for k, seed in enumerate(seeds):
            ax.plot(x + offsets[k], table[seed].to_numpy(), **style[k])
        means = table.mean(axis=1).to_numpy()
        shown = ~np.isnan(means)
        ax.hlines(means[shown], x[shown] - 0.32, x[shown] + 0.32, colors="k", lw=2)
        ax.set_title(str(column))
        ax.set_xticks(x, [display_name(name) for name in names], rotation=45, ha="right")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    handles = [Line2D([], [], label=f"seed {seed}", **style[k]) for k, seed in enumerate(seeds)]
    handles.append(Line2D([], [], color="k", lw=2, label="mean"))
    figure.legend(handles=handles, loc="outside right upper", fontsize="small")
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"), suffix=".png")
