"""Steps to result (Shallue et al. 2019): how many optimizer steps each run needs to reach a target, the
fewest over learning rates at each batch size, and McCandlish et al.'s fit of them (lrbs_tf.analysis.scaling_fit).

A run's steps to result come from its metrics.jsonl: the first epoch row that meets the target (training
loss at or below it, or test accuracy at or above it) and the row before it bracket the crossing, and the
steps are interpolated linearly between them. An epoch row's steps are its `step` column (optimizer steps
so far) when metrics.jsonl has one, else epoch x config.json's `steps_per_epoch`. A run whose first row
already meets the target has no bracket: its steps are that row's, an upper bound (`bracketed` false).
Runs that never meet it are kept as not reached, never dropped: they count in `n_runs`, not in `n_reached`.

Per (group, batch size) the fewest steps over learning rates, and the learning rate that needed them. With
several seeds in a (batch size, learning rate) cell, the cell's steps are the median over its seeds, a
seed that did not reach counting as infinitely many steps: a cell reaches the target when more than half
its seeds do, and one lucky seed does not make a cell. Done and diverged runs are used (a run may reach the
target before it diverges; Shallue et al. count diverged trials as not reaching it otherwise); failed,
unfinished and skipped runs have no result and are left out. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis.model import iter_groups, key_value
from lrbs_tf.analysis.scaling_fit import LEVEL, fit_scaling
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as rf

USED_STATUSES = (rf.STATUS_DONE, rf.STATUS_DIVERGED)
STEPS_COLUMNS = ["batch_size", "min_steps", "best_lr", "n_runs", "n_reached", "target", "n_lrs", "best_n_seeds",
                 "best_lr_at_edge", "best_bracketed"]
FIT_COLUMNS = ["target", "s_min", "b_crit", "s_min_low", "s_min_high", "b_crit_low", "b_crit_high", "e_min",
               "n_batch_sizes", "dof", "residual_sd_log", "converged", "level", "note"]
RUN_COLUMNS = ["run_dir", "status", "batch_size", "lr", "seed", "target", "reached", "steps", "epoch",
               "bracketed", "last_step", "note"]


@dataclasses.dataclass(frozen=True)
class ResultTarget:
    """What a run must reach: `metric` (train_loss, in nats, or test_accuracy, a fraction) at or below (loss)
    or at or above (accuracy) `value`."""
    metric: str
    value: float

    def met(self, values: np.ndarray) -> np.ndarray:
        return values <= self.value if self.metric == "train_loss" else values >= self.value

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.metric == 'train_loss' else '>='} {self.value:g}"


def target_from(train_loss: float | None, test_accuracy: float | None) -> ResultTarget | None:
    """The target of --target_train_loss / --target_test_accuracy (one of them, or None for neither)."""
    if train_loss is not None and test_accuracy is not None:
        raise UsageError(f"--target_train_loss={train_loss:g} and --target_test_accuracy={test_accuracy:g}: "
                         "give one target")
    if train_loss is not None:
        if not (math.isfinite(train_loss) and train_loss > 0):
            raise UsageError(f"--target_train_loss={train_loss:g} is not a loss > 0 (nats)")
        return ResultTarget("train_loss", float(train_loss))
    if test_accuracy is not None:
        if not (math.isfinite(test_accuracy) and 0 < test_accuracy <= 1):
            raise UsageError(f"--target_test_accuracy={test_accuracy:g} is not a fraction in (0, 1]")
        return ResultTarget("test_accuracy", float(test_accuracy))
    return None


@dataclasses.dataclass(frozen=True)
class Crossing:
    """When a run reached the target: steps (NaN if not reached), the first epoch row meeting it, whether
    a row before it brackets the crossing (else the steps are an upper bound), the last step recorded."""
    steps: float
    epoch: int | None
    bracketed: bool
    last_step: float

    @property
    def reached(self) -> bool:
        return not math.isnan(self.steps)


def crossing(steps: np.ndarray, epochs: np.ndarray, values: np.ndarray, target: ResultTarget) -> Crossing:
    """The steps at which `values` (one per epoch row, at `steps`, increasing) first meet `target`, by linear
    interpolation between the row before and the first row that meets it."""
    met = target.met(values)
    last = float(steps[-1]) if len(steps) else math.nan
    if not met.any():
        return Crossing(math.nan, None, False, last)
    k = int(np.argmax(met))
    if k == 0:
        return Crossing(float(steps[0]), int(epochs[0]), False, last)
    v0, v1 = float(values[k - 1]), float(values[k])
    frac = (v0 - target.value) / (v0 - v1)  # v0 misses the target and v1 meets it, so v0 != v1 and frac in (0, 1]
    return Crossing(float(steps[k - 1] + frac * (steps[k] - steps[k - 1])), int(epochs[k]), True, last)


def epoch_rows(records: Sequence[dict], steps_per_epoch: object, metric: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(steps, epochs, values, problem) of the rows of metrics.jsonl with a finite `metric` and known steps:
    the row's `step`, else epoch x steps_per_epoch. problem is '' or why the rows cannot be used."""
    rows = []
    for r in records:
        epoch, value = r.get("epoch"), r.get(metric)
        if not (rf.is_int(epoch) and rf.is_number(value)):
            continue  # a diverged epoch's loss is null: that row cannot meet the target
        step = r.get("step")
        if not rf.is_number(step):
            if not (rf.is_int(steps_per_epoch) and steps_per_epoch > 0):
                return (np.empty(0),) * 3 + (f"epoch {epoch} has no step and config.json no steps_per_epoch",)
            step = epoch * steps_per_epoch
        rows.append((float(step), epoch, float(value)))
    if not rows:
        return (np.empty(0),) * 3 + (f"no epoch row with a finite {metric}",)
    steps, epochs, values = (np.array(c) for c in zip(*rows))
    if np.any(np.diff(steps) <= 0):
        return (np.empty(0),) * 3 + ("the steps of its epoch rows do not increase",)
    return steps, epochs.astype(int), values, ""


