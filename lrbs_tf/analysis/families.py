"""Multiple-testing families: which p-values bin/correlate adjusts together, and the count of each.

A family is one claim tested in one group (arch, dataset and the --group_by settings):

| kind | tests in a group | claim |
|---|---|---|
| `table1` | Table 1, one test per learning rate | accuracy falls with the batch size (He et al.) |
| `table2` | Table 2, one per batch size | accuracy rises with the learning rate |
| `table3` | Table 3's `primary` row: `cell_means` with seeds, else `column_permutation` (all done runs, p permuted within batch-size columns) | accuracy falls with BS/LR |
| `table3_sensitivity` | Table 3's other rows (`with_flagged`, `without_flagged`, the other of `cell_means` / `column_permutation`, `diverged_worst`) | the same, re-analysed |
| `sharpness` | each quantity vs BS/LR and vs accuracy, all done runs | curvature follows the ratio |
| `sharpness_sensitivity` | the same without the flagged runs | |
| `ratio_test` | ratio sufficiency, one test per measure | only BS/LR matters |
| `ratio_invariance` | equal-ratio invariance, one per measure | equal ratios end alike |

He et al.'s 164 tests are the first three kinds over their four groups (4 x (20 + 20 + 1)). Families are
per group so that what else sits in a results folder never changes a group's adjustment, and Table 3 is
counted once (its sensitivity rows re-test the same hypothesis on other data, so they are adjusted among
themselves, not added to the primary family). Each statistic's p-values form their own family (Spearman,
Pearson and Kendall are alternative tests of one hypothesis, as are p_ratio (the primary test),
p_ratio_linear, p_ratio_quadratic and p_ratio_cell_means, and p_permutation (cells) and p_permutation_runs). Untestable rows (NaN p) are not counted. Holm (family-wise error rate) and
Benjamini-Hochberg (false discovery rate) from statsmodels' multipletests, through stats.adjust_pvalues.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from lrbs_tf.analysis import stats
from lrbs_tf.analysis.model import PRIMARY_SUBSET

KINDS = ("table1", "table2", "table3", "table3_sensitivity", "sharpness", "sharpness_sensitivity",
         "ratio_test", "ratio_invariance")
PRIMARY_KINDS = ("table1", "table2", "table3")  # He et al.'s tests
CORRELATION_P = tuple(stats.P_COLUMN[s] for s in stats.STATISTICS)
# p-value columns of each table, and the column saying whether the raw p is below alpha.
P_COLUMNS = {"table1": CORRELATION_P, "table2": CORRELATION_P, "table3": CORRELATION_P,
             "sharpness": CORRELATION_P, "ratio_test": ("p_ratio", "p_ratio_linear", "p_ratio_quadratic",
                                                               "p_ratio_cell_means"),
             "ratio_invariance": ("p_permutation", "p_permutation_runs")}
SIGNIFICANT = {**{stats.P_COLUMN[s]: f"{s}_significant" for s in stats.STATISTICS},
               "p_ratio": "p_ratio_significant", "p_ratio_linear": "p_ratio_linear_significant",
               "p_ratio_quadratic": "p_ratio_quadratic_significant",
               "p_ratio_cell_means": "p_ratio_cell_means_significant",
               "p_permutation": "p_permutation_significant",
               "p_permutation_runs": "p_permutation_runs_significant"}
# The smallest p a row's test could return, where known (small exact tests cannot go below it).
MIN_P = {"spearman_p": "spearman_min_p", "p_permutation": "min_attainable_p"}


def kind_of(table: str, row: Mapping) -> str:
    """The family kind of one test row of `table` ('table1' ... 'ratio_invariance')."""
    if table == "table3" and "primary" in row:
        return table if row["primary"] else f"{table}_sensitivity"
    if table in ("table3", "sharpness"):
        return table if row["subset"] == PRIMARY_SUBSET else f"{table}_sensitivity"
    return table


def family_name(kind: str, label: str) -> str:
    return f"{kind} | {label}"


def adjust(tables: dict[str, pd.DataFrame], label: Callable[[Mapping], str], group_cols: list[str],
           alpha: float) -> pd.DataFrame:
    """Adds `family`, the Holm and BH adjusted p-values within each family, and `<stat>_significant`
    (raw p < alpha) to every table in place; returns one row per family and statistic (families.csv)."""
    summary = []
    for name, t in tables.items():
        if t.empty:
            continue
        records = t.to_dict("records")
        kinds = [kind_of(name, r) for r in records]
        groups = [label(r) for r in records]
        families = np.array([family_name(k, g) for k, g in zip(kinds, groups)], dtype=object)
        t.insert(len(group_cols), "family", families)
        for pcol in P_COLUMNS[name]:
            p = t[pcol].to_numpy(float)
            out = {m: np.full(len(t), math.nan) for m in stats.ADJUSTMENTS}
            for fam in dict.fromkeys(families):
                members = families == fam
                for m in stats.ADJUSTMENTS:
                    out[m][members] = stats.adjust_pvalues(p[members], m)
                first = int(np.flatnonzero(members)[0])
                row = _summary_row(t[members], fam, kinds[first], groups[first], pcol, out["holm"][members],
                                   out["bh"][members], alpha)
                # A secondary statistic with nothing to test (p_ratio_cell_means without seeds) is no family;
                # the first statistic of a table is listed even when untestable, so a reader sees why.
                if row["tests"] or pcol == P_COLUMNS[name][0]:
                    summary.append(row)
            at = t.columns.get_loc(pcol)
            t.insert(at + 1, f"{pcol}_holm", out["holm"])
            t.insert(at + 2, f"{pcol}_bh", out["bh"])
            t.insert(at + 3, SIGNIFICANT[pcol], p < alpha)
    frame = pd.DataFrame(summary)
    if frame.empty:
        return frame
    order = {k: i for i, k in enumerate(KINDS)}
    frame["_order"] = frame["kind"].map(order)
    return frame.sort_values(["group", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _summary_row(rows: pd.DataFrame, family: str, kind: str, group: str, pcol: str, holm: np.ndarray,
                 bh: np.ndarray, alpha: float) -> dict:
    p = rows[pcol].to_numpy(float)
    tested = np.isfinite(p)
    m = int(tested.sum())
    floor = rows[MIN_P[pcol]].to_numpy(float)[tested] if pcol in MIN_P and MIN_P[pcol] in rows else np.array([])
    smallest_attainable = float(floor.min()) if len(floor) else math.nan
    return {"family": family, "kind": kind, "group": group, "statistic": pcol, "tests": m,
            "untestable": int((~tested).sum()), "raw_significant": int((p[tested] < alpha).sum()),
            "holm_significant": int((holm[tested] < alpha).sum()), "bh_significant": int((bh[tested] < alpha).sum()),
            "holm_threshold": alpha / m if m else math.nan,
            "min_p": float(p[tested].min()) if m else math.nan, "min_attainable_p": smallest_attainable}
