"""Is SGD described by its SDE here? bin/correlate's comparison of runs that differ only in SVAG's l (issue 25).

SVAG (Li, Malladi & Arora, NeurIPS 2021; bin/train --svag=l) simulates the SDE of SGD ever more closely as l
grows, at the same SDE time per epoch. Where plain SGD (l = 1) and the largest l end alike, the SDE (and the
linear scaling rule it implies) describes SGD in that cell; where they differ, the discrete steps matter.

Per cell (arch, dataset, the group's other settings, batch size, lr; pooled over `svag`, whatever
--group_by says), `sde.csv` holds, for each l, the mean and s.d. over seeds of the best test accuracy and the
final training loss, and the test of l = 1 against the largest l:

- the *seed-paired t*: a seed's runs at the two l share their initial weights (bin/train seeds them alike), so
  the unit is the paired difference d_s = y(l = 1, s) - y(l_max, s) over the seeds both have; the seed noise of
  d is pooled over the cells of the group (s^2 = sum of squared deviations of d from its cell's mean / sum of
  (seeds - 1)), since two seeds give a single degree of freedom per cell; t = mean d / (s / sqrt(seeds)) on the
  pooled degrees of freedom. Accuracy on its own scale, the training loss on a log scale (it spans decades).
- Holm over every cell and both measures of a group (one family); a cell *fails* when either measure's
  adjusted p is below SDE_ALPHA (0.05: a lenient threshold, so that calling a cell valid is the harder
  verdict; not rejecting is no proof of equality, and `diff_*` with `se_*` say how large a difference could
  hide). Its size under the null with shared initialisation and column shocks is recorded in
  benchmarks/calibration.md (section SDE): about alpha when every cell has the same seed noise, inflated when
  the noise differs between cells (pooling then understates a noisy cell's), so `p_cell_*`, each cell's own
  paired t (seeds - 1 degrees of freedom: valid under any noise, weak at two seeds), and `sd_diff_*`, its
  seeds' spread, stand beside it.
- A cell where a run of one l diverged and the other's did not fails without a test (`note` says so).

The ratio test (lrbs_tf.analysis.ratio.ratio_test_table) is then repeated on the l = 1 runs of the cells where
the approximation holds (`ratio_test`). No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from lrbs_tf.analysis import ratio, stats
from lrbs_tf.analysis.model import group_keys, group_labels
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.config import DEFAULTS
from lrbs_tf.runs.table import TARGET

SDE_FILE = "sde.csv"
FILES = (SDE_FILE,)
SVAG = "svag"
SDE_ALPHA = 0.05
LOSS = "final_train_loss"
MEASURES = (TARGET, LOSS)  # the training loss is tested on a log scale
TEST_METHOD = "seed_paired_t_pooled"


@dataclasses.dataclass
class SDE:
    cells: pd.DataFrame        # sde.csv: one row per cell
    runs: pd.DataFrame         # the runs compared, with their svag (Figure 8)
    group_cols: list[str]      # the cell's group columns (svag left out)
    labels: dict[tuple, str]
    ratio_test: pd.DataFrame   # the ratio test on the l = 1 runs of the cells where the SDE holds
    ratio_test_all: pd.DataFrame  # the same test on the l = 1 runs of every compared cell

    def texts(self) -> dict[str, str]:
        return {SDE_FILE: self.cells.to_csv(index=False)} if len(self.cells) else {}


def paired_seed_t(diffs: Sequence[np.ndarray]) -> pd.DataFrame:
    """The seed-paired t of each cell from its paired differences `diffs[c]` (one per shared seed), with the
    noise pooled over the cells: columns diff (mean), se, t, df (pooled), p (two-sided). A cell with no
    difference gets NaN; every p is NaN when the pool has no degree of freedom."""
    diffs = [np.asarray(d, float)[np.isfinite(np.asarray(d, float))] for d in diffs]
    df = sum(max(len(d) - 1, 0) for d in diffs)
    ss = sum(float(np.sum((d - d.mean()) ** 2)) for d in diffs if len(d) > 1)
    s2 = ss / df if df else math.nan
    rows = []
    for d in diffs:
        mean = float(d.mean()) if len(d) else math.nan
        se = math.sqrt(s2 / len(d)) if len(d) and df else math.nan
        t = mean / se if se and math.isfinite(se) else math.nan
        p = float(2 * sps.t.sf(abs(t), df)) if math.isfinite(t) else math.nan
        rows.append({"diff": mean, "se": se, "t": t, "df": df, "p": p})
    return pd.DataFrame(rows, columns=["diff", "se", "t", "df", "p"])


def cell_paired_p(diffs: np.ndarray) -> float:
    """The sensitivity p of one cell: the paired t on its own differences alone (seeds - 1 degrees of freedom;
    valid whatever the other cells' noise, with little power at two seeds); NaN below two seeds."""
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    if len(d) < 2 or not np.std(d) > 0:
        return math.nan
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def with_svag(runs: pd.DataFrame, configs: dict[str, dict]) -> pd.DataFrame:
    """`runs` with a `svag` column from each run's config.json (an older one without the key: 1)."""
    default = DEFAULTS[SVAG]
    values = [configs.get(d, {}).get(SVAG, default) for d in runs["run_dir"]]
    return runs.assign(**{SVAG: pd.to_numeric(pd.Series(values, index=runs.index), errors="coerce")})


def _measure(frame: pd.DataFrame, m: str) -> pd.Series:
    values = frame[m].astype(float)
    if m == LOSS:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values.where(values > 0))
    return values


