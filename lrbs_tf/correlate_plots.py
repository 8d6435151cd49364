"""Figures of bin/correlate (PNG and PDF): He et al.'s Figures 1-2, an accuracy heatmap, sharpness vs BS/LR.

Uses matplotlib's object API (`matplotlib.figure.Figure`), never pyplot, so no GUI backend and no global
state are involved: figures render with Agg in any process, tests included. Speed matters (1,600 runs must
be drawn in seconds): fixed margins instead of constrained layout (which redraws every tick label several
times), no minor ticks and plain tick labels on log axes.
Accuracies are drawn in percent, as in the paper; runs that did not reach --min_train_accuracy are drawn
hollow so the premise stays visible.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import cm, colormaps, colors
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from lrbs_tf import figures
from lrbs_tf import runfolder as rf
from lrbs_tf.analysis import (FIG_CURVES, FIG_HEATMAP, FIG_RATIO, FIG_SHARPNESS, FIGURE_FORMATS, Analysis,
                              group_keys)
from lrbs_tf.runtable import TARGET

DPI = 110


def _save(fig: Figure, folder: Path, name: str) -> str:
    # Fixed margins (_figure) already fit the labels: a tight bounding box would draw every figure twice.
    figures.save(fig, folder / name, formats=FIGURE_FORMATS, dpi=DPI, tight=False)
    return name


def _figure(nrows: int, ncols: int, width: float, height: float) -> Figure:
    """A figure of nrows x ncols panels of width x height inches each, with room for two-line titles."""
    fig = Figure(figsize=(width * ncols, height * nrows))
    fig.subplots_adjust(left=0.6 / (width * ncols) + 0.05, right=0.97, bottom=0.55 / (height * nrows) + 0.02,
                        top=1 - 0.55 / (height * nrows), wspace=0.45, hspace=0.75)
    return fig


def _log_x(ax, y_too: bool = False) -> None:
    """Log scale with a few plain-text major ticks (minor ticks and mathtext labels are slow to draw)."""
    axes = (ax.xaxis, ax.yaxis) if y_too else (ax.xaxis,)
    ax.set_xscale("log")
    if y_too:
        ax.set_yscale("log")
    for axis in axes:
        axis.set_major_locator(LogLocator(numticks=6))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _grid(n: int, ncols_max: int = 4) -> tuple[int, int]:
    ncols = min(n, ncols_max)
    return math.ceil(n / ncols), ncols


def _ratio_title(analysis: Analysis, label: str) -> str:
    t3 = analysis.tables["table3"]
    rows = [r for r in t3.to_dict("records") if analysis.label(r) == label and r["subset"] == "with_flagged"]
    if not rows or rows[0]["reason"]:
        return label + (f"\n({rows[0]['reason']})" if rows else "")
    r = rows[0]
    return f"{label}\nSpearman rho={r['spearman_rho']:.2f}, p={r['spearman_p']:.1e}, n={r['n']}"


def figure_ratio(analysis: Analysis, folder: Path) -> str:
    """Figure 1: accuracy vs BS/LR per group."""
    groups = list(analysis.groups())
    nrows, ncols = _grid(len(groups))
    fig = _figure(nrows, ncols, 4.2, 3.6)
    for i, (_, label, g) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ok = g["reached_min_train_accuracy"].to_numpy(bool)
        ax.scatter(g["ratio"][ok], 100 * g[TARGET][ok], s=10, color="C0", label="premise met")
        if (~ok).any():
            ax.scatter(g["ratio"][~ok], 100 * g[TARGET][~ok], s=14, facecolors="none", edgecolors="C3",
                       label=f"train acc < {analysis.min_train_accuracy:g}")
            ax.legend(fontsize=7)
        _log_x(ax)
        ax.set_xlabel("batch size / learning rate")
        ax.set_ylabel("best test accuracy (%)")
        ax.set_title(_ratio_title(analysis, label), fontsize=9)
    return _save(fig, folder, FIG_RATIO)


def _lines(ax, g: pd.DataFrame, x: str, line: str, cmap_name: str, fig: Figure) -> None:
    """Mean accuracy vs `x`, one line per value of `line`, coloured by that value (with a colour bar)."""
    means = g.groupby([line, x], sort=True)[TARGET].mean().unstack(x)  # rows: one line each
    values = list(means.index)
    norm = colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = colormaps[cmap_name]
    xs = means.columns.to_numpy(float)
    for v, ys in zip(values, means.to_numpy(float)):
        keep = np.isfinite(ys)
        ax.plot(xs[keep], 100 * ys[keep], lw=1, color=cmap(norm(v)))
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label("learning rate" if line == "lr" else "batch size")
    ax.set_xlabel("batch size" if x == "batch_size" else "learning rate")
    ax.set_ylabel("best test accuracy (%)")


def figure_curves(analysis: Analysis, folder: Path) -> str:
    """Figure 2: accuracy vs batch size (a line per LR) and vs LR (a line per batch size), a row per group."""
    groups = list(analysis.groups())
    fig = _figure(len(groups), 2, 5.4, 3.4)
    for i, (_, label, g) in enumerate(groups):
        ax = fig.add_subplot(len(groups), 2, 2 * i + 1)
        _lines(ax, g, "batch_size", "lr", "viridis", fig)
        ax.set_title(f"{label}: vs batch size", fontsize=9)
        ax = fig.add_subplot(len(groups), 2, 2 * i + 2)
        _lines(ax, g, "lr", "batch_size", "plasma", fig)
        ax.set_title(f"{label}: vs learning rate", fontsize=9)
    return _save(fig, folder, FIG_CURVES)


def figure_heatmap(analysis: Analysis, folder: Path) -> str:
    """Mean best test accuracy over the BS x LR grid per group; cells with only diverged/failed runs marked."""
    groups = list(analysis.groups())
    runs = analysis.runs[analysis.runs["batch_size"].notna() & analysis.runs["arch"].notna()]
    run_keys = group_keys(runs, analysis.group_cols)
    nrows, ncols = _grid(len(groups), 2)
    fig = _figure(nrows, ncols, 5.6, 4.6)
    for i, (keys, label, g) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        everything = runs[run_keys == tuple(keys.values())]
        bss = sorted(everything["batch_size"].dropna().unique())
        lrs = sorted(everything["lr"].dropna().unique())
        grid = g.groupby(["batch_size", "lr"])[TARGET].mean().unstack("lr").reindex(index=bss, columns=lrs)
        image = ax.imshow(100 * grid.to_numpy(float), origin="lower", aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax).set_label("best test accuracy (%)")
        # A cell without a done run is marked by what its runs did, when they all did the same.
        statuses = everything.groupby(["batch_size", "lr"])["status"].agg(
            lambda s: s.iloc[0] if s.nunique() == 1 else "")
        for (bs, lr), status in statuses.items():
            mark = {rf.STATUS_DIVERGED: "D", rf.STATUS_FAILED: "F"}.get(status)
            if mark:
                ax.text(lrs.index(lr), bss.index(bs), mark, ha="center", va="center", fontsize=7, color="C3")
        step_x, step_y = max(1, len(lrs) // 10), max(1, len(bss) // 10)
        ax.set_xticks(range(0, len(lrs), step_x), [f"{v:g}" for v in lrs[::step_x]], fontsize=7, rotation=45)
        ax.set_yticks(range(0, len(bss), step_y), [f"{int(v)}" for v in bss[::step_y]], fontsize=7)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("batch size")
        ax.set_title(label, fontsize=9)
    return _save(fig, folder, FIG_HEATMAP)


def figure_sharpness(analysis: Analysis, folder: Path) -> str:
    """Each sharpness quantity vs BS/LR: a panel per quantity, a colour per group."""
    groups = list(analysis.groups())
    qs = analysis.sharpness_quantities
    nrows, ncols = _grid(len(qs), 2)
    fig = _figure(nrows, ncols, 5.0, 3.8)
    for i, q in enumerate(qs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        positive, drawn = True, 0
        for c, (_, label, g) in enumerate(groups):
            have = g[np.isfinite(g[q].to_numpy(float))]
            ok = have["reached_min_train_accuracy"].to_numpy(bool)
            ax.scatter(have["ratio"][ok], have[q][ok], s=8, color=f"C{c}", label=f"{label} (n={len(have)})")
            ax.scatter(have["ratio"][~ok], have[q][~ok], s=12, facecolors="none", edgecolors=f"C{c}")
            positive &= bool((have[q] > 0).all())
            drawn += len(have)
        _log_x(ax, y_too=positive and drawn > 0)
        ax.set_xlabel("batch size / learning rate")
        ax.set_ylabel(q)
        ax.set_title(f"{q} vs BS/LR ({drawn} of {len(analysis.done)} done runs have it)", fontsize=9)
        ax.legend(fontsize=6)
    return _save(fig, folder, FIG_SHARPNESS)


def write_figures(analysis: Analysis, folder: Path) -> list[str]:
    """Draws every figure into `folder` as <name>.png and <name>.pdf; returns the names drawn."""
    names = [figure_ratio(analysis, folder), figure_curves(analysis, folder),
             figure_heatmap(analysis, folder)]
    if analysis.sharpness_quantities:
        names.append(figure_sharpness(analysis, folder))
    return names
