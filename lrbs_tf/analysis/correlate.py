"""`bin/correlate`: He et al.'s Tables 1-3 and Figures 1-2, with Pearson, Kendall, Psi and corrections.

Reads every run folder below `--results` (the run-folder contract of `lrbs_tf.runs.folder`), builds one tidy
table of runs, and tests, per group of runs (arch, dataset and the `group_by` settings), the correlation
of the best test accuracy with batch size at each learning rate (Table 1), with the learning rate at each
batch size (Table 2), and with BS/LR over the whole group (Table 3); and of each sharpness quantity with
BS/LR and with test accuracy. See docs/correlate.md for every column and the premise checks.

No TensorFlow here: 1,600 runs are analysed in seconds because only config.json, result.json and
sharpness.json are read (metrics.jsonl only when result.json lacks a number it should hold).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis import (
    cell_tests,
    families,
    intrinsic as intrinsic_report,
    momentum,
    ratio,
    scaling,
    schedules,
    sde,
    stability,
    stats,
)
from lrbs_tf.analysis.model import (
    DEFAULT_ALPHA,
    DEFAULT_GROUP_BY,
    DEFAULT_MIN_TRAIN_ACCURACY,
    EXPECTED_SIGN,
    FIGURE_FORMATS,
    FIGURE_NAMES,
    SUBSETS,
    VARYING,
    Analysis,
    at_effective_lr,
    group_columns,
    group_keys,
    group_labels,
    iter_groups,
    resolve_group_by,
)
from lrbs_tf.analysis.report import document as report
from lrbs_tf.core.durable import fsync_dir
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.config import DEFAULTS
from lrbs_tf.runs.folder import SHARPNESS_QUANTITIES
from lrbs_tf.runs.table import (
    HYPERPARAMETERS,
    STATUS_SKIPPED,
    STATUS_UNFINISHED,
    TARGET,
    collect_runs,
    uncontrolled_settings,
)

TABLE_FILES = {"table1": "table1.csv", "table2": "table2.csv", "table3": "table3.csv",
               "sharpness": "sharpness.csv"}
RUNS_FILE, PSI_FILE, REPORT_FILE = "runs.csv", "psi.csv", "report.md"
CELLS_FILE, RATIO_TEST_FILE, INVARIANCE_FILE, FAMILIES_FILE = ("cells.csv", "ratio_test.csv",
                                                               "ratio_invariance.csv", "families.csv")
# Steps to result (with a target) and the critical batch size (lrbs_tf.analysis.scaling); names are a contract.
STEPS_FILE, STEPS_RUNS_FILE, FIT_FILE, CRITICAL_FILE = ("steps_to_result.csv", "steps_to_result_runs.csv",
                                                        "scaling_fit.csv", "critical_batch.csv")


def _test(keys: dict, sub: pd.DataFrame, x: str, y: str, rank_only: bool = False, **extra: Any) -> dict:
    c = stats.correlate(sub[x].to_numpy(float), sub[y].to_numpy(float), x, y, rank_only=rank_only)
    return {**keys, **extra, **c.as_dict()}


def _untested(keys: dict, n: int, reason: str, **extra: Any) -> dict:
    """A test row that is not computed because another row already holds the same test (reason says which)."""
    nan = math.nan
    return {**keys, **extra, **stats.Correlation(n, nan, nan, nan, nan, nan, nan, reason=reason).as_dict()}


def _seeded(g: pd.DataFrame) -> bool:
    """Whether some (BS, LR) cell of these runs holds more than one run (seeds)."""
    return bool(g.duplicated(ratio.CELL).any())


def _cell_frame(g: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per (BS, LR) cell of `g`: the mean over its runs of each of `columns` (NaN skipped)."""
    other = [c for c in columns if c not in ratio.CELL]
    return g.groupby(ratio.CELL, sort=True)[other].mean().reset_index()


