"""Does the ratio alone govern? bin/correlate's per-group tables of seeds, cells and equal-ratio runs.

- `cell_table` (cells.csv): one row per (group, BS, LR) cell with the mean and s.d. (ddof=1) over its done
  runs (its seeds) of the best test accuracy and of each sharpness quantity.
- `noise_table`: per group and measure, the pooled within-cell s.d. (the seed noise) beside the range the
  cell means span, so a reader can tell an effect of BS or LR from the noise of one seed.
- `ratio_test_table` (ratio_test.csv): lrbs_tf.analysis.ratio_stats.ratio_sufficiency per group and measure.
- `invariance_table` (ratio_invariance.csv): lrbs_tf.analysis.ratio_stats.invariance_test per group and measure, and
  `equal_ratio_table`, per shared ratio, what the figure of equal-ratio curves and the report show.

Accuracy is analysed as a fraction; each sharpness quantity on a natural-log scale where all its values are
positive (so a coefficient is an elasticity: d ln(lambda_max) / d ln(BS)), on its own scale otherwise
(column `transform`). Only done runs are analysed; Tables 1-2 include runs below the premise, so do these.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis import cell_tests, ratio_stats
from lrbs_tf.analysis.model import iter_groups
from lrbs_tf.runs.table import TARGET

CELL = ["batch_size", "lr"]


def measure_values(frame: pd.DataFrame, measure: str) -> tuple[np.ndarray, str]:
    """The values a ratio analysis uses for `measure`, and the transform applied ('identity' or 'log')."""
    values = frame[measure].to_numpy(float)
    finite = values[np.isfinite(values)]
    if measure != TARGET and len(finite) and (finite > 0).all():
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(values), "log"
    return values, "identity"


def cell_table(runs: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
               quantities: Sequence[str]) -> pd.DataFrame:
    """cells.csv: every (group, BS, LR) cell of `runs` (any status), its seeds, means and s.d. of done runs.

    n_seeds: done runs in the cell; n_diverged / n_failed: runs that ended so; n_flagged: done runs below
    the premise; sd_*: ddof=1, NaN below 2 values.
    """
    known = runs[runs["arch"].notna() & runs["dataset"].notna() & runs["batch_size"].notna()
                 & runs["lr"].notna()]
    measures = [TARGET, *quantities]
    frames = []
    for keys, _, g in iter_groups(known, group_cols, labels):
        done = g["status"] == "done"
        g = g.assign(_done=done, _diverged=g["status"] == "diverged", _failed=g["status"] == "failed",
                     _flagged=done & ~g["reached_min_train_accuracy"].astype(bool),
                     **{f"_{m}": g[m].where(done) for m in measures})
        agg = {"ratio": ("ratio", "first"), "n_seeds": ("_done", "sum"), "n_diverged": ("_diverged", "sum"),
               "n_failed": ("_failed", "sum"), "n_flagged": ("_flagged", "sum")}
        for m in measures:
            agg[f"mean_{m}"] = (f"_{m}", "mean")
            agg[f"sd_{m}"] = (f"_{m}", "std")  # pandas: ddof=1, NaN for a single value
        cells = g.groupby(CELL, sort=True).agg(**agg).reset_index()
        frames.append(cells.assign(**keys)[[*keys, *cells.columns]])
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    for col in ("n_seeds", "n_diverged", "n_failed", "n_flagged"):
        out[col] = out[col].astype(int)
    out["batch_size"] = out["batch_size"].astype(int)
    return out


def pooled_sd(values: np.ndarray, cells: np.ndarray) -> tuple[float, int, int]:
    """Pooled within-cell s.d. sqrt(sum_c (n_c - 1) s_c^2 / sum_c (n_c - 1)) over cells with >= 2 finite
    values; returns (s.d., degrees of freedom sum_c (n_c - 1), cells used). NaN, 0, 0 without seeds."""
    frame = pd.DataFrame({"v": values, "c": cells}).dropna()
    stats = frame.groupby("c")["v"].agg(["count", "var"])
    stats = stats[stats["count"] >= 2]
    df = int((stats["count"] - 1).sum())
    if not df:
        return math.nan, 0, 0
    return float(math.sqrt(((stats["count"] - 1) * stats["var"]).sum() / df)), df, len(stats)


def _cell_codes(frame: pd.DataFrame) -> np.ndarray:
    return np.array([f"{b}|{l!r}" for b, l in zip(frame["batch_size"], frame["lr"])])


def noise_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
                quantities: Sequence[str]) -> pd.DataFrame:
    """Per group and measure (on its own scale): the seed noise and the span of the cell means."""
    rows = []
    for keys, _, g in iter_groups(done, group_cols, labels):
        codes = _cell_codes(g)
        for m in (TARGET, *quantities):
            values = g[m].to_numpy(float)
            sd, df, used = pooled_sd(values, codes)
            means = pd.Series(values).groupby(codes).mean().dropna()
            span = float(means.max() - means.min()) if len(means) else math.nan
            rows.append({**keys, "measure": m, "cells": int(len(means)), "cells_with_seeds": used,
                         "pooled_sd": sd, "df": df, "cell_mean_min": float(means.min()) if len(means) else math.nan,
                         "cell_mean_max": float(means.max()) if len(means) else math.nan, "cell_mean_range": span,
                         "range_over_sd": span / sd if sd > 0 else math.nan})
    return pd.DataFrame(rows)


def cell_means(g: pd.DataFrame, measure: str = TARGET) -> pd.DataFrame:
    """One row per (BS, LR) cell of the done runs `g`: the ratio and the mean of `measure` over its runs."""
    return g.groupby(CELL, sort=True).agg(ratio=("ratio", "first"), **{measure: (measure, "mean")}).reset_index()


def ratio_test_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
                     quantities: Sequence[str]) -> pd.DataFrame:
    """ratio_test.csv: the ratio-sufficiency tests per group and measure, unadjusted.

    `p_ratio` is the primary test's p (lrbs_tf.analysis.cell_tests.ratio_primary; `p_ratio_method` names it); the
    linear model of ratio_stats.ratio_sufficiency stays as `p_ratio_linear` (its `reason`: `linear_reason`),
    with its quadratic and cell-means variants, as sensitivity columns."""
    rows = []
    for keys, _, g in iter_groups(done, group_cols, labels):
        for m in (TARGET, *quantities):
            values, transform = measure_values(g, m)
            bs, lr = g["batch_size"].to_numpy(float), g["lr"].to_numpy(float)
            fit = ratio_stats.ratio_sufficiency(bs, lr, values).as_dict()
            fit["p_ratio_linear"] = fit.pop("p_ratio")
            fit["linear_reason"] = fit.pop("reason")
            primary = cell_tests.ratio_primary(bs, lr, g["seed"].to_numpy(object), values,
                                               g["ratio"].to_numpy(float)).as_dict()
            reason = primary.pop("primary_reason")
            rows.append({**keys, "measure": m, "transform": transform, "p_ratio": primary.pop("p_ratio"),
                         "p_ratio_method": primary.pop("p_ratio_method"), **primary, **fit,
                         "n_missing": int((~np.isfinite(values)).sum()), "reason": reason})
    return pd.DataFrame(rows)


def invariance_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
                     quantities: Sequence[str]) -> pd.DataFrame:
    """ratio_invariance.csv: the equal-ratio invariance test per group and measure, unadjusted.

    The unit is the cell: with seeds, the test runs on the cell means, permuting whole cells (a seed's runs
    share randomness, and a cell's effect is shared by its seeds, so single runs are not exchangeable);
    `p_permutation_runs` is the run-level test (sensitivity), `mad_same_cell` and `n_same_cell_pairs` the
    seeds' noise floor from the runs. With one run per cell the two are the same test (`unit` says which)."""
    rows = []
    for keys, _, g in iter_groups(done, group_cols, labels):
        cells = list(zip(g["batch_size"], g["lr"]))
        codes = _cell_codes(g)
        seeded = len(set(codes)) < len(codes)
        for m in (TARGET, *quantities):
            values, transform = measure_values(g, m)
            runs = ratio_stats.invariance_test(values, g["ratio"].to_numpy(float), cells)
            row = runs.as_dict()
            if seeded:
                frame = pd.DataFrame({"c": codes, "v": values, "r": g["ratio"].to_numpy(float)})
                frame = frame[np.isfinite(frame["v"])]
                means = frame.groupby("c", sort=True).agg(v=("v", "mean"), r=("r", "first"))
                row = ratio_stats.invariance_test(means["v"].to_numpy(float), means["r"].to_numpy(float),
                                                  list(means.index)).as_dict()
                row.update(mad_same_cell=runs.mad_same_cell, n_same_cell_pairs=runs.n_same_cell_pairs)
            rows.append({**keys, "measure": m, "transform": transform, "unit": "cell_means" if seeded else "runs",
                         **row, "p_permutation_runs": runs.p_permutation})
    return pd.DataFrame(rows)


def equal_ratio_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str]) -> pd.DataFrame:
    """Per group and BS/LR value shared by >= 2 cells: its cells, runs, and the best test accuracy's mean
    absolute difference over its equal-ratio pairs and over its pairs with the neighbouring ratios."""
    rows = []
    for keys, _, g in iter_groups(done, group_cols, labels):
        ratios = g["ratio"].to_numpy(float)
        values = g[TARGET].to_numpy(float)
        pairs = ratio_stats.invariance_pairs(ratios, list(zip(g["batch_size"], g["lr"])))
        for r in pairs.shared_ratios:
            eq = pairs.equal[ratios[pairs.equal[:, 0]] == r]
            # A neighbour pair touches r at exactly one end (its other end is the next ratio below or above).
            nb = pairs.neighbour[(ratios[pairs.neighbour[:, 0]] == r) | (ratios[pairs.neighbour[:, 1]] == r)]
            sub = g[ratios == r]
            cells = sorted(set(zip(sub["batch_size"], sub["lr"])))
            rows.append({**keys, "ratio": r, "cells": ", ".join(f"({b}, {l:g})" for b, l in cells),
                         "n_cells": len(cells), "n_runs": len(sub),
                         "mad_equal_ratio": float(ratio_stats.mean_abs_difference(values, eq)),
                         "mad_neighbour_ratio": float(ratio_stats.mean_abs_difference(values, nb))})
    return pd.DataFrame(rows)
