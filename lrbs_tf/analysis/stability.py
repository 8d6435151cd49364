"""Curvature over training in bin/correlate (issue 24): `stability.csv`, one row per done run with a
curvature.csv (bin/sharpness --epoch=all), and the report section that answers, with numbers and n,

- He et al.'s rebuttal Q7 ("the Hessian changes drastically during learning"; their A7: "A is invariant"):
  lambda_max and trace at the last measured epoch against the first, and when the top-k eigenspace settles;
- the edge of stability (Cohen et al. 2021), full-batch GD: lambda_max x lr/2 rises to 1 and hovers there;
- the edge of stochastic stability (Andreyev & Beneventano 2024), SGD: batch sharpness x lr/2 settles at 1,
  lambda_max x lr/2 below it, the gap growing as the batch shrinks.

Per run (columns of stability.csv): `lambda_edge_step`, the first optimizer step at whose checkpoint
lambda_max x lr/2 >= EDGE (0.9; NaN: never); `lambda_late_median`, its median over the late rows (step >=
half the last measured step; `n_late` rows); the same two for batch sharpness x lr/2 (`batch_edge_step`,
`batch_late_median`); `lambda_after_edge_median` / `batch_after_edge_median`, the median over the rows
from the first at or above EDGE to the last (the hovering, and any late fall, of a run that got there);
`lambda_peak` / `batch_peak`, the largest of each measured; `gap` = batch_late_median - lambda_late_median; `ggn_ratio_late_median`, the median of
ggn_lambda_max / lambda_max over the late rows; `overlap_settled_epoch`, the first measured epoch from
which the top-k overlap with the previous measured epoch stays >= SETTLED (0.9) to the end (NaN: never or
no overlap measured); `lambda_max_first`/`_last`, `trace_first`/`_last` and their ratios; `overlap_min`.
A run is `full_batch` when its config says one step per epoch (steps_per_epoch 1: GD).
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from lrbs_tf.analysis.model import key_value
from lrbs_tf.analysis.report.format import md_table
from lrbs_tf.core.text import plural
from lrbs_tf.runs import folder as rf

RUNS_FILE = "stability.csv"
FILES = (RUNS_FILE,)
EDGE = 0.9          # "reaches the edge": x lr/2 at least this
SETTLED = 0.9       # "the eigenspace settled": top-k overlap with the previous epoch at least this
NEAR = (0.8, 1.2)   # "hovers near 1": a late median in this band
COLUMNS = ["run_dir", "batch_size", "lr", "seed", "full_batch", "n_epochs", "last_step", "n_late",
           "lambda_edge_step", "lambda_late_median", "lambda_after_edge_median", "lambda_peak", "batch_edge_step",
           "batch_late_median", "batch_after_edge_median", "batch_peak", "gap",
           "ggn_ratio_late_median", "overlap_settled_epoch", "overlap_min", "lambda_max_first", "lambda_max_last",
           "lambda_max_last_over_first", "trace_first", "trace_last", "trace_last_over_first"]


@dataclasses.dataclass
class Stability:
    runs: pd.DataFrame      # stability.csv
    group_cols: list[str]
    labels: dict[tuple, str]
    trajectories: dict[str, pd.DataFrame]  # run_dir -> its curvature.csv (Figure 7)
    done: int

    def texts(self) -> dict[str, str]:
        return {RUNS_FILE: self.runs.to_csv(index=False)} if len(self.runs) else {}



def read_curvature_csv(run_dir: str | os.PathLike):
    """The run's curvature.csv (written by bin/sharpness --epoch) as a DataFrame, or None when it has none
    (or it is unreadable)."""
    path = Path(run_dir) / rf.CURVATURE_CSV
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None

def _first_step(t: pd.DataFrame, column: str) -> float:
    hit = t[t[column] >= EDGE]
    return float(hit["step"].iloc[0]) if len(hit) else math.nan


def _after_edge(t: pd.DataFrame, column: str) -> float:
    """The median of `column` over the rows from its first at or above EDGE to the last (NaN: never)."""
    hit = np.flatnonzero(t[column].to_numpy(float) >= EDGE)
    return _median(t[column].iloc[hit[0]:]) if len(hit) else math.nan


def _median(values: pd.Series) -> float:
    v = values.dropna()
    return float(v.median()) if len(v) else math.nan


def _settled(t: pd.DataFrame) -> float:
    """The first epoch from which topk_overlap stays >= SETTLED to the last row (NaN: never, or unmeasured)."""
    o = t[["epoch", "topk_overlap"]].dropna()
    if o.empty or o["topk_overlap"].iloc[-1] < SETTLED:
        return math.nan
    below = np.flatnonzero(o["topk_overlap"].to_numpy() < SETTLED)
    return float(o["epoch"].iloc[below[-1] + 1] if len(below) else o["epoch"].iloc[0])


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def run_row(t: pd.DataFrame, full_batch: bool) -> dict:
    """stability.csv's numbers for one curvature.csv (sorted by epoch)."""
    t = t.sort_values("epoch")
    steps = t["step"].where(t["step"].notna(), t["epoch"])
    t = t.assign(step=steps)
    last = float(t["step"].max())
    late = t[t["step"] >= last / 2]
    lam_late, batch_late = _median(late["stability_ratio"]), _median(late["batch_sharpness_ratio"])
    ggn = late["ggn_lambda_max"] / late["lambda_max"]
    first, final = t.iloc[0], t.iloc[-1]
    return {"full_batch": full_batch, "n_epochs": len(t), "last_step": last, "n_late": len(late),
            "lambda_edge_step": _first_step(t, "stability_ratio"), "lambda_late_median": lam_late,
            "lambda_after_edge_median": _after_edge(t, "stability_ratio"),
            "lambda_peak": float(t["stability_ratio"].max()),
            "batch_edge_step": _first_step(t, "batch_sharpness_ratio"), "batch_late_median": batch_late,
            "batch_after_edge_median": _after_edge(t, "batch_sharpness_ratio"),
            "batch_peak": float(t["batch_sharpness_ratio"].max()),
            "gap": batch_late - lam_late, "ggn_ratio_late_median": _median(ggn),
            "overlap_settled_epoch": _settled(t), "overlap_min": float(t["topk_overlap"].min()),
            "lambda_max_first": float(first["lambda_max"]), "lambda_max_last": float(final["lambda_max"]),
            "lambda_max_last_over_first": _ratio(float(final["lambda_max"]), float(first["lambda_max"])),
            "trace_first": float(first["trace"]), "trace_last": float(final["trace"]),
            "trace_last_over_first": _ratio(float(final["trace"]), float(first["trace"]))}


