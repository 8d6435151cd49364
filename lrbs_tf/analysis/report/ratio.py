"""report.md sections on whether the ratio alone governs: seeds and noise, ratio sufficiency, equal-ratio
invariance, diverged runs, the multiple-testing families, and small-n notes.

Formatting only: every number comes from the Analysis (the same numbers as cells.csv, ratio_test.csv,
ratio_invariance.csv and families.csv). A verdict in words is taken at alpha on the Holm-adjusted p-value
of the test's family, so a sentence never claims more than the family-wise error rate allows.
"""

from __future__ import annotations

import math
import shlex
from typing import Sequence

import pandas as pd

from lrbs_tf.analysis import calibration, families as fam, stats
from lrbs_tf.analysis.model import Analysis, iter_groups, measure_name
from lrbs_tf.analysis.ratio_stats import CI_LEVEL
from lrbs_tf.analysis.report.format import fmt_p, md_table
from lrbs_tf.core.text import plural
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import TARGET

FEW_CLUSTERS = 30  # below about this many clusters, cluster-robust errors are known to be too small


def _num(v: float, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _points(v: float) -> str:
    """An accuracy (fraction) or accuracy difference as percentage points."""
    return "—" if math.isnan(v) else f"{100 * v:.2f}"


def _ci(row: dict, name: str, scale: float = 1.0) -> str:
    return (f"{_num(scale * row[name])} [{_num(scale * row[name + '_ci_low'])}, "
            f"{_num(scale * row[name + '_ci_high'])}]")


# Accuracy coefficients are fractions per unit of natural log; the report shows percentage points per
# doubling (x 100 ln 2), the unit a reader of Figure 2 thinks in.
POINTS_PER_DOUBLING = 100 * math.log(2)


def _family_size(a: Analysis, family: str, statistic: str) -> int:
    f = a.families
    hit = f[(f["family"] == family) & (f["statistic"] == statistic)]
    return int(hit["tests"].iloc[0]) if len(hit) else 0


def add_seeds_advice(a: Analysis, total: int = 3) -> str:
    """How to give the cells more seeds, as a command that works: the bin/sweep that made `a.results` (from
    its sweep.json) with the seeds it has plus new ones, which bin/sweep trains in place; else the flag."""
    have = sorted(int(s) for s in a.runs["seed"].dropna().unique()) if "seed" in a.runs else []
    seeds = list(have)
    while len(seeds) < max(total, len(have) + 1):
        seeds.append(max(seeds, default=-1) + 1)
    flag = "--seeds=" + ",".join(map(str, seeds))
    argv = rf.sweep_argv(a.results)
    if argv is None:
        return (f"train with `{flag}`: the bin/sweep that made these runs, started again with it, trains only "
                "the new seeds")
    args = [x for x in argv[1:] if not x.startswith(("--seeds=", "--workdir="))]
    command = shlex.join(["bin/sweep", *args, flag, f"--workdir={a.results}"])
    return f"add seeds in place (only the new runs train): `{command}`"


def noise_section(a: Analysis) -> str:
    out = ["## Seeds and the noise floor",
           "`cells.csv` has one row per (group, BS, LR) cell: its done runs (`n_seeds`), diverged runs, and the "
           "mean and s.d. (ddof = 1) over its runs of the best test accuracy and of each sharpness quantity. The "
           "seed noise is the pooled within-cell s.d., sqrt(sum (n_c - 1) s_c^2 / sum (n_c - 1)) over the cells "
           "with at least two runs; beside it, the range the cell means span over the grid (accuracy in "
           "percentage points)."]
    rows = []
    for r in a.noise.to_dict("records"):
        acc = r["measure"] == TARGET
        show = _points if acc else _num
        rows.append([a.label(r), measure_name(r["measure"]), r["cells"], r["cells_with_seeds"],
                     f"{show(r['pooled_sd'])} (df {r['df']})" if r["df"] else "not measurable (one run per cell)",
                     f"{show(r['cell_mean_min'])} to {show(r['cell_mean_max'])}", show(r["cell_mean_range"]),
                     _num(r["range_over_sd"], 2)])
    out.append(md_table(["group", "measure", "cells", "cells with >= 2 runs", "seed noise (pooled s.d.)",
                         "cell means", "range", "range / noise"], rows))
    if (a.noise["df"] == 0).all():
        out.append("Every cell has one run, so the seed noise cannot be measured and no difference between two "
                   "cells can be told from the noise of one seed; " + add_seeds_advice(a) + ".")
    return "\n\n".join(out)


def diverged_section(a: Analysis) -> str:
    runs = a.runs[a.runs["arch"].notna() & a.runs["dataset"].notna()]
    rows = []
    for _, label, g in iter_groups(runs, a.group_cols, a.labels):
        d = g[g["status"] == rf.STATUS_DIVERGED]
        where = []
        for (bs, lr), cell in g.groupby(["batch_size", "lr"], sort=True):
            k = int((cell["status"] == rf.STATUS_DIVERGED).sum())
            if k:
                where.append(f"({bs}, {lr:g}): {k}/{len(cell)}")
        rows.append([label, len(d), len(g), "; ".join(where) or "—"])
    return "\n\n".join([
        "### Diverged runs per group (a result: where SGD is unstable)",
        "Where (batch size, learning rate: diverged / runs in the cell). They are left out of every test "
        "except Table 3's `diverged_worst` row, which ranks them below every done run, so the reader sees "
        "whether dropping them changed the conclusion.",
        md_table(["group", "diverged", "runs", "cells"], rows)])


METHOD_WORDS = {
    "equal_ratio_f": "shape-free F-test that cells of equal BS/LR have equal means, against how their differences "
                     "vary from seed to seed",
    "seed_t": "t-test over seeds of the batch-size coefficient of a quadratic law in log(BS/LR), each seed's grid "
              "one replicate (no BS/LR value is shared by two complete cells)",
    "cr2_column": "batch-size coefficient of a quadratic law in log(BS/LR) on the cells, CR2 errors clustered by "
                  "batch size with Bell-McCaffrey degrees of freedom (one seed: the seed noise is unmeasured)",
}


def _df(r: dict) -> str:
    if r["p_ratio_method"] == "equal_ratio_f":
        return f"F({r['primary_df1']:.0f}, {r['primary_df2']:.0f}) = {_num(r['primary_statistic'])}"
    return f"t({_num(r['primary_df1'], 3)}) = {_num(r['primary_statistic'])}"


def _ratio_sentence(a: Analysis, r: dict) -> str:
    what = f"{r['label']}, {measure_name(r['measure'])}" + (" (log scale)" if r["transform"] == "log" else "")
    if r["reason"]:
        return f"- {what}: not testable ({r['reason']})."
    size = _family_size(a, r["family"], "p_ratio")
    dropped = (f", {plural(r['primary_cells_dropped'], 'cell')} left out for a missing seed"
               if r["primary_cells_dropped"] else "")
    p = (f"p_ratio = {fmt_p(r['p_ratio'], a.alpha)} ({METHOD_WORDS.get(r['p_ratio_method'], r['p_ratio_method'])}; "
         f"{_df(r)}; Holm {fmt_p(r['p_ratio_holm'], a.alpha)} in family `{r['family']}` of {size}), "
         f"{plural(r['primary_cells'], 'cell')} x {plural(r['primary_seeds'], 'seed')}{dropped}")
    acc = r["measure"] == TARGET
    scale, unit = (POINTS_PER_DOUBLING, " (points per doubling)") if acc else (1.0, " (elasticities)" if
                                                                               r["transform"] == "log" else "")
    coefs = ""
    if not r["linear_reason"]:
        coefs = (f"; the linear model describes it as an effect of BS {_ci(r, 'coef_log_batch_size', scale)} and of "
                 f"LR {_ci(r, 'coef_log_lr', scale)}, sum {_ci(r, 'coef_sum', scale)}{unit}, R^2 "
                 f"{_num(r['r2_ratio'])} on log(BS/LR) alone against {_num(r['r2_both'])} on both")
    rejected = r["p_ratio_holm"] < a.alpha
    if rejected:
        text = f"- {what}: **BS/LR does not capture the effect**: {p}{coefs}."
    else:
        text = f"- {what}: consistent with BS/LR alone (no significant departure): {p}{coefs}."
    return text + _sensitivity(a, r)


def _sensitivity(a: Analysis, r: dict) -> str:
    """The other variants, named as such: they do not decide."""
    parts = []
    for col, name in (("p_ratio_linear", f"linear Wald test ({r['cov_type']} errors)"),
                      ("p_ratio_quadratic", "the same after a quadratic term in log(BS/LR)"),
                      ("p_ratio_cell_means", "linear on the cell means (HC3)")):
        if not math.isnan(r[col]):
            parts.append(f"{name} p = {fmt_p(r[col], a.alpha)}")
    return f" Sensitivity (not the verdict): {'; '.join(parts)}." if parts else ""


def ratio_section(a: Analysis) -> str:
    out = ["## Does the ratio alone govern? Ratio sufficiency",
           "Per group and measure, `p_ratio` is the primary test (`p_ratio_method`). With seeds, a seed's whole "
           "grid is one independent replicate (its runs share the initial weights, a learning-rate column shares "
           "its batches), so the error is how a comparison varies between seeds: where two cells share a BS/LR "
           "value, the shape-free F-test asks whether cells of equal ratio have equal means, assuming no form "
           "for the law. Without a shared ratio, or with one seed, a quadratic law in log(BS/LR) with small-sample "
           "errors decides. The linear model (OLS of the measure on log BS and log LR, statsmodels; accuracy "
           "effects in percentage points per doubling, sharpness quantities as elasticities; "
           f"{100 * CI_LEVEL:g}% intervals in brackets) describes the effect and its p-values stay as "
           "sensitivity columns. A non-significant p_ratio is not proof that the ratio suffices."]
    t = a.ratio_test
    if t.empty:
        return "\n\n".join(out + ["No tests."])
    t = t.assign(label=[a.label(r) for r in t.to_dict("records")])
    out += [_ratio_sentence(a, r) for r in t.to_dict("records")]
    table = calibration.load()
    sizes = [f"`{m}` {s}" for m in sorted(set(t["p_ratio_method"]) - {""})
             if (s := calibration.size_summary(table, "ratio", m))]
    if sizes:
        out.append("Measured size of the primary test(s) used here, under ratio-only laws with shared column "
                   "randomness: " + "; ".join(sizes) + ".")
    elif table is None:
        out.append(f"The size of these tests is measured by benchmarks/calibration.py ({calibration.CITE}); "
                   "no recorded table was found beside this installation.")
    if (t["primary_seeds"] <= 1).any():
        out.append("With one run per cell the seed noise is unmeasured: an effect of batch size cannot be told "
                   "from a shock shared by the runs of one batch-size column, so the one-seed test clusters by "
                   "column and has few degrees of freedom. To measure it, " + add_seeds_advice(a) + ".")
    return "\n\n".join(out)


def _invariance_sentence(a: Analysis, r: dict) -> str:
    acc, log = r["measure"] == TARGET, r["transform"] == "log"

    def show(v: float) -> str:  # accuracy in points; a log measure as the typical factor between two runs
        if acc:
            return f"{_points(v)} points"
        return f"a factor of {math.exp(v):.2f} (mean abs. difference of ln, {_num(v)})" if log else _num(v)

    what = f"{r['label']}, {measure_name(r['measure'])}"
    if r["reason"]:
        return f"- {what}: not testable ({r['reason']})."
    size = _family_size(a, r["family"], "p_permutation")
    unit = "cells" if r.get("unit") == "cell_means" else "runs"
    alike = (f"**equal-ratio {unit} are more alike than neighbouring-ratio {unit}**" if r["p_permutation_holm"] < a.alpha
             else f"equal-ratio {unit} are not shown to be more alike than neighbouring-ratio {unit}")
    if unit == "cells":
        alike += (f" (cell means, whole cells permuted; the run-level permutation, which treats seeds as "
                  f"independent, gives p = {fmt_p(r['p_permutation_runs'], a.alpha)})")
    seeds = (f", seeds of one cell by {show(r['mad_same_cell'])} ({r['n_same_cell_pairs']} pairs: the noise "
             "floor)" if r["n_same_cell_pairs"] else ", seeds unmeasured (one run per cell)")
    return (f"- {what}: {alike}. Over {r['n_shared_ratios']} shared BS/LR values, runs of equal ratio differ by "
            f"{show(r['mad_equal_ratio'])} on average ({r['n_equal_pairs']} pairs), runs of neighbouring ratios "
            f"(a median factor of {r['neighbour_ratio_factor']:.2f} apart in BS/LR) by "
            f"{show(r['mad_neighbour_ratio'])} ({r['n_neighbour_pairs']} pairs){seeds}; permutation p = "
            f"{fmt_p(r['p_permutation'], a.alpha)} ({r['p_method']}, {r['n_permutations']:,} permutations; "
            f"smallest attainable {_num(r['min_attainable_p'], 2)}; Holm {fmt_p(r['p_permutation_holm'], a.alpha)} "
            f"in family `{r['family']}` of {size}).")


def invariance_section(a: Analysis) -> str:
    out = ["## Equal-ratio invariance (Jastrzebski et al. 2018, Sec. 4)",
           "SGD's dynamics depend on BS/LR only through the ratio as far as the SDE approximation holds, so "
           "runs in different (BS, LR) cells of one ratio should end alike. Statistic: mean absolute difference "
           "(MAD) of the measure over pairs of runs of equal ratio in different cells, against pairs at a "
           "shared ratio and the next distinct ratio below or above it; p-value one-sided (equal-ratio pairs "
           "more alike), permuting the measure over the units in those pairs (scipy permutation_test; the null "
           "is that the units are exchangeable). With seeds the unit is the cell: the statistic is computed on "
           "the cell means and whole cells are permuted, since a seed's runs share randomness and a cell's "
           "effect is shared by its seeds. Whether equal-ratio cells are alike relative to the seed noise is "
           "the shape-free F-test of the section above. `ratio_invariance.csv` has every number."]
    t = a.invariance
    if t.empty:
        return "\n\n".join(out + ["No tests."])
    t = t.assign(label=[a.label(r) for r in t.to_dict("records")])
    out += [_invariance_sentence(a, r) for r in t.to_dict("records")]
    if not a.equal_ratios.empty:
        out.append("Best test accuracy per shared ratio (MAD in percentage points; cells as (BS, LR)):")
        out.append(md_table(["group", "BS/LR", "cells", "runs", "MAD equal ratio", "MAD to neighbouring ratios"],
                            [[a.label(r), f"{r['ratio']:.6g}", r["cells"], r["n_runs"], _points(r["mad_equal_ratio"]),
                              _points(r["mad_neighbour_ratio"])] for r in a.equal_ratios.to_dict("records")]))
    return "\n\n".join(out)


def families_section(a: Analysis) -> str:
    f = a.families
    out = ["## Multiple testing: the families",
           "A family is one claim tested in one group (docs/correlate.md): Table 1, Table 2 and Table 3 (all "
           "done runs) are He et al.'s tests; Table 3's sensitivity rows, the sharpness tests (and their "
           "without-flagged rows), the ratio-sufficiency tests and the invariance tests are each adjusted in "
           "their own family, so nothing else in the results folder changes a family and no test is counted "
           "twice. Each statistic is its own family. Holm controls the family-wise error rate, "
           "Benjamini-Hochberg the false discovery rate (statsmodels multipletests); untestable rows are not "
           "counted."]
    if f.empty:
        return "\n\n".join(out + ["No tests."])
    primary = f[f["kind"].isin(fam.PRIMARY_KINDS) & (f["statistic"] == "spearman_p")]
    out.append(f"He et al.'s tests here: {plural(int(primary['tests'].sum()), 'Spearman test')} in "
               f"{plural(len(primary), 'family', 'families')} over {plural(primary['group'].nunique(), 'group')} "
               "(the paper: 164 over its four grids).")
    rows = []
    for r in f.to_dict("records"):
        floor = r["min_attainable_p"]
        note = ""
        if not math.isnan(floor) and r["tests"]:
            if floor >= a.alpha:
                note = f"cannot reach p < {a.alpha:g} at this n"
            elif floor >= r["holm_threshold"]:
                note = "raw p can pass alpha, Holm cannot"
        rows.append([r["family"], r["statistic"], r["tests"], r["untestable"], r["raw_significant"],
                     r["holm_significant"], r["bh_significant"], _num(r["holm_threshold"], 2),
                     _num(r["min_p"], 2), _num(floor, 2), note])
    out.append(md_table(["family", "statistic", "tests", "untestable", f"p < {a.alpha:g}", "Holm", "BH",
                         "Holm needs p <", "smallest p", "smallest attainable p", "note"], rows))
    return "\n\n".join(out)


def table3_primary_note(a: Analysis) -> str:
    """Which Table 3 row states each group's verdict (table3.csv `primary`), and its measured size."""
    t = a.tables.get("table3")
    if t is None or t.empty or "primary" not in t:
        return ""
    lines, methods = [], set()
    for _, label, g in a.groups(t):
        row = g[g["primary"].astype(bool)]
        if row.empty:
            continue
        r = row.iloc[0]
        if r["subset"] == "cell_means":
            why = ("seeds repeat the cells, so the unit is the cell (its seeds share its configuration and are not "
                   "independent points); the run-level rows are sensitivity checks")
        elif r["subset"] == "column_permutation":
            why = (f"one run per cell: the Spearman of all runs with its p from {int(r['n_permutations']):,} "
                   f"{'(all) ' if r['spearman_p_method'].endswith('exact') else 'random '}arrangements of the "
                   "accuracies within each batch size. Runs of one batch size share its batches and "
                   "initialisation, and with one seed such a shared shock cannot be told from an effect of "
                   "batch size, so this p asks only whether accuracy falls with BS/LR within a batch size; "
                   "`with_flagged` (He et al.'s p, which counts a column's shock as evidence) is a sensitivity "
                   "row; the seed noise is unmeasured")
            if r["spearman_p_method"].endswith("random") and r["spearman_p"] <= r["spearman_min_p"] * (1 + 1e-9):
                why += ("; no random arrangement was as extreme, so p is the floor of "
                        f"{int(r['n_permutations']):,} draws and the exact p is smaller")
        else:
            why = "one run per cell; the seed noise is unmeasured"
        lines.append(f"- {label}: the verdict is the `{r['subset']}` row, rho = {_num(r['spearman_rho'], 2)}, "
                     f"p = {fmt_p(r['spearman_p'], a.alpha, r['spearman_p_holm'])}, n = {r['n']} ({why}).")
        methods.add(r["subset"])
    table = calibration.load()
    for method in sorted(methods):
        size = calibration.size_summary(table, "table3", method)
        if size:
            lines.append(f"Measured size of the `{method}` primary test under nulls with cell effects unrelated "
                         f"to the ratio, seed and column shocks: {size}.")
    return "\n".join(lines)


def small_n_note(a: Analysis, table: pd.DataFrame, name: str) -> str:
    """Where a table's tests cannot reach significance at their n, a sentence saying so (else '').

    Per multiple-testing family (the `family` column), as the stars are: a family "cannot pass Holm" only when
    Holm's adjustment of its smallest attainable p-values (stats.adjust_pvalues, the function that adjusts the
    p-values the stars read) leaves none below alpha, so no such note can stand beside a starred p."""
    notes = []
    for _, label, g in a.groups(table):
        tested = g[g["reason"] == ""]
        if tested.empty:
            continue
        fams = list(tested.groupby("family", sort=False)) if "family" in tested else [("", tested)]
        for family, members in fams:
            floor = members["spearman_min_p"].to_numpy(float)
            m = len(members)
            ns = sorted({int(n) for n in members["n"]})
            n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
            several = len(fams) > 1
            kind = f" (family `{family.split(' | ')[0]}`)" if several else ""
            if "spearman_p_holm" in members and (members["spearman_p_holm"] < a.alpha).any():
                continue  # a starred row: its family can pass (a p below its attainable floor would say so)
            if (floor >= a.alpha).all():
                notes.append(f"**{label}**{kind}: at {n_text} the smallest attainable Spearman p is "
                             f"{_num(floor.min(), 2)}, not below alpha = {a.alpha:g}: no row of {name}"
                             f"{' in this family' if several else ''} can be significant, so a p-value that is "
                             "not bold here is no evidence against the paper; more batch sizes or learning rates "
                             "are needed.")
            elif m > 1 and (stats.adjust_pvalues(floor, "holm") >= a.alpha).all():
                notes.append(f"**{label}**{kind}: at {n_text} a raw p can pass alpha = {a.alpha:g}, but Holm over "
                             f"the family's {m} tests cannot (smallest attainable p {_num(floor.min(), 2)} x {m} "
                             f">= {a.alpha:g}).")
    return "\n\n".join(notes)


def sections(a: Analysis) -> Sequence[str]:
    """The ratio sections in report order (after Table 3 and its sensitivity rows)."""
    return [ratio_section(a), invariance_section(a)]
