"""Figure 6 of bin/correlate: steps to result vs batch size (Shallue et al. 2019, Fig. 1; McCandlish et al.
2018, Fig. 2), log-log, one panel per group, with the perfect-scaling line and the fitted S(B).

Points: the fewest steps over learning rates at each batch size that reached the target (steps_to_result.csv);
batch sizes where no learning rate reached it are crosses on the top axis. The dotted line is perfect scaling
through the smallest batch size's point (steps halve as the batch doubles); the solid curve McCandlish's
S(B) = S_min (1 + B_crit / B) fitted to the points (scaling_fit.csv), with B_crit marked when identified.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from lrbs_tf.analysis.model import Analysis, key_value
from lrbs_tf.analysis.plots.style import MIN_FONT, log_axis, new_figure, panel_grid
from lrbs_tf.analysis.scaling_fit import predict
from lrbs_tf.core.text import plural


def _panel(ax, label: str, steps, fit: dict) -> None:
    have = steps[steps["min_steps"].notna()].sort_values("batch_size")
    b, s = have["batch_size"].to_numpy(float), have["min_steps"].to_numpy(float)
    ax.plot(b, s, "o", color="C0", ms=5, zorder=3, label="fewest steps over learning rates")
    if len(b):
        grid = np.geomspace(b.min(), b.max(), 100)
        ax.plot(grid, s[0] * b[0] / grid, ":", color="0.4", lw=1, label="perfect scaling (steps ∝ 1/B)")
    if math.isfinite(fit.get("s_min", math.nan)) and math.isfinite(fit.get("b_crit", math.nan)):
        grid = np.geomspace(b.min(), b.max(), 100)
        ax.plot(grid, predict(grid, fit["s_min"], fit["b_crit"]), "-", color="C1", lw=1.2,
                label=f"S_min (1 + B_crit/B): S_min={fit['s_min']:.3g}, B_crit={fit['b_crit']:.3g}")
        if b.min() / 2 <= fit["b_crit"] <= 2 * b.max():  # far outside, a line would squeeze the data
            ax.axvline(fit["b_crit"], color="C1", lw=0.8, ls="--")
    missing = steps[steps["min_steps"].isna()]["batch_size"].to_numpy(float)
    if len(missing):
        ax.scatter(missing, np.full(len(missing), 0.97), marker="x", color="C3", s=20, clip_on=False,
                   transform=blended_transform_factory(ax.transData, ax.transAxes),
                   label=f"not reached ({plural(len(missing), 'batch size')})")
    if len(b) or len(missing):
        ax.set_xscale("log")
        log_axis(ax, "x")
    if len(b):
        ax.set_yscale("log")
        log_axis(ax, "y")
    ax.set_xlabel("batch size")
    ax.set_ylabel("optimizer steps to the target")
    ax.set_title(f"{label}\n{fit.get('target', '')}", fontsize=9)
    ax.legend(fontsize=MIN_FONT)


def figure_steps(a: Analysis) -> Figure | None:
    """Figure 6; None without a target (bin/correlate --target_train_loss / --target_test_accuracy)."""
    s = a.steps_to_result
    if s is None or s.steps.empty:
        return None
    fits = {tuple(key_value(r[c]) for c in a.group_cols): r for r in s.fit.to_dict("records")}
    groups = list(a.groups(s.steps))
    nrows, ncols = panel_grid(len(groups), 3)
    fig = new_figure(nrows, ncols, 4.6, 3.8)
    for i, (keys, label, g) in enumerate(groups):
        _panel(fig.add_subplot(nrows, ncols, i + 1), label, g, fits.get(tuple(keys.values()), {}))
    return fig
