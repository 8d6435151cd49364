"""report.md of bin/correlate: premise checks first, then the paper's tables in its layout, then the rest.

Formatting only: every number comes from the Analysis (the same numbers as the CSV files).
p-values in **bold** are below alpha (the paper bolds significant ones); a trailing `*` marks those still
below alpha after Holm's correction within its multiple-testing family (lrbs_tf.analysis.families).
The sections on ratio sufficiency, equal-ratio invariance, seeds and families are in report_ratio.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Iterator, Sequence

import pandas as pd
import scipy
import statsmodels

from lrbs_tf.analysis import intrinsic as intrinsic_report, stability
from lrbs_tf.analysis.model import (
    EXPECTED_SIGN,
    FIG_CURVES,
    FIG_EQUAL_RATIO,
    FIG_HEATMAP,
    FIG_RATIO,
    FIG_SCHEDULES,
    FIG_SDE,
    FIG_SHARPNESS,
    FIG_STABILITY,
    FIG_STEPS,
    Analysis,
    iter_groups,
    measure_name,
)
from lrbs_tf.analysis.report import (
    momentum as report_momentum,
    ratio as report_ratio,
    scaling as report_scaling,
    schedules as report_schedules,
    sde as report_sde,
    summary,
)
from lrbs_tf.analysis.report.format import cut, fmt_coef, fmt_p, md_table
from lrbs_tf.analysis.stats import EXACT_SPEARMAN_MAX_N
from lrbs_tf.core.text import plural
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import STATUS_SKIPPED, STATUS_UNFINISHED, TARGET

CAPTIONS = {
    FIG_RATIO: "Figure 1: best test accuracy vs BS/LR (log scale), one point per run (hollow: final training "
               "accuracy below the premise threshold; x on the axis: diverged runs); where cells have several "
               "seeds, the cell means with error bars of one s.d. over the seeds. The title gives Table 3's "
               "primary test, without its p where runs of the group are below the premise.",
    FIG_CURVES: "Figure 2: best test accuracy vs batch size (left, one line per learning rate) and vs learning "
                "rate (right, one line per batch size), named in the legend (a colour bar beyond 10 lines); mean "
                "over seeds where a cell has several.",
    FIG_HEATMAP: "Heatmap of best test accuracy (%) over the batch size x learning rate grid, the mean over "
                 "seeds written in each cell; D: only diverged runs, F: only failed runs, blank: no run.",
    FIG_SHARPNESS: "Sharpness quantities vs BS/LR (log scales where all values are positive), one point per run, "
                   "a colour per group (hollow: below the training-accuracy premise); where cells have several "
                   "seeds, cell means with error bars of one s.d.; beside lambda_max, each run's 2 / lr (a dash: "
                   "the plain-SGD stability edge).",
    FIG_EQUAL_RATIO: "Equal-ratio runs: test accuracy (top) and training loss (bottom) vs epoch for the (BS, LR) "
                     "cells that share a BS/LR value, one panel per shared ratio (where there are "
                     "more than a figure holds, those held by the most cells, and the figure says how many it "
                     "draws), a colour per cell, one line per seed "
                     "(Jastrzebski et al. 2018, Fig. 2).",
    FIG_STEPS: "Figure 6: fewest optimizer steps to the target vs batch size (log-log), the perfect-scaling line "
               "through the smallest batch size, and McCandlish et al.'s fitted S(B) with B_crit dashed; x on "
               "the top axis: batch sizes where no learning rate reached the target.",
    FIG_SCHEDULES: "Figure 9: test accuracy vs epoch (left) and vs optimizer step (right) per schedule, the "
                   "mean over seeds with a band of one s.d.; a row per set of runs with equal initial BS and LR.",
    FIG_STABILITY: "Figure 7: lambda_max x lr/2 (solid, dots at the measured checkpoints) and batch sharpness x "
                   "lr/2 (dashed) against the optimizer step, one colour per run (learning rate), a panel per "
                   "batch size; the dotted line at 1 is the stability limit 2/lr.",
    FIG_SDE: "Figure 8: best test accuracy against SVAG's l (1: plain SGD; equal SDE time), a panel per batch size, "
             "a colour per learning rate: mean over seeds with one s.d., the seeds as dots; dashed: cells where "
             "l = 1 and the largest l differ (sde.csv).",
}

TITLES = {"table1": "Table 1: test accuracy vs batch size, at each learning rate",
          "table2": "Table 2: test accuracy vs learning rate, at each batch size",
          "table3": "Table 3: test accuracy vs BS/LR, over all runs of a group"}



def _value(v: object) -> object:
    """A runs.csv value for a report table: NaN/None blank, floats short ('0.08', not '0.08000000000000002')."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _run_list(frame: pd.DataFrame, columns: Sequence[str], what: str) -> str:
    if frame.empty:
        return "None."
    rows, more = cut([[_value(r[c]) for c in columns] for r in frame.to_dict("records")], what, "runs.csv")
    return md_table(columns, rows) + more


