"""Figure 7 of bin/correlate: curvature over training against the stability limit 2/lr (issue 24).

One row of panels per group, one panel per batch size; in each, one colour per run (its learning rate),
lambda_max x lr/2 solid with dots at the measured checkpoints and batch sharpness x lr/2 dashed, against the
optimizer step (log scale: the checkpoints are often geometrically spaced), with the stability line at 1.
Drawn from the runs' curvature.csv (stability.Stability.trajectories).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lrbs_tf.analysis.model import Analysis, iter_groups
from lrbs_tf.analysis.plots.style import MIN_FONT, line_cmap, log_axis, new_figure


def figure_stability(a: Analysis) -> Figure | None:
    """Figure 7; None when no run has a curvature.csv."""
    st = a.stability
    if st is None or st.runs.empty:
        return None
    groups = [(label, g) for _, label, g in iter_groups(st.runs, st.group_cols, st.labels)]
    ncols = max(g["batch_size"].nunique() for _, g in groups)
    fig = new_figure(len(groups), ncols, 4.0, 3.2)
    cmap = line_cmap("viridis")
    for row, (label, g) in enumerate(groups):
        lrs = sorted(g["lr"].unique())
        colours = {lr: cmap(i / max(1, len(lrs) - 1)) for i, lr in enumerate(lrs)}
        for col, (bs, sub) in enumerate(g.groupby("batch_size", sort=True)):
            ax = fig.add_subplot(len(groups), ncols, row * ncols + col + 1)
            for run in sub.to_dict("records"):
                t = st.trajectories[run["run_dir"]]
                step = t["step"].where(t["step"].notna(), t["epoch"]).to_numpy(float)
                c = colours[run["lr"]]
                ax.plot(step, t["stability_ratio"], "-o", color=c, ms=2.5, lw=1.1, label=f"lr {run['lr']:g}: largest Hessian eigenvalue")
                if t["batch_sharpness_ratio"].notna().any():
                    ax.plot(step, t["batch_sharpness_ratio"], "--", color=c, lw=1.1, label=f"lr {run['lr']:g}: batch sharpness")
            ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
            if np.nanmin(sub["last_step"].to_numpy(float)) > 0:
                ax.set_xscale("log")
                log_axis(ax, "x")
                ax.tick_params(axis="x", labelrotation=40, labelsize=MIN_FONT)  # 1-2-5 ticks over 20-6,000 steps
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("curvature x lr/2 (1: the limit 2/lr)")
            ax.set_title(f"{label}\nbatch size {bs}", fontsize=9)
            if col == 0:  # one legend a row: the colours and line styles are the same in every panel
                ax.legend(fontsize=MIN_FONT, loc="best", framealpha=0.6)
    return fig
