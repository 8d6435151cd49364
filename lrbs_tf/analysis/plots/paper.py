"""Figures of bin/correlate (PNG and PDF): He et al.'s Figures 1-2, an accuracy heatmap, sharpness vs BS/LR,
and the equal-ratio curves (lrbs_tf.analysis.plots.ratio).

Uses matplotlib's object API (`matplotlib.figure.Figure`), never pyplot, so no GUI backend and no global
state are involved: figures render with Agg in any process, tests included. Speed matters (1,600 runs must
be drawn in seconds): fixed margins instead of constrained layout (which redraws every tick label several
times), explicit plain-text ticks (lrbs_tf.analysis.plots.style). Accuracies are drawn in percent, as in the paper; runs
that did not reach --min_train_accuracy are drawn hollow so the premise stays visible, diverged runs as
crosses on the bottom axis; where cells hold several seeds, cell means carry error bars of one s.d.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import cm, colors
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from lrbs_tf.analysis.model import (
    FIG_CURVES,
    FIG_EQUAL_RATIO,
    FIG_HEATMAP,
    FIG_RATIO,
    FIG_SCHEDULES,
    FIG_SDE,
    FIG_SHARPNESS,
    FIG_STABILITY,
    FIG_STEPS,
    Analysis,
    group_keys,
    measure_name,
)
from lrbs_tf.analysis.plots import (
    ratio as ratio_plots,
    scaling as scaling_plots,
    schedules as schedule_plots,
    sde as sde_plots,
    stability as stability_plots,
)
from lrbs_tf.analysis.plots.style import MIN_FONT, line_cmap, log_axis, new_figure, panel_grid, save, text_colour
from lrbs_tf.core.text import plural
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import TARGET

MEAN_STYLE = dict(fmt="o", ms=4, capsize=2, lw=0.9, zorder=3)
MAX_LEGEND_LINES = 10  # Figure 2: lines named in a legend; more get a colour bar


def _ratio_title(analysis: Analysis, label: str, g: pd.DataFrame) -> str:
    """The group, and Table 3's primary row (the report's verdict): rho, p and n; the p is left out, with the
    reason, when runs of the group are below the training-accuracy premise (the test then does not ask the
    paper's question: it assumes every model fits its training set)."""
    t3 = analysis.tables["table3"]
    rows = [r for r in t3.to_dict("records") if analysis.label(r) == label
            and (r["primary"] if "primary" in r else r["subset"] == "with_flagged")]
    if not rows or rows[0]["reason"]:
        return label + (f"\n({rows[0]['reason']})" if rows else "")
    r = rows[0]
    below = int((~g["reached_min_train_accuracy"].astype(bool)).sum())
    if below:
        return (f"{label}\nrho={r['spearman_rho']:.2f}, n={r['n']}; no p: {below} of {plural(len(g), 'run')} "
                "below premise")
    return f"{label}\nrho={r['spearman_rho']:.2f}, p={r['spearman_p']:.1e} ({r['subset']}), n={r['n']}"


def _replicated(g: pd.DataFrame) -> bool:
    return bool(g.groupby(["batch_size", "lr"]).size().max() > 1) if len(g) else False


def _points(ax, g: pd.DataFrame, y: str, scale: float, colour: str, label: str, min_acc: float) -> None:
    """Runs of `g` as points (hollow below the premise); with seeds, faint, under cell means +- 1 s.d."""
    ok = g["reached_min_train_accuracy"].to_numpy(bool)
    seeds = _replicated(g)
    alpha = 0.35 if seeds else 1.0
    ax.scatter(g["ratio"][ok], scale * g[y][ok], s=9, color=colour, alpha=alpha, lw=0,
               label=None if seeds else label)
    if (~ok).any():
        ax.scatter(g["ratio"][~ok], scale * g[y][~ok], s=14, facecolors="none", edgecolors=colour, alpha=alpha,
                   label=f"train acc < {min_acc:g}" if y == TARGET else None)
    if seeds:
        cells = g.groupby(["batch_size", "lr"]).agg(ratio=("ratio", "first"), mean=(y, "mean"), sd=(y, "std"))
        ax.errorbar(cells["ratio"], scale * cells["mean"], yerr=scale * cells["sd"].fillna(0.0), color=colour,
                    label=f"{label}: cell mean ± 1 s.d. over seeds", **MEAN_STYLE)


def _diverged(ax, analysis: Analysis, keys: dict) -> None:
    """Diverged runs of the group as red crosses on the bottom axis (they have no accuracy to plot)."""
    runs = analysis.runs[(analysis.runs["status"] == rf.STATUS_DIVERGED) & analysis.runs["arch"].notna()]
    d = runs[group_keys(runs, analysis.group_cols) == tuple(keys.values())] if len(runs) else runs
    if len(d):
        ax.scatter(d["ratio"], np.full(len(d), 0.03), transform=blended_transform_factory(ax.transData, ax.transAxes),
                   marker="x", s=18, color="C3", clip_on=False, label=f"diverged ({len(d)})")


def figure_ratio(analysis: Analysis) -> Figure:
    """Figure 1: accuracy vs BS/LR per group."""
    groups = list(analysis.groups())
    nrows, ncols = panel_grid(len(groups), 4)
    fig = new_figure(nrows, ncols, 4.2, 3.6)
    for i, (keys, label, g) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_xscale("log")
        _points(ax, g, TARGET, 100, "C0", "runs", analysis.min_train_accuracy)
        _diverged(ax, analysis, keys)
        log_axis(ax, "x")
        if ax.get_legend_handles_labels()[1] not in ([], ["runs"]):  # a lone 'runs' entry says nothing
            ax.legend(fontsize=MIN_FONT)
        ax.set_xlabel("batch size / learning rate")
        ax.set_ylabel("best test accuracy (%)")
        ax.set_title(_ratio_title(analysis, label, g), fontsize=9)
    return fig


def _lines(ax, g: pd.DataFrame, x: str, line: str, cmap_name: str, fig: Figure) -> None:
    """Mean accuracy vs `x`, one line per value of `line`, in colours ordered along a colour map: up to
    MAX_LEGEND_LINES lines named in a legend beside the panel (the few discrete values of a grid), more in a
    colour bar (the paper's 20 x 20 grid)."""
    means = g.groupby([line, x], sort=True)[TARGET].mean().unstack(x)  # rows: one line each
    values = list(means.index)
    name = "learning rate" if line == "lr" else "batch size"
    cmap = line_cmap(cmap_name)
    discrete = len(values) <= MAX_LEGEND_LINES
    norm = colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    xs = means.columns.to_numpy(float)
    for k, (v, ys) in enumerate(zip(values, means.to_numpy(float))):
        keep = np.isfinite(ys)
        colour = cmap(k / max(1, len(values) - 1)) if discrete else cmap(norm(v))
        ax.plot(xs[keep], 100 * ys[keep], lw=1.2, color=colour, marker="o" if discrete else None, ms=3,
                label=f"{v:g}")
    if discrete:
        ax.legend(title=name, fontsize=MIN_FONT, title_fontsize=MIN_FONT, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False)
    else:
        bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(name)
    ax.set_xlabel("batch size" if x == "batch_size" else "learning rate")
    ax.set_ylabel("best test accuracy (%)")


def figure_curves(analysis: Analysis) -> Figure:
    """Figure 2: accuracy vs batch size (a line per LR) and vs LR (a line per batch size), a row per group."""
    groups = list(analysis.groups())
    fig = new_figure(len(groups), 2, 5.4, 3.4)
    fig.subplots_adjust(right=1 - 1.1 / (2 * 5.4))  # room for the right panel's legend (or colour bar)
    for i, (_, label, g) in enumerate(groups):
        ax = fig.add_subplot(len(groups), 2, 2 * i + 1)
        _lines(ax, g, "batch_size", "lr", "viridis", fig)
        ax.set_title(f"{label}: vs batch size", fontsize=9)
        ax = fig.add_subplot(len(groups), 2, 2 * i + 2)
        _lines(ax, g, "lr", "batch_size", "plasma", fig)
        ax.set_title(f"{label}: vs learning rate", fontsize=9)
    return fig


def _annotate(ax, image, values: np.ndarray, sds: np.ndarray) -> None:
    """Writes each cell's value (and +- s.d. when it has seeds, on grids up to 8 x 8) in a colour that reads
    on the cell."""
    rows, cols = values.shape
    size = MIN_FONT
    fills = image.cmap(image.norm(np.nan_to_num(values)))  # every cell's colour at once
    with_sd = max(rows, cols) <= 8
    for i, j in zip(*np.nonzero(np.isfinite(values))):
        text = f"{values[i, j]:.1f}" + (f"\n±{sds[i, j]:.1f}" if with_sd and np.isfinite(sds[i, j]) else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=size, color=text_colour(fills[i, j]))


def figure_heatmap(analysis: Analysis) -> Figure:
    """Mean best test accuracy over the BS x LR grid per group, the value in each cell; cells with only
    diverged / failed runs marked D / F."""
    groups = list(analysis.groups())
    runs = analysis.runs[analysis.runs["batch_size"].notna() & analysis.runs["arch"].notna()]
    run_keys = group_keys(runs, analysis.group_cols)
    nrows, ncols = panel_grid(len(groups), 2)
    side = max(len(runs["batch_size"].unique()), len(runs["lr"].unique()))
    fig = new_figure(nrows, ncols, max(5.6, 0.42 * side + 1.8), max(4.6, 0.36 * side + 1.4))
    for i, (keys, label, g) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        everything = runs[run_keys == tuple(keys.values())]
        bss = sorted(everything["batch_size"].dropna().unique())
        lrs = sorted(everything["lr"].dropna().unique())
        cells = g.groupby(["batch_size", "lr"])[TARGET]
        grid = 100 * cells.mean().unstack("lr").reindex(index=bss, columns=lrs).to_numpy(float)
        sds = 100 * cells.std().unstack("lr").reindex(index=bss, columns=lrs).to_numpy(float)
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax).set_label("best test accuracy (%), mean over seeds")
        _annotate(ax, image, grid, sds)
        # A cell without a done run is marked by what its runs did, when they all did the same.
        statuses = everything.groupby(["batch_size", "lr"])["status"].agg(
            lambda s: s.iloc[0] if s.nunique() == 1 else "")
        for (bs, lr), status in statuses.items():
            mark = {rf.STATUS_DIVERGED: "D", rf.STATUS_FAILED: "F"}.get(status)
            if mark:
                ax.text(lrs.index(lr), bss.index(bs), mark, ha="center", va="center", fontsize=8, color="C3")
        step_x, step_y = max(1, len(lrs) // 10), max(1, len(bss) // 10)
        ax.set_xticks(range(0, len(lrs), step_x), [f"{v:g}" for v in lrs[::step_x]], fontsize=MIN_FONT, rotation=45)
        ax.set_yticks(range(0, len(bss), step_y), [f"{int(v)}" for v in bss[::step_y]], fontsize=MIN_FONT)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("batch size")
        ax.set_title(label, fontsize=9)
    return fig


def figure_sharpness(analysis: Analysis) -> Figure:
    """Each sharpness quantity vs BS/LR: a panel per quantity, a colour per group; the legend takes a spare
    slot of the panel grid when there is one, so no panel is left empty."""
    groups = list(analysis.groups())
    qs = analysis.sharpness_quantities
    nrows, ncols = panel_grid(len(qs), 3)
    spare = nrows * ncols > len(qs)
    fig = new_figure(nrows, ncols, 4.6, 3.8)
    handles: list = []
    for i, q in enumerate(qs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        positive, drawn = True, 0
        for c, (_, label, g) in enumerate(groups):
            have = g[np.isfinite(g[q].to_numpy(float))]
            _points(ax, have, q, 1, f"C{c}", f"{label} (n={len(have)})", analysis.min_train_accuracy)
            if q == "lambda_max":  # the edge of stability of (heavy-ball) GD on the quadratic, per run
                # `lr` here is the effective lr / (1 - mu) (model.at_effective_lr); the edge is 2 (1 + mu) / lr
                # in the raw lr (docs/theory.md), 2 / lr at mu = 0.
                mu = have["momentum"].fillna(0.0).to_numpy(float)
                ax.scatter(have["ratio"], 2.0 * (1 + mu) / ((1 - mu) * have["lr"].to_numpy(float)), marker="_",
                           s=40, color=f"C{c}", lw=1, alpha=0.6,
                           label=None if c else "2 (1 + mu) / lr (heavy-ball stability edge)"
                           if analysis.momentum_placed else "2 / lr (plain-SGD stability edge)")
            positive &= bool((have[q] > 0).all())
            drawn += len(have)
        ax.set_xscale("log")
        log_axis(ax, "x")
        if positive and drawn:
            ax.set_yscale("log")
            log_axis(ax, "y")
        ax.set_xlabel("batch size / learning rate")
        ax.set_ylabel(measure_name(q) + (" (log scale)" if positive and drawn else ""))
        ax.set_title(f"{measure_name(q)}\n{drawn} of {len(analysis.done)} done runs have it", fontsize=9)
        handles = handles or ax.get_legend_handles_labels()[0]
        if not spare:
            ax.legend(fontsize=MIN_FONT)
    if spare and handles:
        legend_ax = fig.add_subplot(nrows, ncols, nrows * ncols)
        legend_ax.axis("off")
        legend_ax.legend(handles=handles, loc="center", fontsize=8, title="groups", frameon=False)
    return fig


def write_figures(analysis: Analysis, folder: Path) -> list[str]:
    """Draws every figure into `folder` as <name>.png and <name>.pdf; returns the names drawn."""
    built = [(FIG_RATIO, figure_ratio(analysis)), (FIG_CURVES, figure_curves(analysis)),
             (FIG_HEATMAP, figure_heatmap(analysis))]
    if analysis.sharpness_quantities:
        built.append((FIG_SHARPNESS, figure_sharpness(analysis)))
    # The figures drawn only when their runs exist (each draw returns None otherwise), in figure order.
    optional = ((FIG_EQUAL_RATIO, ratio_plots.figure_equal_ratio), (FIG_STEPS, scaling_plots.figure_steps),
                (FIG_STABILITY, stability_plots.figure_stability), (FIG_SDE, sde_plots.figure_sde),
                (FIG_SCHEDULES, schedule_plots.figure_schedules))
    built += [(name, fig) for name, draw in optional if (fig := draw(analysis)) is not None]
    return [save(fig, folder, name) for name, fig in built]
