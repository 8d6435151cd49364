"""Learning-rate and batch-size schedules in bin/correlate (issue 26; the rebuttal's Q1, Smith et al. 2018):
`schedules.csv`, `schedule_curves.csv`, the report's Schedules section and Figure 9.

Runs are compared within a *comparison set*: the same group settings other than the schedule (arch, dataset,
momentum, ...) and the same initial batch size and learning rate. Per schedule of a set (columns of
schedules.csv): `n_seeds`; `steps` (the median over its runs of the optimizer steps taken; `steps_min`,
`steps_max`); `final_ratio`, BS/LR in the last epoch; `same_trajectory` (whether its BS/LR over the epochs
equals the reference schedule's); the final and the best test accuracy, mean and s.d. over seeds; and the
comparison with the *reference*, the set's schedule that decays the learning rate alone (Smith et al.'s
baseline): `steps_ratio` (steps over the reference's), and, paired by seed, the mean difference of the final
(`final_diff`) and best (`best_diff`) test accuracy, its s.d., `n_pairs`, and the two-sided p-value of an
exact sign-flip permutation test of the paired differences (`final_p`, `best_p`; `min_p`, the smallest p
that n_pairs allow: 2 / 2^n). `size` is that test's rejection rate at ALPHA, simulated under a null with
the study's structure (`simulated_size`). schedule_curves.csv: per set, schedule and epoch, the mean (and
s.d.) over seeds of the test accuracy and of the optimizer step, with the epoch's batch size and learning
rate (`epoch_batch_size`, `epoch_lr`; `batch_size` and `lr` are the set's initial ones).

bin/correlate's Tables 1-3 read config.json's batch_size and lr: a scheduled run's initial ones. The
section says so whenever a run has a schedule. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis.model import key_value
from lrbs_tf.runs import folder as rf, schedule as schedules

RUNS_FILE, CURVES_FILE = "schedules.csv", "schedule_curves.csv"
FILES = (RUNS_FILE, CURVES_FILE)
ALPHA = 0.05          # the level at which the sign-flip test's size is simulated and results called significant
SIMULATIONS = 4000    # null draws for `size`
EXACT_MAX_PAIRS = 16  # sign-flip p enumerated exactly up to 2^16 sign vectors; Monte Carlo beyond
CONSTANT = "constant"  # schedules.csv's name for the empty schedule
COLUMNS = ["schedule", "kind", "reference", "n_seeds", "steps", "steps_min", "steps_max", "steps_ratio",
           "final_ratio", "same_trajectory", "final_test_accuracy_mean", "final_test_accuracy_sd",
           "best_test_accuracy_mean", "best_test_accuracy_sd", "n_pairs", "final_diff", "final_diff_sd", "final_p",
           "best_diff", "best_diff_sd", "best_p", "min_p", "size"]


@dataclasses.dataclass
class Schedules:
    table: pd.DataFrame     # schedules.csv
    curves: pd.DataFrame    # schedule_curves.csv
    set_cols: list[str]     # the columns that define a comparison set

    def texts(self) -> dict[str, str]:
        return {RUNS_FILE: self.table.to_csv(index=False), CURVES_FILE: self.curves.to_csv(index=False)}


def kind(text: str) -> str:
    """'constant', 'lr' (learning-rate steps alone), 'bs' (batch-size steps alone) or 'lr+bs'."""
    return "+".join(schedules.parse(text)) or CONSTANT


def ratio_trajectory(text: str, batch_size: int, lr: float, epochs: int) -> list[float]:
    """BS/LR in each of `epochs` epochs under schedule `text`."""
    return [schedules.batch_size_at(text, batch_size, e) / (lr * schedules.lr_multiplier(text, e))
            for e in range(epochs)]


def sign_flip_p(diffs: Sequence[float], rng: np.random.Generator | None = None) -> float:
    """Two-sided p of the paired differences' mean under the sign-flip null (each difference as likely
    negative as positive): exact over all 2^n sign vectors up to EXACT_MAX_PAIRS, else 20,000 random ones
    (the observed one counted). NaN without a difference."""
    d = np.asarray(diffs, float)
    if len(d) == 0:
        return math.nan
    return float(_sign_flip_ps(d[None, :], rng)[0])


@functools.lru_cache(maxsize=None)
def _all_signs(n: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


def _sign_flip_ps(d: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """sign_flip_p of each row of `d` (rows of n paired differences)."""
    n = d.shape[1]
    exact = n <= EXACT_MAX_PAIRS
    signs = _all_signs(n) if exact else (rng or np.random.default_rng(0)).choice((1.0, -1.0), size=(20_000, n))
    observed = np.abs(d.mean(axis=1))
    means = np.abs(d @ signs.T) / n                      # (rows, sign vectors)
    hits = np.sum(means >= observed[:, None] - 1e-12, axis=1)
    return hits / len(signs) if exact else (hits + 1) / (len(signs) + 1)


def simulated_size(n_pairs: int, sd_a: float, sd_b: float, n_test: int, alpha: float = ALPHA,
                   sims: int = SIMULATIONS, seed: int = 0) -> float:
    """The sign-flip test's rejection rate at `alpha` when two schedules end alike in distribution, with the
    study's structure: a seed's two runs share its initialisation and data order (a shared component of
    s.d. equal to the smaller of the two), each schedule adds its own seed noise (s.d. `sd_a`, `sd_b`:
    unequal variances), and an accuracy is a count out of `n_test` test examples (rounded to 1/n_test)."""
    if n_pairs < 1:
        return math.nan
    rng = np.random.default_rng(seed)
    shared_sd = min(sd_a, sd_b)
    own_a = math.sqrt(max(sd_a ** 2 - shared_sd ** 2 / 2, 0.0))
    own_b = math.sqrt(max(sd_b ** 2 - shared_sd ** 2 / 2, 0.0))
    shared = rng.normal(0.0, shared_sd / math.sqrt(2), size=(sims, n_pairs))
    a = np.round((0.7 + shared + rng.normal(0.0, own_a, size=(sims, n_pairs))) * n_test) / n_test
    b = np.round((0.7 + shared + rng.normal(0.0, own_b, size=(sims, n_pairs))) * n_test) / n_test
    return float(np.mean(_sign_flip_ps(a - b, rng) < alpha))


def _run_records(done: pd.DataFrame, configs: dict[str, dict], results: Path) -> pd.DataFrame:
    """One row per done run of the comparison sets that hold a schedule: its schedule, steps and curve."""
    rows = []
    for run in done.to_dict("records"):
        config = configs.get(run["run_dir"], {})
        metrics = rf.read_metrics(results / run["run_dir"])
        text = schedules.canonical(config.get("schedule") or "")
        curve = pd.DataFrame({
            "epoch": [m.get("epoch") for m in metrics],
            "step": [m.get("step") for m in metrics],
            "test_accuracy": [m.get("test_accuracy") for m in metrics],
            "batch_size": [m.get("batch_size", run["batch_size"]) for m in metrics],
            "lr_now": [m.get("lr", run["lr"]) for m in metrics]}).astype(float)
        rows.append({**run, "schedule_text": text, "curve": curve,
                     "steps_taken": float(curve["step"].iloc[-1]) if len(curve) else math.nan,
                     "n_test": config.get("num_test"), "epochs_trained": len(curve)})
    return pd.DataFrame(rows)


def _compare(runs: pd.DataFrame, ref: pd.DataFrame, column: str) -> tuple[int, float, float, float]:
    """Paired by seed: n pairs, mean and s.d. of the differences (runs minus reference), sign-flip p."""
    a = runs.set_index("seed")[column]
    b = ref.set_index("seed")[column]
    common = sorted(set(a.index) & set(b.index))
    d = np.array([a[s] - b[s] for s in common], float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    return len(d), float(d.mean()) if len(d) else math.nan, sd, sign_flip_p(d)


def _schedule_row(text: str, g: pd.DataFrame, ref_text: str | None, ref: pd.DataFrame | None,
                  ref_trajectory: list[float] | None) -> dict:
    bs, lr = int(g["batch_size"].iloc[0]), float(g["lr"].iloc[0])
    epochs = int(g["epochs_trained"].max())
    trajectory = ratio_trajectory(text, bs, lr, epochs)
    row = {"schedule": text or CONSTANT, "kind": kind(text), "reference": ref_text or "", "n_seeds": len(g),
           "steps": float(g["steps_taken"].median()), "steps_min": float(g["steps_taken"].min()),
           "steps_max": float(g["steps_taken"].max()), "final_ratio": trajectory[-1] if trajectory else math.nan}
    for measure in ("final_test_accuracy", "best_test_accuracy"):
        row[f"{measure}_mean"] = float(g[measure].mean())
        row[f"{measure}_sd"] = float(g[measure].std(ddof=1)) if len(g) > 1 else math.nan
    row["same_trajectory"] = (bool(np.allclose(trajectory, ref_trajectory, rtol=1e-9))
                              if ref_trajectory is not None and len(trajectory) == len(ref_trajectory) else None)
    nan = math.nan
    row.update({"steps_ratio": nan, "n_pairs": 0, "final_diff": nan, "final_diff_sd": nan, "final_p": nan,
                "best_diff": nan, "best_diff_sd": nan, "best_p": nan, "min_p": nan, "size": nan})
    if ref is not None and ref_text is not None and text != ref_text:
        row["steps_ratio"] = row["steps"] / float(ref["steps_taken"].median())
        n, row["final_diff"], row["final_diff_sd"], row["final_p"] = _compare(g, ref, "final_test_accuracy")
        _, row["best_diff"], row["best_diff_sd"], row["best_p"] = _compare(g, ref, "best_test_accuracy")
        row["n_pairs"] = n
        if n:
            row["min_p"] = min(1.0, 2.0 / 2 ** n)
            n_test = int(g["n_test"].dropna().iloc[0]) if g["n_test"].notna().any() else 10_000
            sds = [float(x["final_test_accuracy"].std(ddof=1)) if len(x) > 1 else 0.0 for x in (g, ref)]
            row["size"] = simulated_size(n, *sds, n_test=n_test)
    return row


def _curve_rows(keys: dict, text: str, g: pd.DataFrame) -> list[dict]:
    frames = pd.concat([r["curve"].assign(seed=r["seed"]) for r in g.to_dict("records")])
    rows = []
    for epoch, e in frames.groupby("epoch", sort=True):
        rows.append({**keys, "schedule": text or CONSTANT, "epoch": int(epoch), "n": len(e),
                     "step": float(e["step"].mean()), "epoch_batch_size": float(e["batch_size"].iloc[0]),
                     "epoch_lr": float(e["lr_now"].iloc[0]),
                     "test_accuracy_mean": float(e["test_accuracy"].mean()),
                     "test_accuracy_sd": float(e["test_accuracy"].std(ddof=1)) if len(e) > 1 else math.nan})
    return rows


def _reference(texts: Sequence[str]) -> str | None:
    """The set's learning-rate-decay schedule (an lr term alone), when there is exactly one."""
    decays = [t for t in texts if kind(t) == "lr"]
    return decays[0] if len(decays) == 1 else None


