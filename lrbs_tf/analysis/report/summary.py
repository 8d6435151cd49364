"""report.md's first section, and what bin/correlate prints: the answer per group in a few lines.

Each line states one primary result with its test, n and p, read from the same rows the detailed sections
print (so a sentence here and a star there come from one computation), then the warnings that change how to
read them. Leaf of report/: the numbers come from the Analysis, never from literals.
"""

from __future__ import annotations

import math

import pandas as pd

from lrbs_tf.analysis.model import Analysis, group_keys, measure_name
from lrbs_tf.core.text import plural as _n
from lrbs_tf.runs.table import TARGET

MAX_LINES = 15  # per group: the summary fits a first screen


def _span(values: pd.Series, fmt: str) -> str:
    """'16-256', or '16' where every value is one."""
    lo, hi = (int(values.min()), int(values.max())) if fmt == "d" else (values.min(), values.max())
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def _p(p: float) -> str:
    return "—" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def _verdict(p: float, alpha: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "untestable"
    return f"significant at alpha = {alpha:g}" if p < alpha else f"not significant at alpha = {alpha:g}"


def _rows(a: Analysis, table: pd.DataFrame | None, key: tuple) -> pd.DataFrame:
    """The rows of `table` in the group `key` (analysis.model.group_keys, as iter_groups selects them; rows
    of a run folder whose group could not be read match no key)."""
    if table is None or table.empty:
        return pd.DataFrame()
    return table[group_keys(table, a.group_cols) == key]


def _accuracy_row(a: Analysis, table: pd.DataFrame | None, key: tuple) -> pd.Series | None:
    """The group's first row of `table` about best test accuracy (TARGET), or None when it has none."""
    rows = _rows(a, table, key)
    acc = rows[rows["measure"] == TARGET] if not rows.empty else rows
    return None if acc.empty else acc.iloc[0]


def _table3_line(a: Analysis, key: tuple) -> str | None:
    rows = _rows(a, a.tables.get("table3"), key)
    if rows.empty or "primary" not in rows:
        return None
    primary = rows[rows["primary"].astype(bool)]
    if primary.empty:
        return None
    r = primary.iloc[0]
    if not math.isfinite(float(r["spearman_rho"])):
        return f"- Table 3 (best test accuracy vs BS/LR): untestable ({r.get('reason') or 'see Table 3'})."
    return (f"- Table 3 (best test accuracy vs BS/LR): Spearman rho = {r['spearman_rho']:+.2f}, "
            f"p = {_p(r['spearman_p'])} ({r['subset']}, n = {int(r['n'])}, family table3): "
            f"{_verdict(r['spearman_p'], a.alpha)}; He et al. expect rho < 0.")


def _ratio_line(a: Analysis, key: tuple) -> str | None:
    r = _accuracy_row(a, a.ratio_test, key)
    if r is None:
        return None
    p = r["p_ratio"]
    if not math.isfinite(float(p)):
        return f"- Does BS/LR alone govern accuracy? Untestable here ({r.get('reason') or 'ratio_test.csv'})."
    reading = ("the data depart from a law in BS/LR alone" if p < a.alpha
               else "no significant departure from a law in BS/LR alone (not proof that it suffices)")
    return (f"- Does BS/LR alone govern accuracy? p_ratio = {_p(p)} ({r['p_ratio_method']}, n = {int(r['n'])}): "
            f"{reading}.")


def _invariance_line(a: Analysis, key: tuple) -> str | None:
    r = _accuracy_row(a, a.invariance, key)
    if r is None or not math.isfinite(float(r["p_permutation"])):
        return None
    return (f"- Equal-ratio invariance of accuracy ({int(r['n_shared_ratios'])} shared ratios, unit "
            f"{r['unit']}): p = {_p(r['p_permutation'])}: "
            f"{'equal-ratio cells end more alike' if r['p_permutation'] < a.alpha else 'not shown to end more alike'} "
            "than cells of neighbouring ratios.")


def _sharpness_line(a: Analysis, key: tuple) -> str | None:
    rows = _rows(a, a.tables.get("sharpness"), key)
    if rows.empty:
        return None
    rows = rows[(rows["versus"] == "ratio") & (rows["subset"] == "with_flagged")]
    parts = [f"{measure_name(r['quantity'])} rho = {r['spearman_rho']:+.2f}, p = {_p(r['spearman_p'])}"
             for _, r in rows.iterrows() if math.isfinite(float(r["spearman_rho"]))]
    if not parts:
        return None
    unit = rows.iloc[0].get("unit", "runs")
    return (f"- Curvature vs BS/LR ({unit}, family sharpness; Jastrzebski et al. expect rho > 0): "
            + "; ".join(parts) + ".")


def _steps_line(a: Analysis, key: tuple) -> str | None:
    steps = a.steps_to_result
    fit = getattr(steps, "fit", None) if steps is not None else None
    if fit is None or not len(fit):
        return None
    rows = _rows(a, fit, key)
    if rows.empty or "b_crit" not in rows:
        return None
    r = rows.iloc[0]
    note = r.get("note") or ""
    return f"- Steps to result: McCandlish's B_crit = {r['b_crit']:.3g}" + (f" ({note})." if note else ".")


def _warnings(a: Analysis, key: tuple, label: str, done: pd.DataFrame) -> list[str]:
    runs = _rows(a, a.runs, key)
    out = []
    below = int((~done["reached_min_train_accuracy"].astype(bool)).sum())
    if below:
        out.append(f"{below} of {len(done)} done runs are below the premise (final training accuracy < "
                   f"{a.min_train_accuracy:g}): the paper's claim assumes near-zero training error")
    diverged = int((runs["status"] == "diverged").sum()) if len(runs) else 0
    if diverged:
        out.append(f"{_n(diverged, 'run')} diverged (left out of the tests; Table 3's diverged_worst row keeps them)")
    cells = done.groupby(["batch_size", "lr"]).size()
    if len(cells) and int(cells.max()) == 1:
        out.append("one run per (BS, LR) cell: the seed noise is unmeasured (add seeds to the grid; the "
                   "seed-noise section below says how)")
    dup = int((runs["status"] == "duplicate").sum()) if len(runs) and "status" in runs else 0
    if dup:
        out.append(f"{_n(dup, 'duplicate run folder')} entered once (runs.csv status duplicate)")
    if a.uncontrolled.get(label):
        out.append(f"settings other than BS, LR and seed vary inside the group: {', '.join(a.uncontrolled[label])}")
    return out


def group_summary(a: Analysis, key: tuple, label: str, done: pd.DataFrame) -> list[str]:
    """The summary lines of one group (at most MAX_LINES)."""
    cells = done.groupby(["batch_size", "lr"]).size()
    seeds = sorted(done["seed"].dropna().unique()) if "seed" in done else []
    head = (f"**{label}**: {_n(len(done), 'done run')} in {_n(len(cells), '(BS, LR) cell')}, "
            f"{_n(len(seeds), 'seed')}; "
            f"BS {_span(done['batch_size'], 'd')}, LR {_span(done['lr'], 'g')}.")
    lines = [head]
    for make in (_table3_line, _ratio_line, _invariance_line, _sharpness_line, _steps_line):
        line = make(a, key)
        if line:
            lines.append(line)
    warnings = _warnings(a, key, label, done)
    if warnings:
        lines.append("- Read with care: " + "; ".join(warnings) + ".")
    return lines[:MAX_LINES]


def summary_lines(a: Analysis) -> list[str]:
    """Every group's summary, groups in their report order."""
    out: list[str] = []
    done = a.done
    for key, label in a.labels.items():
        g = _rows(a, done, key)
        if g.empty:
            continue
        out += group_summary(a, key, label, g) + [""]
    return out[:-1] if out else ["No group has a done run."]


def section(a: Analysis) -> str:
    """report.md's "Summary" section: the answer first, the details in the sections below."""
    return "## Summary\n\n" + "\n".join(summary_lines(a))
