"""report.md's section on momentum: where the ratio analyses placed runs with momentum, and whether momentum
and the learning rate were interchangeable (analysis.momentum, momentum.csv)."""

from __future__ import annotations

import math

from lrbs_tf.analysis import calibration
from lrbs_tf.analysis.model import Analysis
from lrbs_tf.analysis.momentum import FILE, PAIRED
from lrbs_tf.analysis.report.format import cut, fmt_p, md_table
from lrbs_tf.runs import folder as rf

TITLE = "## Momentum and the effective learning rate"


def _points(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:+.2f}"


def _size() -> str:
    """The recorded false-positive rate of the test (benchmarks/calibration.json, entry momentum_interchange)."""
    entry = (calibration.load() or {}).get("momentum_interchange")
    summary = calibration.size_summary(entry, "momentum_interchange") if entry else ""
    return summary or "not recorded (benchmarks/calibration.py --momentum_only)"


def section(a: Analysis) -> str:
    """The section: the placement note, then one table row per compared momentum."""
    r = a.momentum
    placed = (f"Runs with momentum mu are placed at their effective learning rate lr / (1 - mu) in every ratio "
              f"analysis above and below (Tables 1-3, the sharpness tests, Psi, cells.csv, the ratio and "
              f"invariance tests, Figures 1-5): their `lr` there is lr / (1 - mu) and their ratio "
              f"BS (1 - mu) / lr; runs.csv keeps the raw `lr` and `ratio` beside `{rf.EFFECTIVE_LR}` and "
              f"`{rf.EFFECTIVE_RATIO}`." if a.momentum_placed else
              "Every done run has momentum 0: effective and raw learning rates are the same.")
    if r is None or r.table.empty:
        why = ("no (batch size, effective LR) cell holds runs at two momenta" if r is not None and r.momenta >= 2
               else "the runs have one momentum")
        return f"{TITLE}\n\n{placed} Interchangeability of momentum and learning rate: not tested ({why})."
    t = r.table
    cells = t.drop_duplicates(["group", "batch_size", "effective_lr"])
    tested = cells[cells["p_cell"].notna()]
    differ = tested[tested["p_holm"] < a.alpha]
    compared = t[t["method"] != "reference"]
    intro = (f"{placed} Interchangeability (Zhang et al.'s NQM rebuttal: at small batch, runs of equal "
             f"lr / (1 - mu) end alike): in each (batch size, effective LR) cell with runs at two or more momenta, "
             f"pooled over momentum, each momentum's best test accuracy against the smallest momentum's, "
             f"paired by seed ({PAIRED}; Welch's t without common seeds); the cell's p is Bonferroni's over its "
             f"comparisons, Holm-adjusted over the cells of a group (`p_holm`). Its size under a realistic null: "
             f"{_size()}. Differences in accuracy points "
             f"(momentum minus reference) with 95% confidence intervals; {FILE} has every row.")
    verdict = (f"**{len(differ)} of {len(tested)} tested cell(s) differ** between momenta at p_holm < {a.alpha:g}"
               if len(differ) else f"No tested cell differs between momenta at p_holm < {a.alpha:g} "
               f"({len(tested)} cell(s))")
    if len(compared):
        lo, hi = compared["diff_ci_low"].min(), compared["diff_ci_high"].max()
        verdict += (f"; the differences span {_points(compared['diff'].min())} to {_points(compared['diff'].max())} "
                    f"points, and the confidence intervals {_points(lo)} to {_points(hi)} points (how large a "
                    "difference the seeds could have missed: not rejecting is not equality).")
    rows = [[x["group"], x["batch_size"], f"{x['effective_lr']:g}", f"{x['momentum']:g}", f"{x['lr']:g}",
             x["n_runs"], f"{100 * x[f'mean_{rf.RESULT_NUMBERS[0]}']:.2f}", f"{x['mean_final_train_loss']:.3g}",
             "reference" if x["method"] == "reference" else
             f"{_points(x['diff'])} [{_points(x['diff_ci_low'])}, {_points(x['diff_ci_high'])}]",
             x["method"], fmt_p(x["p"], a.alpha), fmt_p(x["p_cell"], a.alpha, x["p_holm"])] for _, x in t.iterrows()]
    rows, note = cut(rows, "rows", FILE)
    table = md_table(["group", "BS", "effective LR", "momentum", "lr", "runs", "best test acc. %",
                      "final train loss", "difference, points [95% CI]", "test", "p", "cell p"], rows)
    return "\n\n".join([TITLE, intro, verdict, table + note])