def run_table(runs: pd.DataFrame, configs: dict[str, dict], results: Path, group_cols: list[str],
              target: ResultTarget) -> pd.DataFrame:
    """One row per done or diverged run: whether and after how many optimizer steps it reached `target`."""
    used = runs[runs["status"].isin(USED_STATUSES) & runs["arch"].notna() & runs["dataset"].notna()]
    rows = []
    for r in used.to_dict("records"):
        steps, epochs, values, problem = epoch_rows(rf.read_metrics(results / r["run_dir"]),
                                                    configs.get(r["run_dir"], {}).get("steps_per_epoch"),
                                                    target.metric)
        c = crossing(steps, epochs, values, target) if not problem else Crossing(math.nan, None, False, math.nan)
        rows.append({**{k: r[k] for k in group_cols}, **{k: r[k] for k in ("run_dir", "status", "batch_size",
                                                                            "lr", "seed")},
                     "target": str(target), "reached": c.reached, "steps": c.steps, "epoch": c.epoch,
                     "bracketed": c.bracketed, "last_step": c.last_step, "note": problem})
    frame = pd.DataFrame(rows, columns=[*group_cols, *RUN_COLUMNS])
    frame["usable"] = frame["note"] == ""
    return frame


def _cell_steps(cell: pd.DataFrame) -> float:
    """Median steps over a cell's seeds, not reached = inf (so inf unless more than half reached)."""
    return float(np.median(cell["steps"].fillna(math.inf).to_numpy(float)))


def steps_table(per_run: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str]) -> pd.DataFrame:
    """steps_to_result.csv: one row per (group, batch size) with the fewest steps over learning rates."""
    rows = []
    usable = per_run[per_run["usable"]]
    for keys, _, g in iter_groups(usable, group_cols, labels):
        for bs, at_bs in g.groupby("batch_size", sort=True):
            cells = {lr: _cell_steps(cell) for lr, cell in at_bs.groupby("lr", sort=True)}
            lrs = sorted(cells)
            best_lr = min(lrs, key=lambda lr: (cells[lr], lr))
            reached = math.isfinite(cells[best_lr])
            best = at_bs[(at_bs["lr"] == best_lr) & at_bs["reached"]]
            rows.append({**keys, "batch_size": int(bs), "min_steps": cells[best_lr] if reached else math.nan,
                         "best_lr": best_lr if reached else math.nan, "n_runs": len(at_bs),
                         "n_reached": int(at_bs["reached"].sum()), "target": str(per_run["target"].iloc[0]),
                         "n_lrs": len(lrs), "best_n_seeds": int((at_bs["lr"] == best_lr).sum()) if reached else 0,
                         "best_lr_at_edge": bool(reached and best_lr in (lrs[0], lrs[-1])),
                         "best_bracketed": bool(reached and best["bracketed"].all())})
    return pd.DataFrame(rows, columns=[*group_cols, *STEPS_COLUMNS])


