"""Figure 5 of bin/correlate: the learning curves of runs that share a BS/LR value (Jastrzebski et al. 2018,
Fig. 2). One panel per shared ratio, test accuracy above and training loss below, one colour per (BS, LR)
cell and one line per seed; only beyond MAX_PANELS panels in all are a group's ratios cut (those held by the
fewest cells first), and the figure then says how many it draws.

The only figure that reads metrics.jsonl, and only for the runs it draws, so bin/correlate stays fast on
large grids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lrbs_tf.analysis.model import Analysis
from lrbs_tf.analysis.plots.style import MIN_FONT, line_cmap, log_axis, panel_grid
from lrbs_tf.runs import folder as rf

MAX_PANELS = 12  # in all: every shared ratio of a group up to this; with many groups each gets fewer (at least
                 # one, those with the most cells), so the figure draws in a second
MAX_CELLS = 6   # lines per panel: cells spread over the batch sizes beyond that


def chosen_panels(a: Analysis) -> list[tuple[str, float, pd.DataFrame, int]]:
    """(group label, ratio, its done runs drawn, its number of cells) per panel: per group every shared ratio,
    or where that would pass MAX_PANELS in all the MAX_PANELS // groups with the most cells (ties: smaller
    ratio first), in ratio order, each with at most MAX_CELLS cells."""
    er = a.equal_ratios
    if er.empty:
        return []
    er = er.assign(_label=[a.label(r) for r in er.to_dict("records")])
    per_group = max(1, MAX_PANELS // max(1, er["_label"].nunique()))
    panels = []
    for _, label, g in a.groups():
        shared = er[er["_label"] == label].sort_values(["n_cells", "ratio"], ascending=[False, True])
        for r in sorted(shared["ratio"].head(per_group)):
            runs = g[g["ratio"] == r]
            cells = sorted(set(zip(runs["batch_size"], runs["lr"])))
            total = len(cells)
            if total > MAX_CELLS:
                cells = [cells[i] for i in np.linspace(0, total - 1, MAX_CELLS).round().astype(int)]
            keep = [c in cells for c in zip(runs["batch_size"], runs["lr"])]
            panels.append((label, float(r), runs[keep], total))
    return panels


def _curves(results: Path, run_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch, test accuracy in %, training loss) from a run's metrics.jsonl; non-numbers as NaN."""
    records = rf.read_metrics(results / run_dir)

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if rf.is_number(r.get(key)) else np.nan for r in records], dtype=float)

    return column("epoch"), 100 * column("test_accuracy"), column("train_loss")


def _panel(fig: Figure, slot, a: Analysis, label: str, ratio: float, runs: pd.DataFrame, total: int) -> None:
    inner = slot.subgridspec(2, 1, hspace=0.08)
    top = fig.add_subplot(inner[0])
    bottom = fig.add_subplot(inner[1], sharex=top)
    cells = sorted(set(zip(runs["batch_size"], runs["lr"])))
    cmap = line_cmap("viridis")
    for k, (bs, lr) in enumerate(cells):
        colour = cmap(k / max(1, len(cells) - 1))
        for i, run_dir in enumerate(runs[(runs["batch_size"] == bs) & (runs["lr"] == lr)]["run_dir"]):
            epoch, acc, loss = _curves(a.results, run_dir)
            name = f"BS {bs}, LR {lr:g}" if i == 0 else None
            top.plot(epoch, acc, color=colour, lw=0.9, alpha=0.85, label=name)
            bottom.plot(epoch, np.where(loss > 0, loss, np.nan), color=colour, lw=0.9, alpha=0.85)
    drawn = f"{len(cells)} cells" if len(cells) == total else f"{len(cells)} of {total} cells"
    top.set_title(f"{label}\nBS/LR = {ratio:.4g}: {drawn}, {len(runs)} runs", fontsize=9)
    top.set_ylabel("test accuracy (%)", fontsize=8)
    top.tick_params(labelbottom=False, labelsize=MIN_FONT)
    top.legend(fontsize=MIN_FONT, loc="lower right")
    bottom.set_yscale("log")
    log_axis(bottom, "y")
    bottom.set_ylabel("training loss", fontsize=8)
    bottom.set_xlabel("epoch", fontsize=8)
    bottom.tick_params(labelsize=MIN_FONT)


def figure_equal_ratio(a: Analysis) -> Figure | None:
    """Figure 5; None (no figure) when no group has a BS/LR value shared by two cells."""
    panels = chosen_panels(a)
    if not panels:
        return None
    nrows, ncols = panel_grid(len(panels), 4)
    fig = Figure(figsize=(4.0 * ncols, 5.0 * nrows))
    fig.subplots_adjust(left=0.8 / (4.0 * ncols) + 0.04, right=0.98, bottom=0.5 / (5.0 * nrows) + 0.03,
                        top=1 - 0.6 / (5.0 * nrows), wspace=0.35)
    outer = fig.add_gridspec(nrows, ncols, hspace=0.35)
    for i, (label, ratio, runs, total) in enumerate(panels):
        _panel(fig, outer[i // ncols, i % ncols], a, label, ratio, runs, total)
    if len(panels) < len(a.equal_ratios):  # cut at MAX_PANELS: say so where the figure is read
        fig.suptitle(f"{len(panels)} of {len(a.equal_ratios)} shared BS/LR values drawn (those held by the most "
                     "cells); the report's table lists every one", fontsize=9)
    if nrows * ncols > len(panels):  # the spare slot explains the lines instead of standing empty
        key = fig.add_subplot(outer[nrows - 1, ncols - 1])
        key.axis("off")
        key.legend(handles=[Line2D([], [], color="0.3", lw=0.9, label="one line per seed"),
                            Line2D([], [], color=line_cmap("viridis")(0.0), label="colour: (BS, LR) cell")],
                   loc="center", fontsize=8, frameon=False, title="equal BS/LR, different cells")
    return fig
