"""Figure 9 of bin/correlate: test accuracy over training per schedule (lrbs_tf.analysis.schedules).

One row of two panels per comparison set: the test accuracy against the epoch (left) and against the
optimizer step (right), one colour per schedule, the line the mean over seeds and the band one s.d. either
side (line styles differ, so schedules that coincide for some epochs all show); the right panel shows how
many fewer updates a batch-size increase takes to the same epochs. Titles name the set's arch, dataset and
initial BS and LR; the report names every setting of each set.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from lrbs_tf.analysis.model import Analysis
from lrbs_tf.analysis.plots.style import new_figure

STYLES = ("-", "--", ":", "-.")  # schedules often coincide for epochs (a decay before a batch increase): all show


def figure_schedules(a: Analysis) -> Figure | None:
    """Figure 9; None when no run has a schedule."""
    s = a.schedules
    if s is None or s.curves.empty:
        return None
    sets = list(s.curves.groupby(s.set_cols, sort=True, dropna=False))
    fig = new_figure(len(sets), 2, 5.0, 3.4)
    for row, (keys, curves) in enumerate(sets):
        keys = keys if isinstance(keys, tuple) else (keys,)
        k = dict(zip(s.set_cols, keys))
        title = f"{k.get('arch')} on {k.get('dataset')}, initial BS {k['batch_size']:g}, LR {k['lr']:g}"
        for col, x in enumerate(("epoch", "step")):
            ax = fig.add_subplot(len(sets), 2, row * 2 + col + 1)
            for i, (text, c) in enumerate(curves.groupby("schedule", sort=True)):
                c = c.sort_values("epoch")
                mean, sd = c["test_accuracy_mean"].to_numpy(float), c["test_accuracy_sd"].fillna(0.0).to_numpy(float)
                xs = c[x].to_numpy(float)
                ax.plot(xs, mean, color=f"C{i}", lw=1.3, ls=STYLES[i % len(STYLES)],
                        label=f"{text} (n={int(c['n'].max())})")
                ax.fill_between(xs, mean - sd, mean + sd, color=f"C{i}", alpha=0.18, lw=0)
            ax.set_xlabel("epoch" if x == "epoch" else "optimizer step")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{title}\nvs {'epoch' if x == 'epoch' else 'optimizer step'}", fontsize=8)
            if col == 0:
                ax.legend(fontsize=6.5, loc="lower right", framealpha=0.6)
    return fig
