"""The intrinsic learning rate beside measurement: bin/correlate's `intrinsic_lr.csv`, `intrinsic_lr_equal.csv`
and its report section (Li, Lyu & Arora 2020; the formulas are `lrbs_tf.theory.intrinsic_lr`'s).

Eligible: runs with status done, weight decay > 0, batch norm (resnet*, vgg*, or mlp with --mlp_batch_norm)
and lr * weight_decay < 1. Per eligible run, from its last metrics.jsonl row (the end of training):

- measured: `weight_norm_sq` (||w||^2 of ALL trainable weights), `effective_lr` = lr / weight_norm_sq, and
  `grad_norm_sq` (the epoch's mean squared minibatch-loss gradient norm, without the weight-decay term);
- predicted: the stationary balance of ||w_{t+1}||^2 = (1 - lr wd)^2 ||w_t||^2 + lr^2 ||g_t||^2,
  `predicted_weight_norm_sq` = lr grad_norm_sq / (wd (2 - lr wd)) (`norm_sq_from_grad_norm_sq`), and
  `predicted_effective_lr` = lr / predicted_weight_norm_sq; `norm_ratio` = measured / predicted norm
  (1 at equilibrium; the effective-LR ratio is its reciprocal);
- `unit_grad_norm_sq` = grad_norm_sq * weight_norm_sq, G of the theory (the gradient at unit norm);
- near equilibrium: trained for at least MIN_RELAXATION_TIMES relaxation times (`relaxation_steps`) AND the
  measured ||w||^2 moved by at most MAX_DRIFT (relative) over the last relaxation time (at least one epoch).

The assumptions, said again in the CSV's `note` and the report where they bite: the theory is for
scale-invariant weights (a layer followed by batch norm), with its gradient orthogonal to w; the metrics'
norms cover every trainable weight (classifier, biases, BN scale and offset too), whose gradient is not
orthogonal to w, so `norm_ratio` departs from 1 by their share (compare between runs, not absolutely).
Heavy-ball momentum is not covered by the theory: such runs are kept, and marked.

Equal intrinsic LR (intrinsic_lr_equal.csv): per group (arch, dataset and the --group_by settings but weight
decay), batch size (G depends on it) and value of lr * wd (computed on the decimals written, so 0.1 * 0.01
and 0.02 * 0.05 are one value) held by >= 2 (lr, wd) pairs: the effective LR of each pair (mean over its
seeds), `spread` = max / min over the pairs, and the `elasticity`: the OLS slope of log(effective LR) on
log(lr) over the pairs, with a 95% t interval (n = pairs, df = n - 2; seeds are averaged first so they are
not counted as independent pairs). The theory predicts elasticity 0 (norms in proportion to lr); norms that
did not depend on lr would give 1. `seed_spread`: the median over pairs with >= 2 seeds of max / min over
seeds, the noise floor of `spread`. Where a batch size has several such values, a `pooled` row fits one
slope within all of them (an intercept per value, df = pairs - values - 1): the same question with more
power than any one value.
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from lrbs_tf.analysis.model import group_labels, iter_groups, key_value
from lrbs_tf.analysis.report.format import cut, md_table
from lrbs_tf.runs import folder as rf
from lrbs_tf.theory import intrinsic_lr as ilr

RUNS_FILE, EQUAL_FILE = "intrinsic_lr.csv", "intrinsic_lr_equal.csv"
FILES = (RUNS_FILE, EQUAL_FILE)
SCOPE_ONE, SCOPE_POOLED = "one lr*wd", "pooled"  # intrinsic_lr_equal.csv's rows: one value, or all together
MIN_RELAXATION_TIMES = 5.0  # exp(-5) < 1%: what is left of a start near equilibrium, linearised
MAX_DRIFT = 0.05            # |relative change of ||w||^2| over the last relaxation time
BN_ARCH_PREFIXES = ("resnet", "vgg")  # every conv followed by batch norm (models.py); alexnet has none
MOMENTUM_NOTE = "momentum > 0: heavy-ball momentum is not covered by the theory"
ALL_WEIGHTS_NOTE = ("weight_norm_sq and grad_norm_sq cover all trainable weights, not only the scale-invariant "
                    "ones")
RUN_COLUMNS = ["run_dir", "batch_size", "lr", "weight_decay", "seed", "intrinsic_lr", "steps",
               "relaxation_steps", "relaxation_times", "weight_norm_sq", "effective_lr", "grad_norm_sq",
               "unit_grad_norm_sq", "predicted_weight_norm_sq", "predicted_effective_lr", "norm_ratio",
               "norm_drift", "near_equilibrium", "note"]
EQUAL_COLUMNS = ["batch_size", "scope", "intrinsic_lr", "n_runs", "n_pairs", "n_near_equilibrium", "pairs",
                 "effective_lr_min", "effective_lr_max", "spread", "seed_spread", "elasticity",
                 "elasticity_ci_low", "elasticity_ci_high", "elasticity_near_equilibrium",
                 "elasticity_near_equilibrium_ci_low", "elasticity_near_equilibrium_ci_high", "reading", "note"]


@dataclasses.dataclass
class IntrinsicLR:
    """runs: intrinsic_lr.csv; equal: intrinsic_lr_equal.csv; group_cols, labels: their groups (weight decay
    is not a group key here: equal lr * wd pairs differ in it); excluded: done runs not eligible, by reason."""
    runs: pd.DataFrame
    equal: pd.DataFrame
    group_cols: list[str]
    labels: dict[tuple, str]
    excluded: dict[str, int]
    done: int

    def texts(self) -> dict[str, str]:
        """The CSV files by name; none when no run is eligible (the report says so)."""
        if self.runs.empty:
            return {}
        return {RUNS_FILE: self.runs.to_csv(index=False), EQUAL_FILE: self.equal.to_csv(index=False)}


def intrinsic_key(lr: float, weight_decay: float) -> float:
    """lr * wd on the decimals they were written as: 0.1 * 0.01 and 0.02 * 0.05 are the same float 0.001
    (plain float products differ in the last bit)."""
    return float(Fraction(repr(float(lr))) * Fraction(repr(float(weight_decay))))


def has_batch_norm(cfg: rf.RunConfig) -> bool:
    """Whether the run's model has scale-invariant layers (followed by batch norm)."""
    return cfg.arch.startswith(BN_ARCH_PREFIXES) or (cfg.arch == "mlp" and bool(cfg.setting("mlp_batch_norm")))


