"""How bin/correlate's figures look: readable log ticks, colour maps that stay visible on white, panel grids
without empty panels, text that reads on any heatmap colour.

Speed matters (1,600 runs are drawn in seconds): ticks are placed explicitly (FixedLocator) with plain text
labels, so matplotlib neither searches for tick positions nor renders mathtext, and there are no minor ticks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lrbs_tf.core import figures

# Mantissas tried in turn until an axis gets at least MIN_TICKS labelled ticks: BS/LR 178-1600 spans less
# than a decade, where decades alone would label only '1000'.
MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))
MIN_TICKS, MAX_TICKS = 3, 7
DPI = 110
MIN_FONT = 8  # points: the smallest text of any figure (legends, ticks, cell values)
LINE_MAP_TOP = 0.8  # colour maps for lines stop here: viridis and plasma end in a yellow that vanishes on white


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions for a log axis over [lo, hi] (both > 0): decades, or 1-2-5 and finer mantissas when the
    range is short, at least MIN_TICKS of them where possible and at most MAX_TICKS (decades thinned)."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for mantissas in MANTISSAS:
        ticks = [float(f"{m * 10.0 ** k:.12g}") for k in range(first, last + 1) for m in mantissas
                 if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)]
        if len(ticks) > MAX_TICKS:  # only decades can be too many: finer mantissas are tried on short ranges
            return ticks[::math.ceil(len(ticks) / MAX_TICKS)]
        if len(ticks) >= MIN_TICKS:
            return ticks
    if len(ticks) < 2:  # a range too short for any mantissa: its ends, rounded to 3 digits
        ticks = sorted({float(f"{v:.3g}") for v in (lo, math.sqrt(lo * hi), hi)})
    return ticks


def tick_label(value: float, _pos: object = None) -> str:
    return f"{value:g}"


def log_axis(ax, which: str = "x") -> None:
    """Puts readable log ticks on axis `which` ('x' or 'y') of `ax`, already on a log scale with its data."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(tick_label))


def line_cmap(name: str) -> colors.Colormap:
    """`name` cut at LINE_MAP_TOP, for lines and points on a white background."""
    return colors.ListedColormap(colormaps[name](np.linspace(0.0, LINE_MAP_TOP, 256)), name=f"{name}_lines")


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads on a cell of colour `rgba` (relative luminance, ITU-R BT.709)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for n panels with the fewest empty slots (1 x n up to max_cols, then rows of max_cols or
    fewer columns, whichever leaves fewer slots empty)."""
    if n <= max_cols:
        return 1, max(n, 1)
    best = min(range(2, max_cols + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))
    return math.ceil(n / best), best


def new_figure(nrows: int, ncols: int, width: float, height: float) -> Figure:
    """A figure of nrows x ncols panels of width x height inches each, with room for two-line titles."""
    fig = Figure(figsize=(width * ncols, height * nrows))
    fig.subplots_adjust(left=0.75 / (width * ncols) + 0.05, right=0.97,
                        bottom=0.55 / (height * nrows) + 0.02, top=1 - 0.55 / (height * nrows),
                        wspace=0.45, hspace=0.75)
    return fig


def save(fig: Figure, folder: Path, name: str) -> str:
    """Writes `fig` as folder/name.png and .pdf; returns `name`."""
    # Fixed margins (new_figure) already fit the labels: a tight bounding box would draw every figure twice.
    figures.save(fig, folder / name, dpi=DPI, tight=False)
    return name