def compute(runs: pd.DataFrame, results: str | Path, group_cols: Sequence[str], labels: dict[tuple, str]
            ) -> Stability:
    """stability.csv from the done runs of `runs` (runs.csv: run_dir relative to `results`) that have a
    curvature.csv with at least one row."""
    results = Path(results)
    done = runs[runs["status"] == rf.STATUS_DONE]
    rows, trajectories = [], {}
    for run in done.to_dict("records"):
        table = read_curvature_csv(results / run["run_dir"])
        if table is None or table.empty:
            continue
        try:
            spe = rf.read_config(results / run["run_dir"]).raw.get("steps_per_epoch")
        except rf.RunFolderError:
            spe = None
        trajectories[run["run_dir"]] = table.sort_values("epoch")
        rows.append({**{c: run[c] for c in group_cols}, "run_dir": run["run_dir"], "batch_size": run["batch_size"],
                     "lr": run["lr"], "seed": run.get("seed"), **run_row(table, spe == 1)})
    frame = pd.DataFrame(rows, columns=[*group_cols, *COLUMNS])
    if len(frame):
        frame = frame.sort_values([*group_cols, "batch_size", "lr", "seed", "run_dir"], kind="stable")
    return Stability(frame, list(group_cols), labels, trajectories, len(done))