def fit_table(steps: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str], target: ResultTarget
              ) -> pd.DataFrame:
    """scaling_fit.csv: McCandlish's S(B) fitted per group to the batch sizes that reached the target."""
    rows = []
    for keys, _, g in iter_groups(steps, group_cols, labels):
        reached = g[g["min_steps"].notna()]
        # An upper bound is not a measurement of the fewest steps: a best learning rate at the grid's edge may
        # not be the best, and an unbracketed crossing is only "by then". Fitted as exact they pull B_crit
        # (on a noise-free law, 223 became 111 with an interval excluding the truth), so they are left out.
        edge = reached["best_lr_at_edge"].astype(bool)
        unbracketed = ~reached["best_bracketed"].astype(bool) & ~edge
        have = reached[~edge & ~unbracketed]
        fit = fit_scaling(have["batch_size"].to_numpy(float), have["min_steps"].to_numpy(float))
        notes = []
        missing = g.loc[g["min_steps"].isna(), "batch_size"].tolist()
        if missing:
            notes.append(f"not reached at batch size(s) {', '.join(map(str, missing))}")
        if edge.any():
            notes.append("left out as upper bounds (best learning rate at the grid's edge) at batch size(s) "
                         + ", ".join(map(str, reached.loc[edge, "batch_size"])))
        if unbracketed.any():
            notes.append("left out as upper bounds (target met at the first epoch row, crossing not bracketed) at "
                         "batch size(s) " + ", ".join(map(str, reached.loc[unbracketed, "batch_size"])))
        note = "; ".join(n for n in (*notes, fit.note) if n)
        rows.append({**keys, **fit.as_dict(), "target": str(target), "level": LEVEL, "note": note})
    return pd.DataFrame(rows, columns=[*group_cols, *FIT_COLUMNS])


@dataclasses.dataclass
class StepsToResult:
    """bin/correlate's steps to result for one target: per run (steps_to_result_runs.csv), per (group,
    batch size) (steps_to_result.csv) and McCandlish's fit per group (scaling_fit.csv)."""
    target: ResultTarget
    runs: pd.DataFrame
    steps: pd.DataFrame
    fit: pd.DataFrame


def steps_to_result(runs: pd.DataFrame, configs: dict[str, dict], results: Path, group_cols: list[str],
                    labels: dict[tuple, str], target: ResultTarget) -> StepsToResult:
    """Every table of the steps to `target` over the runs of runs.csv (configs: config.json by run_dir)."""
    per_run = run_table(runs, configs, results, group_cols, target)
    steps = steps_table(per_run, group_cols, labels)
    return StepsToResult(target, per_run, steps, fit_table(steps, group_cols, labels, target))


CRITICAL_COLUMNS = ["n_runs", "epoch_min", "epoch_max", "n_late", "b_simple_median", "b_simple_min", "b_simple_max",
                    "b_simple_stderr_median", "b_crit", "b_crit_low", "b_crit_high", "b_crit_over_b_simple",
                    "target"]


def critical_batch_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
                         fit: pd.DataFrame | None) -> pd.DataFrame:
    """critical_batch.csv: per group, B_simple measured early in training (runs.csv's noise_scale_early:
    each run's earliest sharpness-epoch{E}.json with one) summarised over the group's done runs, beside the
    B_crit fitted to the steps to result (NaN without a target). Empty when no run has an early B_simple.
    McCandlish et al. predict B_crit ~ B_noise, of which B_simple is the estimate that ignores the
    Hessian's conditioning; they find the two agree only roughly, so a ratio of order 1 is agreement."""
    rows = []
    have = done[done["noise_scale_early"].notna()]
    fits = {} if fit is None else {tuple(key_value(r[c]) for c in group_cols): r for r in fit.to_dict("records")}
    for keys, _, g in iter_groups(have, group_cols, labels):
        b = g["noise_scale_early"].to_numpy(float)
        f = fits.get(tuple(keys.values()), {})
        b_crit = float(f.get("b_crit", math.nan))
        # Compared with B_simple only where the fit bounds B_crit on both sides: a ratio to an estimate whose
        # interval runs to infinity (or is degenerate) would read as agreement it does not show.
        bounded = all(math.isfinite(float(f.get(k, math.nan))) for k in ("b_crit_low", "b_crit_high")) \
            and float(f.get("b_crit_low", 0.0)) > 0
        rows.append({**keys, "n_runs": len(g), "epoch_min": int(g["noise_scale_epoch"].min()),
                     "epoch_max": int(g["noise_scale_epoch"].max()),
                     # measured in the second half of the run's epochs: not "early", B_simple grows as G -> 0
                     "n_late": int((g["noise_scale_epoch"] > 0.5 * g["epochs"].astype(float)).sum()),
                     "b_simple_median": float(np.median(b)),
                     "b_simple_min": float(b.min()), "b_simple_max": float(b.max()),
                     "b_simple_stderr_median": float(np.nanmedian(g["noise_scale_early_stderr"].to_numpy(float)))
                     if g["noise_scale_early_stderr"].notna().any() else math.nan,
                     "b_crit": b_crit, "b_crit_low": float(f.get("b_crit_low", math.nan)),
                     "b_crit_high": float(f.get("b_crit_high", math.nan)),
                     "b_crit_over_b_simple": b_crit / float(np.median(b)) if bounded else math.nan, "target": f.get("target", "")})
    return pd.DataFrame(rows, columns=[*group_cols, *CRITICAL_COLUMNS])