def _number(row: dict, key: str) -> float:
    v = row.get(key)
    return float(v) if rf.is_number(v) else math.nan


def _step(row: dict, steps_per_epoch: Any) -> float:
    """Optimizer steps done at the end of a metrics row: its `step`, else epoch x steps_per_epoch."""
    if rf.is_number(row.get("step")):
        return float(row["step"])
    if rf.is_int(row.get("epoch")) and rf.is_int(steps_per_epoch):
        return float(row["epoch"] * steps_per_epoch)
    return math.nan


def _drift(rows: list[dict], steps_per_epoch: Any, relax: float) -> float:
    """Relative change of weight_norm_sq from the latest row at least one relaxation time (and one row)
    before the last one, to the last; NaN when training was shorter than that."""
    last = rows[-1]
    end, now = _step(last, steps_per_epoch), _number(last, "weight_norm_sq")
    for row in reversed(rows[:-1]):
        if end - _step(row, steps_per_epoch) >= relax:
            return now / _number(row, "weight_norm_sq") - 1.0
    return math.nan


def run_row(run_dir: Path, cfg: rf.RunConfig) -> dict:
    """One intrinsic_lr.csv row (without group keys) from the run's config and last metrics row."""
    lr, wd = cfg.lr, cfg.weight_decay
    rows = [r for r in rf.read_metrics(run_dir)
            if rf.is_number(r.get("weight_norm_sq")) and r["weight_norm_sq"] > 0]
    notes = [MOMENTUM_NOTE] if cfg.momentum > 0 else []
    try:
        relax = ilr.relaxation_steps(lr, wd)
    except ValueError:  # lr * wd = 1 - 1/sqrt(2): the linearised factor is 0, equilibrium in one step
        relax = 0.0
    out = {"batch_size": cfg.batch_size, "lr": lr, "weight_decay": wd, "seed": cfg.seed,
           "intrinsic_lr": intrinsic_key(lr, wd), "relaxation_steps": relax}
    if not rows:
        return {**out, "near_equilibrium": False, "note": "; ".join(notes + ["no metrics row with weight_norm_sq"])}
    last, spe = rows[-1], cfg.raw.get("steps_per_epoch")
    wns, gns = _number(last, "weight_norm_sq"), _number(last, "grad_norm_sq")
    if math.isnan(gns):
        notes.append("metrics lack grad_norm_sq (an lrbs_tf that did not record it): no prediction")
    predicted = ilr.norm_sq_from_grad_norm_sq(lr, wd, gns) if gns > 0 else math.nan
    steps = _step(last, spe)
    drift = _drift(rows, spe, relax)
    times = steps / relax if relax > 0 else math.inf
    out.update(steps=steps, relaxation_times=times, weight_norm_sq=wns, effective_lr=lr / wns, grad_norm_sq=gns,
               unit_grad_norm_sq=gns * wns, predicted_weight_norm_sq=predicted,
               predicted_effective_lr=lr / predicted, norm_ratio=wns / predicted, norm_drift=drift,
               near_equilibrium=bool(times >= MIN_RELAXATION_TIMES and abs(drift) <= MAX_DRIFT),
               note="; ".join(notes))
    return out