def _unit_test(keys: dict, sub: pd.DataFrame, x: str, y: str, seeded: bool, permute_columns: bool = False,
               **extra: Any) -> dict:
    """A correlation test whose unit is the cell: on the cell means when seeds repeat cells (the run-level
    numbers kept as spearman_rho_runs / spearman_p_runs, a sensitivity check), on the runs otherwise.
    permute_columns (the sharpness tests, whose points span batch sizes): with one seed, the p-values come
    from permuting `y` within each batch-size column, as Table 3's primary (a column's runs share one shock
    that a run-level p would count as evidence; benchmarks/calibration.md)."""
    runs = stats.correlate(sub[x].to_numpy(float), sub[y].to_numpy(float), x, y)
    level = {"unit": "runs", "n_runs": len(sub), "spearman_rho_runs": runs.spearman_rho,
             "spearman_p_runs": runs.spearman_p}
    if not seeded and permute_columns:
        cp = cell_tests.column_permutation(sub[x].to_numpy(float), sub[y].to_numpy(float),
                                           sub["batch_size"].to_numpy(float), x, y)
        return {**keys, **extra, **cp.correlation.as_dict(), **level, "unit": "column_permutation",
                "n_permutations": cp.n_permutations}
    if not seeded:
        return {**keys, **extra, **runs.as_dict(), **level}
    means = _cell_frame(sub, [x, y])
    return {**_test(keys, means, x, y, **extra), **level, "unit": "cell_means"}


def _column_permutation_row(keys: dict, points: pd.DataFrame, **extra: Any) -> dict:
    """Table 3's column-permutation row: Spearman over `points` (runs, or cell means), p from permuting the
    accuracy within each batch-size column (lrbs_tf.analysis.cell_tests.column_permutation)."""
    cp = cell_tests.column_permutation(points["ratio"].to_numpy(float), points[TARGET].to_numpy(float),
                                       points["batch_size"].to_numpy(float), "ratio", TARGET)
    return {**keys, **extra, **cp.correlation.as_dict(), "n_permutations": cp.n_permutations}


def _table3_rows(keys: dict, g: pd.DataFrame, diverged: pd.DataFrame, flagged: pd.Series) -> list[dict]:
    """Table 3 of one group: all done runs, without the flagged ones, on cell means, permuted within columns,
    diverged ranked worst. `primary`: the row the report's verdict states. With seeds, the cell means (the cell
    is the unit of replication: seeds of one cell share its configuration, so runs are not independent
    points). With one seed, `column_permutation`: the Spearman of all done runs (He et al.'s statistic) with its
    p-value from permuting accuracy within each batch-size column, since a column's runs share one shock that
    the run-level p counts as evidence (benchmarks/calibration.md); He et al.'s own test stays as
    `with_flagged`, a sensitivity row. With seeds `column_permutation` permutes the cell means (sensitivity)."""
    seeded = _seeded(g)
    rows = [_test(keys, sub, "ratio", TARGET, subset=subset, n_flagged=int(flagged[sub.index].sum()),
                  n_diverged=0, primary=False)
            for subset, sub in zip(SUBSETS, (g, g[~flagged]))]
    means = ratio.cell_means(g)
    extra = dict(subset="cell_means", n_flagged=int(flagged.sum()), n_diverged=0, primary=seeded)
    rows.append(_test(keys, means, "ratio", TARGET, **extra) if seeded
                else _untested(keys, len(means), "one run per (BS, LR) cell: the same test as with_flagged", **extra))
    rows.append(_column_permutation_row(keys, means if seeded else g, subset="column_permutation",
                                        n_flagged=int(flagged.sum()), n_diverged=0, primary=not seeded))
    extra = dict(subset="diverged_worst", n_flagged=int(flagged.sum()), n_diverged=len(diverged), primary=False)
    if diverged.empty:
        rows.append(_untested(keys, len(g), "no diverged run: the same test as with_flagged", **extra))
    else:
        # Any value below every done run's accuracy gives the same ranks; rank statistics only (no Pearson).
        worst = diverged.assign(**{TARGET: float(g[TARGET].min()) - 1.0})
        rows.append(_test(keys, pd.concat([g, worst]), "ratio", TARGET, rank_only=True, **extra))
    return rows