def _cell_row(cell: pd.DataFrame, levels: list[int]) -> tuple[dict, dict]:
    """One sde.csv row's descriptive columns, and the paired differences per measure (l = 1 minus the
    largest l) over the seeds both have."""
    row: dict = {"svag_levels": ",".join(str(v) for v in levels)}
    done = cell[cell["status"] == rf.STATUS_DONE]
    for level in levels:
        at = done[done[SVAG] == level]
        row[f"n_l{level}"] = len(at)
        row[f"n_diverged_l{level}"] = int(((cell[SVAG] == level) & (cell["status"] == rf.STATUS_DIVERGED)).sum())
        for m, short in ((TARGET, "acc"), (LOSS, "loss")):
            row[f"{short}_mean_l{level}"] = float(at[m].mean()) if len(at) else math.nan
            row[f"{short}_sd_l{level}"] = float(at[m].std(ddof=1)) if len(at) > 1 else math.nan
    low, high = levels[0], levels[-1]
    a = done[done[SVAG] == low].set_index("seed")
    b = done[done[SVAG] == high].set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    row["seeds_paired"] = len(seeds)
    diffs = {m: (_measure(a.loc[seeds], m) - _measure(b.loc[seeds], m)).to_numpy(float) for m in MEASURES}
    return row, diffs


def _note(row: dict, low: int, high: int) -> str:
    d_low, d_high = row[f"n_diverged_l{low}"], row[f"n_diverged_l{high}"]
    if (d_low > 0) != (d_high > 0):
        return f"diverged at l={low if d_low else high} only ({max(d_low, d_high)} run(s))"
    if row["seeds_paired"] == 0:
        return f"no seed done at both l={low} and l={high}"
    return ""