# --- report.md ----------------------------------------------------------------------------------------------

def _n(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _g(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "—" if math.isnan(v) else _n(float(v))
    return str(v)


def _summary(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "none measured"
    return f"median {_n(v.median())} (range {_n(v.min())} to {_n(v.max())}, n={len(v)})"


def _q7(s: pd.DataFrame) -> str:
    settled = s["overlap_settled_epoch"].notna()
    have_overlap = s["overlap_min"].notna()
    since = f", from epoch {_summary(s.loc[settled, 'overlap_settled_epoch'])}" if settled.any() else ""
    return (f"**He et al. Q7 (does the Hessian change during learning?).** Over {plural(len(s), 'run')}, lambda_max at "
            f"the last measured epoch / at the first: {_summary(s['lambda_max_last_over_first'])}; the trace: "
            f"{_summary(s['trace_last_over_first'])}. The top-k eigenspace (overlap with the previous measured "
            f"epoch, 1 = unchanged): smallest overlap per run {_summary(s['overlap_min'])}; it settled "
            f"(overlap >= {SETTLED:g} from some epoch to the end) in {int(settled.sum())} of "
            f"{plural(int(have_overlap.sum()), 'run')} with overlaps{since}. "
            + _moved(s["lambda_max_last_over_first"], "lambda_max") + " " + _moved(s["trace_last_over_first"], "trace"))


def _moved(ratios: pd.Series, what: str) -> str:
    v = ratios.dropna()
    if v.empty:
        return ""
    moved = int(((v < 0.8) | (v > 1.25)).sum())
    return (f"{what} ended more than 1.25x away from its first measured value in {moved} of {plural(len(v), 'run')}"
            + (" (A7's invariance does not hold for it over these trajectories)." if moved > len(v) / 2 else "."))


def _gd(s: pd.DataFrame) -> str:
    gd = s[s["full_batch"].astype(bool)]
    if gd.empty:
        return "**Edge of stability (full-batch GD).** No full-batch run (one step per epoch) has a trajectory."
    reached = gd["lambda_edge_step"].notna()
    near = gd["lambda_late_median"].between(*NEAR)
    return (f"**Edge of stability (full-batch GD: lambda_max x lr/2 rises to 1 and hovers there).** "
            f"{int(reached.sum())} of {len(gd)} full-batch runs reached {EDGE:g} (first step at or above it: "
            f"{_summary(gd.loc[reached, 'lambda_edge_step'])}); from there to the end, per-run medians: "
            f"{_summary(gd['lambda_after_edge_median'])}, within {NEAR[0]:g}-{NEAR[1]:g} in "
            f"{int(gd['lambda_after_edge_median'].between(*NEAR).sum())} of {int(reached.sum())}; largest measured: "
            f"{_summary(gd['lambda_peak'])}. Over the late half of training, per-run medians: "
            f"{_summary(gd['lambda_late_median'])}, within {NEAR[0]:g}-{NEAR[1]:g} in {int(near.sum())} of "
            f"{len(gd)} (with cross-entropy the sharpness falls again as the loss goes to 0: compare train_loss "
            "in curvature.csv).")


def _gap_trend(sgd: pd.DataFrame) -> str:
    parts = []
    for lr, g in sgd.groupby("lr"):
        g = g.dropna(subset=["gap"])
        if g["batch_size"].nunique() >= 3:
            rho = sps.spearmanr(g["batch_size"], g["gap"]).statistic
            parts.append(f"lr {lr:g}: Spearman rho(batch size, gap) = {rho:.2f} (n={len(g)})")
        elif len(g):
            parts.append(f"lr {lr:g}: {g['batch_size'].nunique()} batch sizes, too few for a trend")
    return "; ".join(parts) or "no run with both quantities"


def _sgd(s: pd.DataFrame) -> str:
    sgd = s[~s["full_batch"].astype(bool)]
    if sgd.empty:
        return "**Edge of stochastic stability (SGD).** No SGD run (several steps per epoch) has a trajectory."
    near = sgd["batch_late_median"].between(*NEAR)
    below = (sgd["lambda_late_median"] < sgd["batch_late_median"])
    have = sgd["batch_late_median"].notna() & sgd["lambda_late_median"].notna()
    return (f"**Edge of stochastic stability (SGD: batch sharpness x lr/2 settles at 1, lambda_max x lr/2 "
            f"below it, the gap growing as the batch shrinks).** Per-run late-half medians of batch sharpness x lr/2: "
            f"{_summary(sgd['batch_late_median'])}, within {NEAR[0]:g}-{NEAR[1]:g} in {int(near.sum())} of "
            f"{int(sgd['batch_late_median'].notna().sum())} (from its first crossing of {EDGE:g} to the end, "
            f"reached in {int(sgd['batch_edge_step'].notna().sum())} runs: {_summary(sgd['batch_after_edge_median'])}; "
            f"largest measured: {_summary(sgd['batch_peak'])}); "
            f"of lambda_max x lr/2: {_summary(sgd['lambda_late_median'])}, "
            f"below batch sharpness in {int((below & have).sum())} of {int(have.sum())}; gap (batch - lambda_max): "
            f"{_summary(sgd['gap'])}; {_gap_trend(sgd)} (a negative rho: the gap grows as the batch shrinks; "
            "rank correlations of a handful of batch sizes, no p-value claimed).")


def _table(st: Stability) -> str:
    cols = ["batch_size", "lr", "seed", "n_epochs", "last_step", "lambda_edge_step", "lambda_after_edge_median",
            "lambda_late_median", "batch_edge_step", "batch_after_edge_median", "batch_late_median", "gap", "ggn_ratio_late_median", "overlap_settled_epoch",
            "lambda_max_last_over_first"]
    rows = [[st.labels.get(tuple(key_value(r[c]) for c in st.group_cols), ""), *(_g(r[c]) for c in cols)]
            for r in st.runs.to_dict("records")[:60]]
    more = f"\n\n... and {len(st.runs) - 60} more runs ({RUNS_FILE})." if len(st.runs) > 60 else ""
    return md_table(["group", "BS", "lr", "seed", "epochs measured", "last step", "step λ·lr/2 ≥ 0.9",
                     "λ·lr/2 after", "late λ·lr/2", "step BS·lr/2 ≥ 0.9", "BS·lr/2 after", "late BS·lr/2", "gap", "GGN/H λ_max",
                     "overlap settled from epoch", "λ_max last/first"], rows) + more


def section(st: Stability | None) -> str:
    """report.md's section on curvature over training."""
    title = "## Curvature over training: the edge of (stochastic) stability"
    if st is None or st.runs.empty:
        return (f"{title}\n\nNo done run has a curvature.csv (bin/train --checkpoint_geometric=K or "
                "--checkpoint_every=N, then bin/sharpness --results=DIR --epoch=all --quantities="
                "eigenvalues,trace,batch_sharpness,ggn_eigenvalues,ggn_trace).")
    s = st.runs
    return "\n\n".join([
        title,
        f"{len(s)} of {st.done} done runs have a trajectory (curvature.csv: one row per measured kept epoch). "
        f"x lr/2: the quantity over the plain-SGD stability limit 2/lr. \"Late\": rows at or after half the "
        f"last measured step (`n_late` in {RUNS_FILE}). BS: batch sharpness, the mean over minibatches of the "
        "run's batch size of g_B' H_B g_B / |g_B|^2. Figure 7 draws the trajectories. Columns: docs/curvature.md.",
        _q7(s), _gd(s), _sgd(s),
        f"GGN / Hessian lambda_max (late median): {_summary(s['ggn_ratio_late_median'])}.",
        _table(st)])