def correlation_tables(runs: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
                       sharpness_quantities: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Tables 1-3 and the sharpness tests, unadjusted, over the done runs of `runs` (and, for Table 3's
    diverged_worst row, its diverged runs). With seeds, Tables 1-2 and the sharpness tests are on cell
    means (column `unit`), the run-level Spearman kept beside them."""
    done = runs[runs["status"] == rf.STATUS_DONE]
    diverged = runs[(runs["status"] == rf.STATUS_DIVERGED) & runs["arch"].notna() & runs["dataset"].notna()]
    diverged_keys = group_keys(diverged, group_cols)
    rows: dict[str, list[dict]] = {"table1": [], "table2": [], "table3": [], "sharpness": []}
    for keys, _, g in iter_groups(done, group_cols, labels):
        flagged = ~g["reached_min_train_accuracy"].astype(bool)
        seeded = _seeded(g)
        for fixed, varying, table in (("lr", "batch_size", "table1"), ("batch_size", "lr", "table2")):
            for value, sub in g.groupby(fixed, sort=True):
                rows[table].append(_unit_test(keys, sub, varying, TARGET, seeded, **{fixed: value},
                                              n_flagged=int(flagged[sub.index].sum())))
        rows["table3"] += _table3_rows(keys, g, diverged[diverged_keys == tuple(keys.values())], flagged)
        for subset, sub in zip(SUBSETS, (g, g[~flagged])):
            for q in sharpness_quantities:
                for versus in ("ratio", TARGET):
                    rows["sharpness"].append(_unit_test(keys, sub, versus, q, seeded, permute_columns=True,
                                                        quantity=q, versus=versus, subset=subset))
    tables = {name: pd.DataFrame(r) for name, r in rows.items() if r or name != "sharpness"}
    if not sharpness_quantities:
        tables.pop("sharpness", None)
    return tables


def quantities_of(measures: Sequence[str]) -> list[str]:
    return [m for m in measures if m not in ("ratio", TARGET)]


def psi_table(done: pd.DataFrame, group_cols: list[str], labels: dict[tuple, str],
              measures: Sequence[str]) -> pd.DataFrame:
    """Jiang et al.'s granulated Kendall Psi of each measure against test accuracy, per group and subset."""
    rows = []
    for keys, _, g in iter_groups(done, group_cols, labels):
        flagged = ~g["reached_min_train_accuracy"].astype(bool)
        seeded = _seeded(g)
        for subset, sub in zip(SUBSETS, (g, g[~flagged])):
            # With seeds, one point per cell (the mean over its seeds): Psi's subgroups then compare cells.
            records = (_cell_frame(sub, ["ratio", TARGET, *quantities_of(measures)]) if seeded else sub
                       ).to_dict("records")
            for measure in measures:
                r = stats.granulated_kendall(records, measure, TARGET, HYPERPARAMETERS)
                rows.append({**keys, "subset": subset, "measure": measure, "target": TARGET,
                             "unit": "cell_means" if seeded else "runs",
                             "n": int(pd.DataFrame(records, columns=[measure])[measure].notna().sum()),
                             "psi": r.psi,
                             **{f"psi_{hp}": r.per_hyperparameter.get(hp, math.nan) for hp in HYPERPARAMETERS},
                             **{f"subgroups_{hp}": r.subgroups_used.get(hp, 0) for hp in HYPERPARAMETERS},
                             "subgroups_skipped": sum(r.subgroups_skipped.values()), "reason": r.reason})
    return pd.DataFrame(rows)


def sign_summary(analysis: Analysis) -> pd.DataFrame:
    """Per table and group: how many Spearman coefficients are positive/negative, significant or not.

    The paper's own Table 2 changes sign (VGG-19 on CIFAR-100 at small batch sizes); this is where a change
    of sign, or a sign against the paper's claim, becomes visible instead of being averaged away.
    """
    rows = []
    for name in ("table1", "table2", "table3"):
        t = analysis.tables.get(name)
        if t is None or t.empty:
            continue
        for _, label, g in analysis.groups(t):
            rho, sig = g["spearman_rho"].to_numpy(float), g["spearman_significant"].to_numpy(bool)
            tested = np.isfinite(rho)
            expected = EXPECTED_SIGN[name]
            rows.append({"table": name, "group": label,
                         "tests": int(tested.sum()), "untestable": int((~tested).sum()),
                         "positive": int((rho > 0).sum()), "negative": int((rho < 0).sum()),
                         "significant_positive": int(((rho > 0) & sig).sum()),
                         "significant_negative": int(((rho < 0) & sig).sum()),
                         "against_paper": int((np.sign(rho) == -expected).sum()),
                         "significant_against_paper": int(((np.sign(rho) == -expected) & sig).sum())})
    return pd.DataFrame(rows)


def _check_arguments(results: Path, min_train_accuracy: float, alpha: float, group_by: Sequence[str]) -> None:
    if not results.exists():
        raise UsageError(f"--results={results} does not exist")
    if not results.is_dir():
        raise UsageError(f"--results={results} is not a folder")
    if not 0.0 <= min_train_accuracy <= 1.0:
        raise UsageError(f"--min_train_accuracy={min_train_accuracy} is not a fraction in [0, 1]")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"--alpha={alpha} is not in (0, 1)")
    bad = [k for k in group_by if k in ("arch", "dataset") + HYPERPARAMETERS]
    if bad:
        raise UsageError(f"--group_by={','.join(group_by)}: {', '.join(bad)} cannot be a group key "
                         "(arch and dataset always are; batch size and learning rate vary inside a group)")


