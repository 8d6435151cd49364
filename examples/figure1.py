"""Figure 1 of He et al. (2019), redrawn from a study's run folders with the Python API.

    .venv/bin/python examples/figure1.py                                   # outputs/quick -> outputs/quick/figure1.png
    .venv/bin/python examples/figure1.py --results=outputs/mine --out=mine.png

Best test accuracy against BS/LR (batch size / learning rate) for every finished run: the paper's claim is
that it falls as the ratio grows. Each point is one run, coloured by its batch size; a hollow point is a run
whose final training accuracy stayed below 0.99 (the paper assumes near-zero training error). The title
gives Spearman's rho over all points, as bin/correlate's Table 3 does. Only lrbs_tf.load_runs, pandas,
scipy and matplotlib are used: a template for your own figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lrbs_tf  # noqa: E402
from lrbs_tf.core.errors import UsageError  # noqa: E402
from lrbs_tf.core.text import plural  # noqa: E402


def figure1(results: str | Path, out: str | Path) -> pd.DataFrame:
    """Draws Figure 1 for the runs below `results` into `out` (PNG, or PDF by its suffix); returns the
    points drawn: one row per done run, with its ratio, best test accuracy and batch size."""
    runs = lrbs_tf.load_runs(results)
    done = runs[runs["status"] == "done"].sort_values(["batch_size", "lr"])
    if done.empty:
        raise UsageError(f"no finished run (status done) below {results}")
    rho, p = stats.spearmanr(done["ratio"], done["best_test_accuracy"])

    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    # viridis without its palest yellow, so every batch size stays visible on white.
    sizes = sorted(done["batch_size"].unique())
    cmap = colors.ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
    norm = colors.Normalize(min(sizes), max(sizes) if len(sizes) > 1 else min(sizes) + 1)
    premise = done["reached_min_train_accuracy"].to_numpy(bool)
    colour = cmap(norm(done["batch_size"].to_numpy(float)))
    ax.scatter(done["ratio"][premise], 100 * done["best_test_accuracy"][premise], c=colour[premise], s=28)
    ax.scatter(done["ratio"][~premise], 100 * done["best_test_accuracy"][~premise], facecolors="none",
               edgecolors=colour[~premise], s=28, label="final train accuracy < 0.99")
    if (~premise).any():
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xscale("log")
    # Labels at 1, 2 and 5 of every decade: a 178-1600 range gets 200, 500, 1000 instead of one "1000".
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size / learning rate")
    ax.set_ylabel("best test accuracy (%)")
    ax.set_title(f"{', '.join(sorted(done['arch'].unique()))} on {', '.join(sorted(done['dataset'].unique()))}: "
                 f"Spearman rho = {rho:.2f} (p = {p:.1e}, n = {len(done)})", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)  # the points' batch size -> colour
    bar.set_label("batch size")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return done[["run_dir", "batch_size", "lr", "ratio", "best_test_accuracy", "reached_min_train_accuracy"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="outputs/quick", help="folder of run folders (default: %(default)s)")
    parser.add_argument("--out", default=None, help="image file to write (default: <results>/figure1.png, "
                        "beside the runs, never the checkout's root)")
    args = parser.parse_args()
    args.out = args.out or str(Path(args.results) / "figure1.png")
    try:
        points = figure1(args.results, args.out)
    except UsageError as e:
        parser.exit(2, f"figure1: error: {e}\n")
    rho, p = stats.spearmanr(points["ratio"], points["best_test_accuracy"])
    print(f"figure1: {plural(len(points), 'run')}, Spearman rho = {rho:.2f} (p = {p:.1e}); wrote {args.out}")


if __name__ == "__main__":
    main()
