"""report.md's Schedules section (lrbs_tf.analysis.schedules): per comparison set, each schedule's steps,
final BS/LR and test accuracy with the seed noise, and its paired comparison with the learning-rate decay.
Formatting only: every number is schedules.csv's."""

from __future__ import annotations

import math

from lrbs_tf.analysis.report.format import md_table
from lrbs_tf.analysis.schedules import ALPHA, CURVES_FILE, RUNS_FILE, Schedules


def _g(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if not math.isnan(sd) else f"{mean:.3f}"


def _yes_no(value: object) -> str:
    return "yes" if value is True or value == 1 else "no" if value is False or value == 0 else "—"


def _verdict(row: dict) -> str:
    """One sentence on a schedule against the set's learning-rate decay."""
    if not row["reference"] or row["schedule"] == row["reference"] or not row["n_pairs"]:
        return ""
    trajectory = {"yes": "the same BS/LR trajectory", "no": "another BS/LR trajectory"}.get(
        _yes_no(row["same_trajectory"]), "BS/LR trajectory unknown")
    if row["min_p"] >= ALPHA:
        test = (f"sign-flip p = {_g(row['final_p'], 2)}; with {row['n_pairs']} seeds no p below {_g(row['min_p'], 2)} "
                f"is possible, so the test cannot reject at {ALPHA:g}")
    else:
        test = (f"sign-flip p = {_g(row['final_p'], 2)} (size at {ALPHA:g}, simulated under a null with the "
                f"study's structure: {_g(row['size'], 2)})")
    return (f"- `{row['schedule']}` ({trajectory}) vs `{row['reference']}`: final test accuracy "
            f"{row['final_diff']:+.4f} ± {_g(row['final_diff_sd'], 2)} (mean ± s.d. of {row['n_pairs']} paired seeds; "
            f"{test}); best test accuracy {row['best_diff']:+.4f} (p = {_g(row['best_p'], 2)}); "
            f"{row['steps']:.0f} optimizer steps against {row['steps'] / row['steps_ratio']:.0f} "
            f"({row['steps_ratio']:.2f}x, {1 - row['steps_ratio']:.0%} fewer updates).")


def section(s: Schedules | None) -> str:
    """'' when no run has a schedule."""
    if s is None:
        return ""
    parts = ["## Schedules: learning-rate and batch-size steps",
             "Runs with a `--schedule` are in groups of their own (group key `schedule`), and **Tables 1-3, "
             "Psi and the ratio sections use each run's initial batch size and learning rate** (config.json's), "
             "not the ones it ended with. Below, runs of the same settings and initial BS and LR are compared "
             "across schedules (Smith et al. 2018: decaying the learning rate vs increasing the batch size by "
             f"the same factor). The reference is the set's learning-rate decay; differences are paired by seed "
             f"(same initialisation and data order). {RUNS_FILE} holds every number, {CURVES_FILE} the curves "
             "of Figure 9."]
    for keys, g in s.table.groupby(s.set_cols, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        title = ", ".join(f"{c}={v}" for c, v in zip(s.set_cols, keys) if not (isinstance(v, float) and math.isnan(v)))
        rows = [[f"`{r['schedule']}`", r["n_seeds"], f"{r['steps']:.0f}", _g(r["final_ratio"], 4),
                 _yes_no(r["same_trajectory"]),
                 _pm(r["final_test_accuracy_mean"], r["final_test_accuracy_sd"]),
                 _pm(r["best_test_accuracy_mean"], r["best_test_accuracy_sd"])] for r in g.to_dict("records")]
        parts.append(f"**{title}**")
        parts.append(md_table(["schedule", "seeds", "optimizer steps", "final BS/LR", "same BS/LR trajectory as "
                               "the reference", "final test accuracy (mean ± s.d.)", "best test accuracy"], rows))
        verdicts = [v for v in (_verdict(r) for r in g.to_dict("records")) if v]
        if verdicts:
            parts.append("\n".join(verdicts))
        elif not g["reference"].astype(bool).any():
            parts.append("No comparison: the set has no single learning-rate-decay schedule (an `lr` term alone) "
                         "to compare with.")
    return "\n\n".join(parts)