def _eligibility(results: Path, run: dict) -> tuple[str, rf.RunConfig | None]:
    """Why a done run is not eligible ('' when it is), and its config."""
    try:
        cfg = rf.read_config(results / run["run_dir"])
    except rf.RunFolderError:
        return "config.json unreadable", None
    if not cfg.weight_decay > 0:
        return "no weight decay", cfg
    if not has_batch_norm(cfg):
        return "no batch norm", cfg
    if not cfg.lr * cfg.weight_decay < 1:
        return "lr * weight_decay >= 1", cfg
    return "", cfg


def fit_elasticity(log_lr: np.ndarray, log_eff: np.ndarray, sets: np.ndarray) -> tuple[float, float, float]:
    """OLS slope of log_eff on log_lr with one intercept per value of `sets` (the lr * wd value: the slope is
    taken within sets and pooled), and its 95% t interval (df = n - sets - 1; NaN bounds at df 0)."""
    labels = np.unique(sets)
    X = np.column_stack([*(sets == v for v in labels), log_lr]).astype(float)
    beta = np.linalg.lstsq(X, log_eff, rcond=None)[0]
    df = len(log_lr) - len(labels) - 1
    if df < 1:
        return float(beta[-1]), math.nan, math.nan
    resid = log_eff - X @ beta
    se = math.sqrt(resid @ resid / df * np.linalg.inv(X.T @ X)[-1, -1])
    half = sps.t.ppf(0.975, df) * se
    return float(beta[-1]), float(beta[-1] - half), float(beta[-1] + half)


def reading(elasticity: float, low: float, high: float) -> str:
    """The comparison's verdict from the elasticity's interval: theory 0, lr-independent norms 1."""
    if math.isnan(elasticity):
        return "no finite effective LR"
    if math.isnan(low):
        return "no interval (as many parameters as pairs)"
    if low <= 0 <= high and not low <= 1 <= high:
        return "equal: elasticity consistent with 0, not with 1"
    if low > 0 or high < 0:
        return "not equal: effective LR still varies with lr at equal lr*wd"
    return "undecided: the interval holds 0 and 1"


def _pairs(sub: pd.DataFrame) -> pd.DataFrame:
    """Per (lr, wd) pair of `sub`: the mean effective LR over its seeds, the seeds' max / min, the runs."""
    sub = sub[np.isfinite(sub["effective_lr"].to_numpy(float))]
    g = sub.groupby(["lr", "weight_decay", "intrinsic_lr"], sort=True)["effective_lr"]
    out = pd.DataFrame({"mean": g.mean(), "seed_spread": g.max() / g.min(), "runs": g.size()}).reset_index()
    return out.assign(seed_spread=out["seed_spread"].where(out["runs"] >= 2))