def premise_section(a: Analysis) -> str:
    runs, out = a.runs, ["## Premise checks"]
    counts = runs["status"].value_counts()
    out.append("Run folders found: " + ", ".join(f"{counts[s]} {s}" for s in counts.index) + ". Only runs "
               "with status `done` are analysed; diverged and failed runs are excluded from every test.")
    rows = []
    # Every status counts here, so the groups are those of all runs whose arch and dataset are known.
    known = runs[runs["arch"].notna() & runs["dataset"].notna()]
    for _, label, g in iter_groups(known, a.group_cols, a.labels):
        done = g[g["status"] == rf.STATUS_DONE]
        rows.append([label, len(done), int((~done["reached_min_train_accuracy"].astype(bool)).sum()),
                     *(int((g["status"] == s).sum()) for s in (rf.STATUS_DIVERGED, rf.STATUS_FAILED,
                                                                STATUS_UNFINISHED, STATUS_SKIPPED))])
    out.append(md_table(["group", "done (analysed)", f"of which final train acc < {a.min_train_accuracy:g}",
                         "diverged", "failed", "unfinished", "skipped"], rows))
    out.append("### Diverged and failed runs (excluded)")
    bad = runs[runs["status"].isin([rf.STATUS_DIVERGED, rf.STATUS_FAILED])]
    out.append(_run_list(bad, ["run_dir", "status", "batch_size", "lr", "diverged_epoch", "error"],
                         "diverged or failed runs"))
    out.append(report_ratio.diverged_section(a))
    out.append("### Unfinished runs (no result.json; not analysed)")
    out.append(_run_list(runs[runs["status"].isin((STATUS_UNFINISHED, "running"))], ["run_dir", "batch_size", "lr"],
                         "unfinished runs"))
    out.append("### Skipped run folders (corrupt, partial or unreadable)")
    out.append(_run_list(runs[runs["status"].isin((STATUS_SKIPPED, "corrupt"))], ["run_dir", "problem"],
                         "skipped folders"))
    out.append(f"### Runs below the training-accuracy premise (final train accuracy < {a.min_train_accuracy:g})")
    out.append("The paper assumes every model reaches ~zero training error, so that test accuracy measures "
               "generalisation. These done runs are analysed in Tables 1-2 and in Table 3 `with_flagged`, and "
               "left out of Table 3 `without_flagged`. An unknown final training accuracy counts as below.")
    flagged = a.done[~a.done["reached_min_train_accuracy"].astype(bool)].sort_values("final_train_accuracy")
    out.append(_run_list(flagged, ["run_dir", "batch_size", "lr", "final_train_accuracy", TARGET],
                         "flagged runs"))
    out.append("### Settings that vary inside a group")
    if a.uncontrolled:
        out.append("Groups pool runs that should differ only in batch size, learning rate and seed. These "
                   "config.json keys also vary (split on them with `--group_by` if they matter):")
        out.append(md_table(["group", "key", "values"],
                            [[g, k, ", ".join(v[:4]) + (f" … ({len(v)} values)" if len(v) > 4 else "")]
                             for g, kv in a.uncontrolled.items() for k, v in kv.items()]))
    else:
        out.append("None: inside each group only batch size, learning rate and seed vary.")
    out.append("### Replicates and duplicates")
    rep = [[lab, int(c.min()), int(c.max()), g["seed"].nunique()] for lab, g, c in _cells(a)]
    out.append(md_table(["group", "min runs per (BS, LR) cell", "max", "distinct seeds"], rep))
    if not a.duplicates.empty:
        same = a.duplicates[a.duplicates["identical"].astype(bool)]
        other = a.duplicates[~a.duplicates["identical"].astype(bool)]
        out.append(f"Run folders that repeat another's group, batch size, learning rate and seed enter every test "
                   f"once (the first by run_dir is kept; the others have status `duplicate` in runs.csv): "
                   f"{plural(len(same), 'identical copy', 'identical copies')} merged, "
                   f"{plural(len(other), 'rerun')} with other results.")
        if len(other):
            out.append("**Reproducibility problem**: these runs repeat a configuration and seed but their results "
                       "differ from the kept run's; only the kept run is analysed. Either the training is not "
                       "deterministic or something else changed between them:")
            out.append(_run_list(other, ["run_dir", "kept_run_dir", "differs_in", "seed", TARGET], "reruns"))
        if len(same):
            out.append(_run_list(same, ["run_dir", "kept_run_dir", "batch_size", "lr", "seed"], "copies"))
    notes = a.done[a.done["problem"].astype(str) != ""]
    if not notes.empty:
        out.append("### Notes on analysed runs")
        out.append(_run_list(notes, ["run_dir", "problem", "source"], "notes"))
    return "\n\n".join(out)