def _read(results: Path, min_train_accuracy: float, group_by: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    runs, configs = collect_runs(results, group_by, min_train_accuracy)
    if runs.empty:
        raise UsageError(f"no run folders (folders holding {rf.CONFIG}) under --results={results}")
    unknown = [k for k in group_by if k not in DEFAULTS and not any(k in c for c in configs.values())]
    if unknown:
        raise UsageError(f"--group_by={','.join(group_by)}: no run's {rf.CONFIG} has the key(s) "
                         f"{', '.join(unknown)}")
    counts = runs["status"].value_counts()
    if counts.get(rf.STATUS_DONE, 0) == 0:
        summary = ", ".join(f"{counts[s]} {s}" for s in counts.index)
        raise UsageError(f"no finished run with status done under --results={results} ({summary})")
    return runs, configs


def analyse(results: str | Path, min_train_accuracy: float = DEFAULT_MIN_TRAIN_ACCURACY,
            alpha: float = DEFAULT_ALPHA, group_by: Sequence[str] = DEFAULT_GROUP_BY,
            target_train_loss: float | None = None, target_test_accuracy: float | None = None) -> Analysis:
    """Reads the runs below `results` and computes every test; writes nothing.

    min_train_accuracy: fraction in [0, 1]; done runs whose final training accuracy is below it (or unknown)
    are flagged as not meeting the paper's premise of ~zero training error.
    alpha: significance threshold for the raw p-values (the paper's 0.005).
    target_train_loss (nats) / target_test_accuracy (fraction): at most one; each run's steps to reach it,
    the fewest per batch size and McCandlish's fit (lrbs_tf.analysis.scaling).
    Raises UsageError on bad arguments or when there is no run with status done to analyse.
    """
    results = Path(results)
    _check_arguments(results, min_train_accuracy, alpha, group_by)
    target = scaling.target_from(target_train_loss, target_test_accuracy)
    runs, configs = _read(results, min_train_accuracy, [k for k in group_by if k != VARYING])
    group_by, grouped_varying = resolve_group_by(group_by, configs)
    if grouped_varying:  # their columns, read like any --group_by key's
        runs, configs = _read(results, min_train_accuracy, group_by)
    group_cols = group_columns(group_by)
    read = runs  # as read: the SDE comparison pools runs over svag (analysis/sde.py)
    raw_runs, duplicates = merge_duplicates(runs, group_cols)
    runs = at_effective_lr(raw_runs)  # every ratio analysis: a run with momentum at lr / (1 - momentum)
    done = runs[runs["status"] == rf.STATUS_DONE]
    quantities = [q for q in SHARPNESS_QUANTITIES if done[q].notna().any()]
    labels = group_labels(runs, group_cols)
    a = Analysis(results=results, runs=runs, tables=correlation_tables(runs, group_cols, labels, quantities),
                 psi=psi_table(done, group_cols, labels, ["ratio", *quantities]), group_cols=group_cols,
                 labels=labels, uncontrolled={}, duplicates=duplicates, min_train_accuracy=min_train_accuracy,
                 alpha=alpha, sharpness_quantities=quantities,
                 cells=ratio.cell_table(runs, group_cols, labels, quantities),
                 noise=ratio.noise_table(done, group_cols, labels, quantities),
                 ratio_test=ratio.ratio_test_table(done, group_cols, labels, quantities),
                 invariance=ratio.invariance_table(done, group_cols, labels, quantities),
                 equal_ratios=ratio.equal_ratio_table(done, group_cols, labels), grouped_varying=grouped_varying,
                 raw_runs=raw_runs)
    a.families = families.adjust({**a.tables, "ratio_test": a.ratio_test, "ratio_invariance": a.invariance},
                                 a.label, group_cols, alpha)
    for _, label, g in iter_groups(done, group_cols, labels):
        varying = uncontrolled_settings(g, configs, ["arch", "dataset", *group_by])
        if varying:
            a.uncontrolled[label] = varying
    if target is not None:
        a.steps_to_result = scaling.steps_to_result(raw_runs, configs, results, group_cols, labels, target)
    a.critical_batch = scaling.critical_batch_table(done, group_cols, labels,
                                                    a.steps_to_result.fit if a.steps_to_result else None)
    a.intrinsic = intrinsic_report.compute(raw_runs, results, group_cols)  # the raw lr: lr * wd, 2 / lr
    a.stability = stability.compute(raw_runs, results, group_cols, labels)
    a.momentum = momentum.interchange(raw_runs[raw_runs["status"] == rf.STATUS_DONE], group_cols)
    a.schedules = schedules.compute(raw_runs, configs, results, group_cols)  # the initial lr and batch size
    a.sde = sde.compute(read, configs, group_cols, labels)  # pools over svag, so from the runs before merging
    return a


STATUS_DUPLICATE = "duplicate"  # runs.csv status of a done run that repeats another's configuration and seed
DUPLICATE_COLUMNS = ["run_dir", "kept_run_dir", "identical", "differs_in", "batch_size", "lr", "seed", TARGET]


def merge_duplicates(runs: pd.DataFrame, group_cols: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Done runs of one group, batch size, learning rate and seed enter every test once.

    Of each such set (a copied folder, a rerun in another folder) the first by run_dir is kept; the others
    get status `duplicate` (runs.csv `problem` names the kept run) and are analysed nowhere. Returns the
    runs and one row per set member left out: `identical` when every reported number equals the kept run's
    (a copy), else `differs_in` lists the columns that differ: the same configuration and seed gave another
    result, a reproducibility problem the report lists."""
    # Momentum too: pooled over momentum (--group_by without it), runs of one (BS, lr, seed) at two momenta
    # are two configurations, not copies.
    keys = [*group_cols, "batch_size", "lr", *(["momentum"] if "momentum" not in group_cols else []), "seed"]
    done = runs[runs["status"] == rf.STATUS_DONE]
    dup = done[done.duplicated(keys, keep=False)]
    if dup.empty:
        return runs, pd.DataFrame(columns=DUPLICATE_COLUMNS)
    compare = [c for c in (TARGET, "final_train_accuracy", "final_train_loss", "best_epoch", *SHARPNESS_QUANTITIES)
               if c in runs.columns]
    runs = runs.copy()
    rows = []
    for _, members in dup.sort_values("run_dir").groupby(keys, dropna=False, sort=False):
        kept = members.iloc[0]
        for index, other in members.iloc[1:].iterrows():
            differs = [c for c in compare if not _same(kept[c], other[c])]
            runs.loc[index, "status"] = STATUS_DUPLICATE
            runs.loc[index, "problem"] = (f"copy of {kept['run_dir']} (same configuration, seed and results)"
                                          if not differs else f"rerun of {kept['run_dir']} (same configuration "
                                          f"and seed) with other results ({', '.join(differs)}); not analysed")
            rows.append({"run_dir": other["run_dir"], "kept_run_dir": kept["run_dir"], "identical": not differs,
                         "differs_in": ", ".join(differs), "batch_size": other["batch_size"], "lr": other["lr"],
                         "seed": other["seed"], TARGET: other[TARGET]})
    return runs, pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def _same(a: Any, b: Any) -> bool:
    missing = [v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    return all(missing) or (not any(missing) and a == b)


def _figure_files(names: Sequence[str]) -> set[str]:
    return {f"{f}.{ext}" for f in names for ext in FIGURE_FORMATS}


def _output_names() -> set[str]:
    return {RUNS_FILE, PSI_FILE, REPORT_FILE, CELLS_FILE, RATIO_TEST_FILE, INVARIANCE_FILE, FAMILIES_FILE,
            STEPS_FILE, STEPS_RUNS_FILE, FIT_FILE, CRITICAL_FILE, *TABLE_FILES.values(), *_figure_files(FIGURE_NAMES),
            *intrinsic_report.FILES, *stability.FILES, *schedules.FILES, *momentum.FILES, *sde.FILES}


def _texts(analysis: Analysis) -> dict[str, str]:
    """Every text output (CSV files and report.md) by file name."""
    raw = analysis.raw_runs if analysis.raw_runs is not None else analysis.runs
    texts = {RUNS_FILE: raw.to_csv(index=False), PSI_FILE: analysis.psi.to_csv(index=False),
             CELLS_FILE: analysis.cells.to_csv(index=False), RATIO_TEST_FILE: analysis.ratio_test.to_csv(index=False),
             INVARIANCE_FILE: analysis.invariance.to_csv(index=False),
             FAMILIES_FILE: analysis.families.to_csv(index=False)}
    for name, table in analysis.tables.items():
        texts[TABLE_FILES[name]] = table.to_csv(index=False)
    s = analysis.steps_to_result
    if s is not None:
        texts.update({STEPS_FILE: s.steps.to_csv(index=False), STEPS_RUNS_FILE: s.runs.to_csv(index=False),
                      FIT_FILE: s.fit.to_csv(index=False)})
    if len(analysis.critical_batch):
        texts[CRITICAL_FILE] = analysis.critical_batch.to_csv(index=False)
    texts.update(analysis.intrinsic.texts() if analysis.intrinsic is not None else {})
    texts.update(analysis.stability.texts() if analysis.stability is not None else {})
    texts.update(analysis.schedules.texts() if analysis.schedules is not None else {})
    texts.update(analysis.momentum.texts() if analysis.momentum is not None else {})
    texts.update(analysis.sde.texts() if analysis.sde is not None else {})
    texts[REPORT_FILE] = report.render(analysis, sign_summary(analysis))
    return texts


def run(results: str | Path, out: str | Path | None = None, min_train_accuracy: float = DEFAULT_MIN_TRAIN_ACCURACY,
        alpha: float = DEFAULT_ALPHA, group_by: Sequence[str] = DEFAULT_GROUP_BY, figures: bool = True,
        target_train_loss: float | None = None, target_test_accuracy: float | None = None) -> Analysis:
    """Analyses the runs below `results` and writes the CSV files, figures and report.md to `out`.

    out: default `<results>/correlate/`. Nothing in `out` changes unless the whole analysis (figures
    included) succeeded: figures are rendered into a staging folder inside `out`, text is kept in memory,
    then each file is moved into place with os.replace. Outputs of an earlier analysis that this one does
    not produce (sharpness.csv when no run has sharpness any more, say) are removed, so the folder never
    mixes two analyses. Skipped run folders are also listed on stderr.
    """
    analysis = analyse(results, min_train_accuracy, alpha, group_by, target_train_loss, target_test_accuracy)
    out = Path(out) if out else analysis.results / "correlate"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out={out} exists and is not a folder")
    for r in analysis.runs[analysis.runs["status"].isin((STATUS_SKIPPED, "corrupt"))].itertuples():
        print(f"correlate: skipped {r.run_dir}: {r.problem}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        if figures:
            from lrbs_tf.analysis.plots import paper as correlate_plots  # matplotlib: imported only when drawing

            analysis.figures = correlate_plots.write_figures(analysis, staging)
        texts = _texts(analysis)
        for name, text in texts.items():  # staged like the figures: a full disk then changes nothing in out
            rf.atomic_write_text(staging / name, text)
        for name in [*texts, *_figure_files(analysis.figures)]:
            (staging / name).replace(out / name)
        fsync_dir(out)
        produced = set(texts) | _figure_files(analysis.figures)
        for name in _output_names() - produced:
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return analysis


__all__ = ["Analysis", "analyse", "run", "STATUS_UNFINISHED", "STATUS_SKIPPED"]