def equal_row(pairs: pd.DataFrame, sub: pd.DataFrame, scope: str) -> dict:
    """One intrinsic_lr_equal.csv row (without group keys and batch size) from `_pairs` rows and their runs."""
    means = pairs["mean"].to_numpy(float)
    slope, low, high = fit_elasticity(np.log(pairs["lr"].to_numpy(float)), np.log(means),
                                      pairs["intrinsic_lr"].to_numpy(float))
    one = scope == SCOPE_ONE
    notes = [MOMENTUM_NOTE] if (sub["note"].str.contains(MOMENTUM_NOTE, regex=False)).any() else []
    seeded = pairs["seed_spread"].dropna()
    # The theory is for the stationary state: the same fit over the runs near equilibrium only (reported
    # beside the all-runs one; the reading uses it when it can be computed).
    eq_pairs = _pairs(sub[sub["near_equilibrium"].astype(bool)])
    eq_pairs = eq_pairs[eq_pairs.groupby("intrinsic_lr")["lr"].transform("size") >= 2] if len(eq_pairs) else eq_pairs
    eq = (fit_elasticity(np.log(eq_pairs["lr"].to_numpy(float)), np.log(eq_pairs["mean"].to_numpy(float)),
                         eq_pairs["intrinsic_lr"].to_numpy(float)) if len(eq_pairs) >= 2 else (math.nan,) * 3)
    if math.isnan(eq[0]):
        shown = (slope, low, high)
        if not sub["near_equilibrium"].astype(bool).all():
            notes.append("too few near-equilibrium pairs for their own elasticity: the reading uses all runs")
    else:
        shown = eq
        if not sub["near_equilibrium"].astype(bool).all():
            notes.append("reading from the runs near equilibrium only")
    return {"scope": scope, "intrinsic_lr": float(pairs["intrinsic_lr"].iloc[0]) if one else math.nan,
            "n_runs": int(pairs["runs"].sum()), "n_pairs": len(pairs),
            "n_near_equilibrium": int(sub["near_equilibrium"].sum()),
            "pairs": " ".join(f"{r.lr:g}x{r.weight_decay:g}" for r in pairs.itertuples()) if one else
            "lr*wd = " + " ".join(f"{v:g}" for v in pairs["intrinsic_lr"].unique()),
            "effective_lr_min": float(means.min()) if one else math.nan,
            "effective_lr_max": float(means.max()) if one else math.nan,
            "spread": float(means.max() / means.min()) if one else math.nan,
            "seed_spread": float(seeded.median()) if len(seeded) else math.nan, "elasticity": slope,
            "elasticity_ci_low": low, "elasticity_ci_high": high, "elasticity_near_equilibrium": eq[0],
            "elasticity_near_equilibrium_ci_low": eq[1], "elasticity_near_equilibrium_ci_high": eq[2],
            "reading": reading(*shown),
            "note": "; ".join(notes)}


def _equal_rows(g: pd.DataFrame) -> list[dict]:
    """intrinsic_lr_equal.csv's rows of one group: per batch size, one per lr * wd value held by >= 2 pairs,
    then one pooled over those values when there are several."""
    rows = []
    for bs, at_bs in g.groupby("batch_size", sort=True):
        pairs = _pairs(at_bs)
        shared = pairs.groupby("intrinsic_lr")["lr"].transform("size") >= 2
        pairs = pairs[shared]
        for lam, p in pairs.groupby("intrinsic_lr", sort=True):
            rows.append({"batch_size": bs, **equal_row(p, at_bs[at_bs["intrinsic_lr"] == lam], SCOPE_ONE)})
        if pairs["intrinsic_lr"].nunique() >= 2:
            used = at_bs[at_bs["intrinsic_lr"].isin(pairs["intrinsic_lr"])]
            rows.append({"batch_size": bs, **equal_row(pairs, used, SCOPE_POOLED)})
    return rows


def compute(runs: pd.DataFrame, results: str | Path, group_cols: Sequence[str]) -> IntrinsicLR:
    """The intrinsic-LR tables of the done runs of `runs` (runs.csv, run_dir relative to `results`).

    group_cols: bin/correlate's group columns; weight_decay is dropped from them here.
    """
    results, cols = Path(results), [c for c in group_cols if c != "weight_decay"]
    done = runs[runs["status"] == rf.STATUS_DONE]
    rows, excluded = [], {}
    for run in done.to_dict("records"):
        why, cfg = _eligibility(results, run)
        if why:
            excluded[why] = excluded.get(why, 0) + 1
            continue
        rows.append({**{c: run[c] for c in cols}, "run_dir": run["run_dir"], **run_row(results / run["run_dir"], cfg)})
    table = pd.DataFrame(rows, columns=[*cols, *RUN_COLUMNS])
    if len(table):
        table = table.sort_values([*cols, "batch_size", "intrinsic_lr", "lr", "seed", "run_dir"], kind="stable")
    labels = group_labels(table, cols) if len(table) else {}
    equal = [{**keys, **row} for keys, _, g in iter_groups(table, cols, labels) for row in _equal_rows(g)]
    return IntrinsicLR(runs=table, equal=pd.DataFrame(equal, columns=[*cols, *EQUAL_COLUMNS]), group_cols=cols,
                       labels=labels, excluded=excluded, done=len(done))


def _g(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)



def _label(result: IntrinsicLR, row: dict) -> str:
    return result.labels[tuple(key_value(row[c]) for c in result.group_cols)]