def _cells(a: Analysis) -> Iterator[tuple[str, pd.DataFrame, pd.Series]]:
    for _, label, g in a.groups():
        yield label, g, g.groupby(["batch_size", "lr"]).size()


UNFLAGGED = "without_flagged"  # the subset that leaves out the runs below the premise


def unflagged_repeats(a: Analysis, table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """`table` without its `without_flagged` rows in groups where no done run is flagged (those rows repeat
    the `with_flagged` ones exactly: the same runs), and the sentence that says so ('' when none is left out).
    The CSV files keep every row."""
    if table.empty or "subset" not in table:
        return table, ""
    clean = {label for _, label, g in a.groups() if g["reached_min_train_accuracy"].astype(bool).all()}
    labels = [a.label(r) for r in table.to_dict("records")]
    drop = (table["subset"] == UNFLAGGED).to_numpy(bool) & [lab in clean for lab in labels]
    if not drop.any():
        return table, ""
    groups = sorted({lab for lab, d in zip(labels, drop) if d})
    return table[~drop], (f"`{UNFLAGGED}`: same as `with_flagged` (no run is flagged in "
                          f"{', '.join(groups)}), so its rows are not repeated here.")


def paper_layout(a: Analysis, table: pd.DataFrame, row_col: str | None) -> str:
    """One row per fixed value (LR or BS; a single row for Table 3), a (rho, p) column pair per group."""
    if table.empty:
        return "No tests."
    labels = [a.label(r) for r in table.to_dict("records")]
    groups = list(dict.fromkeys(labels))
    header = [row_col or "subset"] + [f"{g} {h}" for g in groups for h in ("rho", "p")]
    table = table.assign(_label=labels)
    index = sorted(table[row_col].unique()) if row_col else list(dict.fromkeys(table["subset"]))
    rows = []
    for value in index:
        row = [f"{value:g}" if row_col else value]
        for g in groups:
            hit = table[(table["_label"] == g) & (table[row_col or "subset"] == value)]
            if hit.empty:
                row += ["", ""]
                continue
            r = hit.iloc[0]
            row += [fmt_coef(r["spearman_rho"], r["reason"]), fmt_p(r["spearman_p"], a.alpha, r["spearman_p_holm"])]
        rows.append(row)
    return md_table(header, rows)


def full_rows(a: Analysis, table: pd.DataFrame, extra: Sequence[str]) -> str:
    """Every statistic of every test of `table`, with n and adjusted p-values."""
    header = ["group", *extra, "n", "rho", "p", "p Holm", "p BH", "r", "p", "tau", "p", "reason"]
    rows = []
    for r in table.to_dict("records"):
        rows.append([a.label(r), *(r[e] for e in extra), r["n"],
                     fmt_coef(r["spearman_rho"]), fmt_p(r["spearman_p"], a.alpha, r["spearman_p_holm"]),
                     fmt_p(r["spearman_p_holm"], a.alpha), fmt_p(r["spearman_p_bh"], a.alpha),
                     fmt_coef(r["pearson_r"]), fmt_p(r["pearson_p"], a.alpha, r["pearson_p_holm"]),
                     fmt_coef(r["kendall_tau"]), fmt_p(r["kendall_p"], a.alpha, r["kendall_p_holm"]),
                     r["reason"]])
    return md_table(header, rows)


def signs_section(a: Analysis, signs: pd.DataFrame) -> str:
    out = ["## Signs of the Spearman coefficients",
           "The paper claims negative coefficients in Tables 1 and 3 and positive ones in Table 2; its own "
           "Table 2 changes sign for VGG-19 on CIFAR-100 at batch sizes 16-48. Counts per table and group:"]
    out.append(md_table(["table", "group", "tests", "untestable", "positive", "negative",
                         f"significant positive (p<{a.alpha:g})", "significant negative",
                         "against the paper", "significant against the paper"],
                        signs.itertuples(index=False)) if not signs.empty else "No tests.")
    against = []
    for name, col in (("table1", "lr"), ("table2", "batch_size"), ("table3", "subset")):
        t = a.tables[name]
        sign = EXPECTED_SIGN[name]
        for r in t[t["spearman_rho"] * sign < 0].to_dict("records"):
            value = r[col] if col == "subset" else f"{r[col]:g}"
            against.append([name, a.label(r), f"{col}={value}", r["n"], fmt_coef(r["spearman_rho"]),
                            fmt_p(r["spearman_p"], a.alpha, r["spearman_p_holm"])])
    out.append("Coefficients with the sign opposite to the paper's claim:")
    out.append(md_table(["table", "group", "at", "n", "rho", "p"], against) if against else "None.")
    return "\n\n".join(out)


def psi_section(a: Analysis) -> str:
    psi, same = unflagged_repeats(a, a.psi)
    rows = [[a.label(r), r["subset"], r["measure"], r["n"], fmt_coef(r["psi"], r["reason"]),
             fmt_coef(r["psi_batch_size"]), fmt_coef(r["psi_lr"]), r["subgroups_batch_size"],
             r["subgroups_lr"], r["subgroups_skipped"]] for r in psi.to_dict("records")]
    return "\n\n".join([
        "## Granulated Kendall coefficient Psi (Jiang et al. 2019)",
        "psi_batch_size: mean Kendall tau-b of (measure, test accuracy) over the fixed-LR subgroups (only "
        "the batch size varies); psi_lr: over the fixed-batch-size subgroups; Psi: their mean. For the "
        "measure BS/LR the paper's claim means Psi < 0.",
        md_table(["group", "subset", "measure", "n", "Psi", "psi_batch_size", "psi_lr", "subgroups (BS)",
                  "subgroups (LR)", "subgroups skipped"], rows), *_notes(same)])


def sharpness_section(a: Analysis) -> str:
    if "sharpness" not in a.tables:
        return "## Sharpness\n\nNo run has a sharpness.json with a known quantity " \
               "(run bin/sharpness on the run folders)."
    done = a.done
    sharp, same = unflagged_repeats(a, a.tables["sharpness"])
    have = md_table(["quantity", "", "done runs with a value", "missing"],
                    [[q, measure_name(q), int(done[q].notna().sum()), int(done[q].isna().sum())]
                     for q in a.sharpness_quantities])
    return "\n\n".join(["## Sharpness", "Runs without a value for a quantity are left out of its tests "
                        "(`n_missing` in sharpness.csv). With all done runs they form the family `sharpness`, "
                        "without the flagged runs `sharpness_sensitivity`, per group. The unit is the cell (column "
                        "`unit`): with seeds the cell means; with one run per cell the runs, with p-values from "
                        "permuting the quantity within each batch-size column, as Table 3's primary; the "
                        "run-level p stays as `spearman_p_runs`.", have,
                        full_rows(a, sharp, ["quantity", "versus", "subset"]), *_notes(same)])


def _notes(*texts: str) -> list[str]:
    return [t for t in texts if t]


def _varying_note(a: Analysis) -> str:
    """Which group settings were added because they vary (--group_by's `varying`); '' when none was."""
    if not a.grouped_varying:
        return ""
    return (f" ({', '.join(a.grouped_varying)}: identity settings that vary across the results folder besides "
            "batch size, learning rate and seed, so each value is its own group; --group_by chooses)")


def render(a: Analysis, signs: pd.DataFrame) -> str:
    """The whole report.md."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    f = a.families
    counted = f[f["statistic"].isin(["spearman_p", "p_ratio", "p_permutation"])] if len(f) else f
    table3, same3 = unflagged_repeats(a, a.tables["table3"])
    parts = [
        "# Batch size, learning rate and generalisation: correlation report",
        f"Results folder `{a.results}`; {plural(len(a.done), 'run')} analysed in "
        f"{plural(len(a.labels), 'group')} "
        f"({', '.join(a.labels.values())}); {plural(int(counted['tests'].sum()) if len(f) else 0, 'test')} in "
        f"{plural(len(counted), 'multiple-testing family', 'multiple-testing families')}. Generated {now} by "
        f"bin/correlate with scipy {scipy.__version__} and statsmodels {statsmodels.__version__}.",
        f"Measure of generalisation: the best test accuracy over all epochs (the paper's). Significance: "
        f"p < {a.alpha:g} in **bold**; `*` when still significant after Holm's correction in its family "
        f"(section Multiple testing). Spearman p-values of tests with n <= {EXACT_SPEARMAN_MAX_N} are exact "
        "permutation p-values, larger n use scipy's t approximation (column spearman_p_method). Groups: "
        f"{', '.join(a.group_cols)}{_varying_note(a)}. Columns and statistics: docs/correlate.md.",
        summary.section(a),
        premise_section(a),
        report_ratio.noise_section(a),
        "## " + TITLES["table3"], "Spearman rho and p, the paper's layout. The primary row (table3.csv "
        "`primary`): `cell_means` (one point per (BS, LR) cell, the mean over its seeds) when seeds repeat "
        "cells; with one run per cell, `column_permutation` (He et al.'s Spearman over all done runs, its p from "
        "permuting accuracy within each batch-size column, whose runs share one shock). Sensitivity rows, "
        "adjusted in their own family: `with_flagged` (all done runs, the paper's run-level test), "
        "`without_flagged` (only runs that met the training-accuracy premise), the other of `cell_means` / "
        "`column_permutation`, `diverged_worst` (diverged runs kept, ranked below every done run; rank "
        "statistics only):",
        paper_layout(a, table3, None),
        *_notes(same3),
        *_notes(report_ratio.table3_primary_note(a)),
        *_notes(report_ratio.small_n_note(a, a.tables["table3"], "Table 3")),
        "All statistics (rho: Spearman, r: Pearson on the raw ratio, tau: Kendall tau-b):",
        full_rows(a, table3, ["subset"]),
        *report_ratio.sections(a),
        psi_section(a),
        "## " + TITLES["table1"], paper_layout(a, a.tables["table1"], "lr"),
        *_notes(report_ratio.small_n_note(a, a.tables["table1"], "Table 1")),
        "## " + TITLES["table2"], paper_layout(a, a.tables["table2"], "batch_size"),
        *_notes(report_ratio.small_n_note(a, a.tables["table2"], "Table 2")),
        signs_section(a, signs),
        "## Pearson and Kendall, Tables 1 and 2",
        full_rows(a, a.tables["table1"], ["lr"]), full_rows(a, a.tables["table2"], ["batch_size"]),
        report_ratio.families_section(a),
        sharpness_section(a),
        *report_scaling.sections(a),
        intrinsic_report.section(a.intrinsic),
        stability.section(a.stability),
        report_sde.section(a.sde),
        report_schedules.section(a.schedules),
        report_momentum.section(a),
        "## Figures",
        *(f"![{CAPTIONS[f]}]({f}.png)\n\n{CAPTIONS[f]} ([PDF]({f}.pdf))" for f in a.figures),
    ]
    if not a.figures:
        parts.append("Not drawn (--nofigures).")
    return "\n\n".join(parts) + "\n"
