"""Figure 8 of bin/correlate: best test accuracy against SVAG's l, per cell (lrbs_tf.analysis.sde, issue 25).

One row of panels per group, one panel per batch size; in each, one colour per learning rate: the mean over
seeds at each l (error bars: one s.d. over the seeds), the seeds as small dots, l on a log2 axis. A flat line
is a cell where SGD (l = 1) ends as the SDE's simulation does; the cells sde.csv calls failed are drawn dashed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lrbs_tf.analysis.model import Analysis, group_keys
from lrbs_tf.analysis.plots.style import line_cmap, new_figure
from lrbs_tf.analysis.sde import SVAG
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import TARGET


def figure_sde(a: Analysis) -> Figure | None:
    """Figure 8; None when no cell has runs at two values of l."""
    s = a.sde
    if s is None or s.cells.empty:
        return None
    done = s.runs[s.runs["status"] == rf.STATUS_DONE]
    keys = group_keys(done, s.group_cols)
    groups = list(s.cells.groupby("group", sort=False))
    ncols = max(g["batch_size"].nunique() for _, g in groups)
    fig = new_figure(len(groups), ncols, 3.6, 3.0)
    cmap = line_cmap("viridis")
    for row, (label, cells) in enumerate(groups):
        key = next(k for k, v in s.labels.items() if v == label)
        runs = done[keys == key]
        lrs = sorted(cells["lr"].unique())
        colours = {lr: cmap(i / max(1, len(lrs) - 1)) for i, lr in enumerate(lrs)}
        for col, (bs, sub) in enumerate(cells.groupby("batch_size", sort=True)):
            ax = fig.add_subplot(len(groups), ncols, row * ncols + col + 1)
            for cell in sub.to_dict("records"):
                r = runs[(runs["batch_size"] == bs) & (runs["lr"] == cell["lr"])]
                per = r.groupby(SVAG)[TARGET].agg(["mean", "std"]).sort_index()
                c = colours[cell["lr"]]
                ax.errorbar(per.index, 100 * per["mean"], yerr=100 * per["std"].fillna(0), color=c, marker="o",
                            ms=3.5, lw=1.2, capsize=2, ls="--" if cell["sde_holds"] == "no" else "-",
                            label=f"lr {cell['lr']:g}" + (" (differs)" if cell["sde_holds"] == "no" else ""))
                ax.scatter(r[SVAG], 100 * r[TARGET], color=c, s=6, alpha=0.5)
            ax.set_xscale("log", base=2)
            levels = sorted(done[SVAG].dropna().unique())
            ax.set_xticks(levels, [f"{int(v)}" for v in levels])
            ax.set_xlabel("SVAG l (1: plain SGD)")
            ax.set_ylabel("best test accuracy (%)")
            ax.set_title(f"{label}\nbatch size {bs}", fontsize=9)
            ax.legend(fontsize=6, loc="best", framealpha=0.6)
            ax.margins(x=0.15)
            if np.isfinite(ax.get_ylim()).all():
                ax.grid(alpha=0.3)
    return fig