def _run_table(result: IntrinsicLR) -> str:
    cols = ["batch_size", "lr", "weight_decay", "seed", "intrinsic_lr", "relaxation_times", "weight_norm_sq",
            "predicted_weight_norm_sq", "norm_ratio", "effective_lr", "predicted_effective_lr", "norm_drift",
            "near_equilibrium", "note"]
    rows, more = cut([[_label(result, r), *(_g(r[c]) for c in cols)] for r in result.runs.to_dict("records")],
                     "runs", RUNS_FILE)
    header = ["group", "BS", "lr", "wd", "seed", "lr*wd", "relaxation times", "weight norm^2", "predicted",
              "ratio", "effective LR", "predicted", "drift", "near equilibrium", "note"]
    return md_table(header, rows) + more


def _equal_table(result: IntrinsicLR) -> str:
    if result.equal.empty:
        return "No batch size and lr * wd value is shared by two or more learning rates: nothing to compare."
    rows = [[_label(result, r), r["batch_size"], _g(r["intrinsic_lr"]) or r["scope"], r["n_pairs"], r["n_runs"],
             r["n_near_equilibrium"], r["pairs"], _g(r["effective_lr_min"]), _g(r["effective_lr_max"]),
             _g(r["spread"]), _g(r["seed_spread"]), _g(r["elasticity"]),
             f"[{_g(r['elasticity_ci_low'])}, {_g(r['elasticity_ci_high'])}]"
             if np.isfinite(r["elasticity_ci_low"]) else "—", r["reading"]]
            for r in result.equal.to_dict("records")]
    rows, more = cut(rows, "comparisons", EQUAL_FILE)
    return md_table(["group", "BS", "lr*wd", "pairs (n)", "runs", "near equilibrium", "lr x wd pairs",
                     "effective LR min", "max", "spread", "seed spread", "elasticity", "95% CI", "reading"],
                    rows) + more


def section(result: IntrinsicLR | None) -> str:
    """report.md's section: measured weight norm and effective LR beside the predicted equilibrium."""
    title = "## Intrinsic learning rate (Li, Lyu & Arora 2020)"
    if result is None or result.runs.empty:
        why = ", ".join(f"{n} {k}" for k, n in sorted((result.excluded if result else {}).items()))
        return (f"{title}\n\nNo run is eligible (status done, weight decay > 0, batch norm, lr * wd < 1)"
                + (f": of {result.done} done runs, {why}." if why else "."))
    runs = result.runs
    out = [title,
           f"{len(runs)} eligible runs (done, weight decay > 0, batch norm); "
           + (", ".join(f"{n} {k}" for k, n in sorted(result.excluded.items())) or "none")
           + " among the other done runs. Predicted ||w||^2 = lr E||g||^2 / (wd (2 - lr wd)), the stationary "
           "balance of ||w_{t+1}||^2 = (1 - lr wd)^2 ||w_t||^2 + lr^2 ||g_t||^2, from each run's own last-epoch "
           "mean squared gradient norm (`grad_norm_sq`); ratio = measured / predicted (1 at equilibrium); "
           f"near equilibrium: >= {MIN_RELAXATION_TIMES:g} relaxation times (1 / -log|2 (1 - lr wd)^2 - 1| "
           f"steps) and ||w||^2 moved <= {MAX_DRIFT:.0%} over the last one (drift). Groups as bin/correlate's, "
           "without weight decay. Columns: docs/theory.md, section 4.",
           f"Assumption: the theory is for scale-invariant weights; {ALL_WEIGHTS_NOTE} (classifier, biases, BN "
           "scales and offsets, whose gradient is not orthogonal to w), so the ratio departs from 1 by their "
           "share: compare runs with one another rather than the ratio with 1.",
           _run_table(result),
           "### Equal intrinsic LR: equal effective LR?",
           "Per batch size and value of lr * wd shared by >= 2 (lr, wd) pairs: the effective LR of each pair "
           "(mean over seeds), spread = max / min, and the elasticity d log(effective LR) / d log(lr) over the "
           "pairs (OLS, 95% t interval, n = pairs): the theory predicts 0 (the norm grows like lr); norms that "
           "did not depend on lr would give 1. Seed spread: the median max / min over the seeds of one pair. "
           "`pooled`: one slope within all the lr * wd values of a batch size (an intercept per value).",
           _equal_table(result)]
    if runs["note"].str.contains(MOMENTUM_NOTE, regex=False).any():
        out.append(f"Runs marked `{MOMENTUM_NOTE}` are shown, but the equilibrium above is plain SGD's.")
    if runs["grad_norm_sq"].isna().any():
        out.append(f"{int(runs['grad_norm_sq'].isna().sum())} eligible runs have no `grad_norm_sq` in "
                   "metrics.jsonl (trained by an lrbs_tf that did not record it): no prediction for them.")
    return "\n\n".join(out)