def compare(runs: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """sde.csv from `runs` (with_svag's `svag` column) over the cells whose runs hold at least two values of
    svag; `group_cols`: the analysis's group columns (svag among them or not: it is pooled here)."""
    cols = [c for c in group_cols if c != SVAG]
    known = runs[runs["arch"].notna() & runs["dataset"].notna() & runs[SVAG].notna()
                 & runs["status"].isin((rf.STATUS_DONE, rf.STATUS_DIVERGED))]
    # Each (cell, l, seed) once: a copied or rerun folder does not count twice (the first by run_dir, as
    # correlate.merge_duplicates keeps; that one reads runs of another l as duplicates unless svag is grouped).
    known = known.sort_values("run_dir").drop_duplicates([*cols, *ratio.CELL, SVAG, "seed"])
    if known.empty:
        return pd.DataFrame()
    labels = group_labels(known, cols)
    keys = group_keys(known, cols)
    rows: list[dict] = []
    tests: list[tuple[int, str, np.ndarray]] = []  # (row index, measure, paired differences)
    for key in sorted(set(keys), key=lambda k: tuple(str(v) for v in k)):
        g = known[keys == key]
        for (bs, lr), cell in g.groupby(ratio.CELL, sort=True):
            levels = sorted(int(v) for v in cell[SVAG].unique())
            if len(levels) < 2:
                continue
            row, diffs = _cell_row(cell, levels)
            row = {**dict(zip(cols, key)), "group": labels[key], "batch_size": int(bs), "lr": float(lr),
                   "ratio": float(cell["ratio"].iloc[0]), "l_low": levels[0], "l_high": levels[-1], **row,
                   "note": _note(row, levels[0], levels[-1])}
            rows.append(row)
            for m in MEASURES:
                tests.append((len(rows) - 1, m, diffs[m] if not row["note"] else np.empty(0)))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return _tested(frame, tests)


def _tested(frame: pd.DataFrame, tests: list[tuple[int, str, np.ndarray]]) -> pd.DataFrame:
    """Adds each measure's paired test (pooled per group and measure) and the verdict (Holm per group)."""
    short = {TARGET: "acc", LOSS: "log_loss"}
    for group in frame["group"].unique():
        in_group = [t for t in tests if frame.at[t[0], "group"] == group]
        for m in MEASURES:
            picked = [t for t in in_group if t[1] == m]
            result = paired_seed_t([d for *_, d in picked])
            for (i, _, d), r in zip(picked, result.to_dict("records")):
                for k, v in r.items():
                    frame.loc[i, f"{k}_{short[m]}"] = v
                frame.loc[i, f"sd_diff_{short[m]}"] = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
                frame.loc[i, f"p_cell_{short[m]}"] = cell_paired_p(d)
    frame["test"] = TEST_METHOD
    frame["alpha"] = SDE_ALPHA
    for group in frame["group"].unique():
        idx = frame.index[frame["group"] == group]
        p = np.concatenate([frame.loc[idx, f"p_{short[m]}"].to_numpy(float) for m in MEASURES])
        holm = stats.adjust_pvalues(p, "holm").reshape(len(MEASURES), len(idx))
        for j, m in enumerate(MEASURES):
            frame.loc[idx, f"p_holm_{short[m]}"] = holm[j]
    tested = frame[[f"p_holm_{short[m]}" for m in MEASURES]].notna().all(axis=1)
    rejected = (frame[[f"p_holm_{short[m]}" for m in MEASURES]] < SDE_ALPHA).any(axis=1)
    diverged_apart = frame["note"].str.startswith("diverged")
    frame["sde_holds"] = np.where(diverged_apart | rejected, "no", np.where(tested, "yes", "untested"))
    return frame


def compute(runs: pd.DataFrame, configs: dict[str, dict], group_cols: Sequence[str],
            labels: dict[tuple, str]) -> SDE | None:
    """The SDE comparison of the runs below bin/correlate's --results; None when no cell has runs at two
    values of svag. `labels`: the analysis's group labels (for the ratio tests on the l = 1 runs)."""
    runs = with_svag(runs, configs)
    cells = compare(runs, group_cols)
    if cells.empty:
        return None
    done = runs[(runs["status"] == rf.STATUS_DONE) & (runs[SVAG] == 1)]
    cols = [c for c in group_cols if c != SVAG]
    cell_keys = set(zip(group_keys(cells, cols), cells["batch_size"], cells["lr"]))
    holds = set(zip(group_keys(cells[cells["sde_holds"] == "yes"], cols),
                    cells.loc[cells["sde_holds"] == "yes", "batch_size"],
                    cells.loc[cells["sde_holds"] == "yes", "lr"]))
    run_keys = list(zip(group_keys(done, cols), done["batch_size"], done["lr"]))
    compared = done[[k in cell_keys for k in run_keys]]
    valid = done[[k in holds for k in run_keys]]
    tests = [ratio.ratio_test_table(frame, list(group_cols), labels, []) if len(frame) else pd.DataFrame()
             for frame in (valid, compared)]
    return SDE(cells, runs[runs[SVAG].notna()], cols, group_labels(runs, cols), *tests)