def compute(runs: pd.DataFrame, configs: dict[str, dict], results: Path,
            group_cols: Sequence[str]) -> Schedules | None:
    """schedules.csv and schedule_curves.csv over the done runs of `runs`; None when no done run has a
    schedule (bin/correlate then writes neither and its report has no Schedules section)."""
    done = runs[runs["status"] == rf.STATUS_DONE]
    scheduled = [r for r in done["run_dir"] if (configs.get(r, {}).get("schedule") or "")]
    if not scheduled:
        return None
    set_cols = [c for c in group_cols if c != "schedule"] + ["batch_size", "lr"]
    keyed = done.assign(_key=[tuple(key_value(v) for v in row)
                              for row in done[set_cols].itertuples(index=False)])
    wanted = set(keyed.loc[keyed["run_dir"].isin(scheduled), "_key"])
    records = _run_records(keyed[keyed["_key"].isin(wanted)], configs, Path(results))
    table, curves = [], []
    for key in sorted(wanted, key=lambda k: tuple(str(v) for v in k)):
        members = records[records["_key"] == key]
        keys = dict(zip(set_cols, key))
        by_text = {t: g for t, g in members.groupby("schedule_text", sort=True)}
        ref_text = _reference(list(by_text))
        ref = by_text.get(ref_text) if ref_text is not None else None
        ref_trajectory = (ratio_trajectory(ref_text, int(key[-2]), float(key[-1]), int(ref["epochs_trained"].max()))
                          if ref is not None else None)
        for text in sorted(by_text, key=lambda t: (t != "", t != ref_text, t)):  # constant, reference, others
            g = by_text[text]
            table.append({**keys, **_schedule_row(text, g, ref_text, ref, ref_trajectory)})
            curves += _curve_rows(keys, text, g)
    return Schedules(pd.DataFrame(table, columns=[*set_cols, *COLUMNS]), pd.DataFrame(curves), set_cols)
