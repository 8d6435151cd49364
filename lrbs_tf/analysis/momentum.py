"""Are momentum and the learning rate interchangeable? bin/correlate's momentum.csv.

Heavy-ball SGD with momentum mu and learning rate lr takes, once a steady gradient has built the velocity up,
steps of lr / (1 - mu): its effective learning rate (docs/theory.md). Zhang et al.'s NQM rebuttal finds
momentum and the learning rate interchangeable at small batch: runs of equal batch size and equal lr / (1 - mu)
should end alike. bin/correlate places every run at its effective learning rate in the ratio analyses
(analysis.model.at_effective_lr); this module asks whether that placement is warranted where the runs can
say: in each (batch size, effective LR) cell that holds runs at two or more momenta, pooled across momentum
(every other group setting kept), does the best test accuracy differ between the momenta beyond seed noise?

The test (`compare`): each momentum's runs against the reference, the smallest momentum in the cell (plain SGD
when it is there). Seeds are paired where both have them (a seed fixes the initial weights and the order of
the batches in every run of it, so the two runs share those draws): a paired t-test over the common seeds,
needing at least 2; otherwise Welch's t-test on the two sets of runs, each needing at least 2. With k momenta
in a cell, the cell's p is Bonferroni's over its k - 1 comparisons, min(1, (k - 1) min p); cells are then
Holm-adjusted within each group (`p_holm`). Its size under a null with the structure real runs have (a shared
seed shift, unequal noise across momenta, 3-5 seeds, 2-3 momenta, heavy tails) is measured by
benchmarks/calibration.py (the entry `momentum_interchange` of benchmarks/calibration.json / .md).

Not rejecting is not equality: every row carries the 95% confidence interval of the difference in accuracy,
which says how large a difference the seeds could have missed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import pandas as pd
from scipy import stats as sps

from lrbs_tf.analysis.model import group_labels, iter_groups
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import TARGET

FILE = "momentum.csv"
FILES = (FILE,)
# Beside the target: the final training loss, to tell "generalises differently" from "trained differently".
MEASURES = (TARGET, "final_train_loss")
PAIRED, WELCH = "paired_t", "welch_t"


@dataclasses.dataclass
class Comparison:
    diff: float          # mean of (other - reference), accuracy as a fraction
    ci_low: float        # 95% confidence interval of that difference
    ci_high: float
    p: float             # two-sided; NaN when untestable
    method: str          # PAIRED, WELCH or "" (untestable)
    n: int               # pairs (paired) or runs of both (Welch)


def compare(reference: pd.Series, other: pd.Series) -> Comparison:
    """other - reference: values indexed by seed. Paired t over the common seeds when there are >= 2, else
    Welch's t over all runs of each when both have >= 2; else untestable (p NaN)."""
    reference, other = reference.dropna(), other.dropna()
    common = reference.index.intersection(other.index)
    if len(common) >= 2:
        d = (other.loc[common] - reference.loc[common]).to_numpy(float)
        n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
        if sd == 0:  # identical differences: no noise to test against; equal runs do not differ
            return Comparison(mean, mean, mean, 1.0 if mean == 0 else 0.0, PAIRED, n)
        half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        p = float(2 * sps.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
        return Comparison(mean, mean - half, mean + half, p, PAIRED, n)
    a, b = reference.to_numpy(float), other.to_numpy(float)
    if len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        mean = float(b.mean() - a.mean())
        if va + vb == 0:
            return Comparison(mean, mean, mean, 1.0 if mean == 0 else 0.0, WELCH, len(a) + len(b))
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        se = math.sqrt(va + vb)
        half = float(sps.t.ppf(0.975, df)) * se
        return Comparison(mean, mean - half, mean + half, float(2 * sps.t.sf(abs(mean) / se, df)), WELCH,
                          len(a) + len(b))
    mean = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    return Comparison(mean, math.nan, math.nan, math.nan, "", len(a) + len(b))


def cell_p(ps: Sequence[float]) -> float:
    """A cell's p from its k - 1 comparisons with the reference: Bonferroni over the tested ones."""
    tested = [p for p in ps if not math.isnan(p)]
    return min(1.0, len(tested) * min(tested)) if tested else math.nan


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of `ps` (NaN left out and kept NaN)."""
    ps = list(ps)
    order = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    out, running = [math.nan] * len(ps), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


@dataclasses.dataclass
class Interchange:
    """momentum.csv: one row per (group, batch size, effective LR, momentum) of the cells with >= 2 momenta."""
    table: pd.DataFrame
    group_cols: list[str]
    momenta: int            # distinct momenta among the done runs
    done: int

    def texts(self) -> dict[str, str]:
        return {FILE: self.table.to_csv(index=False)} if len(self.table) else {}


def interchange(done: pd.DataFrame, group_cols: Sequence[str]) -> Interchange:
    """The interchangeability table of the done runs (raw `lr`, with `momentum` and `effective_lr`), pooled
    over momentum: groups are `group_cols` without momentum."""
    cols = [c for c in group_cols if c != "momentum"]
    known = done[done["momentum"].notna() & done[rf.EFFECTIVE_LR].notna()]
    momenta = int(known["momentum"].nunique())
    rows: list[dict] = []
    if momenta >= 2:
        labels = group_labels(known, cols)
        for keys, label, g in iter_groups(known, cols, labels):
            group_rows = []
            for (bs, elr), cell in g.groupby(["batch_size", rf.EFFECTIVE_LR], sort=True):
                if cell["momentum"].nunique() >= 2:
                    group_rows.append(_cell_rows({**keys, "group": label}, int(bs), float(elr), cell))
            adjusted = holm([r[0]["p_cell"] for r in group_rows])
            for cell_rows, p in zip(group_rows, adjusted):
                rows += [{**r, "p_holm": p} for r in cell_rows]
    return Interchange(pd.DataFrame(rows), cols, momenta, len(done))


def _cell_rows(keys: dict, bs: int, elr: float, cell: pd.DataFrame) -> list[dict]:
    by = {m: g.groupby("seed")[TARGET].mean() for m, g in cell.groupby("momentum", sort=True)}
    reference = min(by)
    rows = []
    for m, g in cell.groupby("momentum", sort=True):
        c = compare(by[reference], by[m]) if m != reference else None
        rows.append({**keys, "batch_size": bs, "effective_lr": elr, "momentum": float(m),
                     "lr": float(g["lr"].iloc[0]), "n_runs": len(g),
                     **{f"mean_{k}": float(g[k].mean()) for k in MEASURES},
                     **{f"sd_{k}": float(g[k].std()) if len(g) > 1 else math.nan for k in MEASURES},
                     "reference_momentum": float(reference),
                     "diff": c.diff if c else math.nan, "diff_ci_low": c.ci_low if c else math.nan,
                     "diff_ci_high": c.ci_high if c else math.nan, "p": c.p if c else math.nan,
                     "method": c.method if c else "reference", "n_compared": c.n if c else 0})
    p = cell_p([r["p"] for r in rows if r["method"] != "reference"])
    return [{**r, "momenta": len(rows), "p_cell": p} for r in rows]

