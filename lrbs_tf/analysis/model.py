"""The data model bin/correlate's tables, report and figures share: groups of runs, their labels, the claims.

A leaf module (pandas, numpy, the run-folder and run-table constants; nothing that draws or writes) so that
`correlate` (which computes), `report` (which formats) and `correlate_plots` (which draws) all import it at
the top and none of them has to import another for a helper.

A group is the runs that share arch, dataset and the `--group_by` settings (by default the budget, momentum,
weight decay and every other identity setting that varies: `resolve_group_by`); its key is the tuple of those
values in `group_cols` order, with NaN, None and pd.NA all turned into None so a missing value forms one
group instead of one group per row (NaN != NaN).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis.settings import (  # noqa: F401 (re-exported)
    DEFAULT_ALPHA,
    DEFAULT_GROUP_BY,
    DEFAULT_MIN_TRAIN_ACCURACY,
    NOT_GROUPED,
    VARYING,
)
from lrbs_tf.core.figures import DEFAULT_FORMATS as FIGURE_FORMATS  # noqa: F401 (re-exported)
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.config import DEFAULTS, GRID_SETTINGS, IDENTITY_SETTINGS
from lrbs_tf.runs.table import CONFIG_COLUMN

PRIMARY_SUBSET = "with_flagged"  # every done run: the paper's analysis
SUBSETS = (PRIMARY_SUBSET, "without_flagged")  # sharpness / Psi: all done runs, or premise met
# Human names of the measures, for titles and axis labels (the CSV files keep the runs.csv keys).
MEASURE_NAMES = {"best_test_accuracy": "best test accuracy", "ratio": "batch size / learning rate",
                 "lambda_max": "largest Hessian eigenvalue", "trace": "Hessian trace",
                 "frobenius_norm": "Hessian Frobenius norm", "grad_cov_trace": "gradient covariance trace",
                 "eps_sharpness": "epsilon-sharpness (Keskar)", "avg_sharpness": "average sharpness",
                 "adaptive_sharpness": "adaptive sharpness (l2, worst case)",
                 "adaptive_sharpness_linf": "adaptive sharpness (l-inf, worst case)",
                 "adaptive_sharpness_avg": "adaptive sharpness (average case)"}
# The paper's claims: accuracy falls with batch size, rises with the learning rate, falls with BS/LR.
EXPECTED_SIGN = {"table1": -1, "table2": +1, "table3": -1}

# Figure names (file stems): the report links them and correlate cleans up stale ones even under
# --nofigures, so they live here rather than in correlate_plots, which imports matplotlib.
FIG_RATIO = "fig1_accuracy_vs_ratio"
FIG_CURVES = "fig2_accuracy_vs_batch_size_and_lr"
FIG_HEATMAP = "fig3_accuracy_heatmap"
FIG_SHARPNESS = "fig4_sharpness_vs_ratio"
FIG_EQUAL_RATIO = "fig5_equal_ratio_curves"
FIG_STEPS = "fig6_steps_to_result"  # with --target_train_loss / --target_test_accuracy (lrbs_tf.analysis.scaling)
FIG_STABILITY = "fig7_curvature_over_training"  # runs with a curvature.csv (lrbs_tf.analysis.stability)
FIG_SDE = "fig8_sde"  # runs at several values of SVAG's l (lrbs_tf.analysis.sde)
FIG_SCHEDULES = "fig9_schedules"  # runs with a --schedule (lrbs_tf.analysis.schedules)
FIGURE_NAMES = (FIG_RATIO, FIG_CURVES, FIG_HEATMAP, FIG_SHARPNESS, FIG_EQUAL_RATIO, FIG_STEPS, FIG_STABILITY, FIG_SDE,
                FIG_SCHEDULES)


@dataclass
class Analysis:
    """Everything the report, the CSV files and the figures are made from.

    runs: the tidy table, one row per run folder found (runs.csv). tables: 'table1', 'table2', 'table3'
    and (when any run has sharpness) 'sharpness', each one row per test with adjusted p-values.
    psi: Jiang et al.'s Psi per group, subset and measure. group_cols: the columns that define a group.
    labels: a readable name per group key. uncontrolled: per group label, config keys that vary inside it.
    cells: one row per (group, BS, LR) cell (cells.csv); noise: the pooled within-cell s.d. per group and
    measure; ratio_test, invariance: ratio_test.csv and ratio_invariance.csv; equal_ratios: per group and
    shared BS/LR value, its cells and how alike their runs are; families: every multiple-testing family.
    steps_to_result: the steps to --target_train_loss / --target_test_accuracy and McCandlish's fit (None
    without a target); critical_batch: early B_simple beside the fitted B_crit per group;
    intrinsic: the intrinsic-LR tables (intrinsic_lr.csv, intrinsic_lr_equal.csv).
    """

    results: Path
    runs: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    psi: pd.DataFrame
    group_cols: list[str]
    labels: dict[tuple, str]
    uncontrolled: dict[str, dict[str, list[str]]]
    duplicates: pd.DataFrame
    min_train_accuracy: float
    alpha: float
    sharpness_quantities: list[str] = field(default_factory=list)
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    noise: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratio_test: pd.DataFrame = field(default_factory=pd.DataFrame)
    invariance: pd.DataFrame = field(default_factory=pd.DataFrame)
    equal_ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    families: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: list[str] = field(default_factory=list)
    steps_to_result: Any = None  # scaling.StepsToResult when a target was given (scaling imports this module)
    critical_batch: pd.DataFrame = field(default_factory=pd.DataFrame)  # scaling.critical_batch_table
    intrinsic: Any = None  # intrinsic_report.IntrinsicLR (that module imports this one)
    stability: Any = None  # stability.Stability: stability.csv and Figure 7 (that module imports this one)
    sde: Any = None  # sde.SDE: sde.csv, Figure 8 and the SDE section (that module imports this one)
    grouped_varying: list[str] = field(default_factory=list)  # settings --group_by's VARYING added (they vary)
    schedules: Any = None  # schedules.Schedules: schedules.csv and Figure 9 (that module imports this one)
    raw_runs: pd.DataFrame | None = None  # runs.csv: the runs table as read, raw lr and ratio (at_effective_lr)
    momentum: Any = None  # momentum.Interchange: momentum.csv and its report section (that module imports this one)

    @property
    def momentum_placed(self) -> bool:
        """Whether some done run has momentum, so the ratio analyses placed it at its effective LR."""
        return bool((self.done["momentum"].fillna(0.0) != 0).any()) if "momentum" in self.runs else False

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == rf.STATUS_DONE]

    def label(self, row: pd.Series | dict) -> str:
        """The label of the group a run or a test row (anything holding the group columns) belongs to."""
        return self.labels[tuple(key_value(row[c]) for c in self.group_cols)]

    def groups(self, frame: pd.DataFrame | None = None) -> Iterator[tuple[dict, str, pd.DataFrame]]:
        """iter_groups over `frame` (default: the done runs) with this analysis's columns and labels."""
        return iter_groups(self.done if frame is None else frame, self.group_cols, self.labels)


def at_effective_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as every ratio analysis places them: `lr` and `ratio` replaced by momentum's effective
    learning rate lr / (1 - mu) and BS over it (runs.csv's `effective_lr`, `effective_lr_ratio`), so a run
    with momentum mu sits where plain SGD at lr / (1 - mu) would (docs/theory.md) in Tables 1-3, the
    sharpness tests, Psi, the cells, the ratio test, the invariance test and Figures 1-5. At mu = 0 the
    values are the raw ones bit for bit; runs.csv keeps the raw `lr` and `ratio` beside the effective ones.
    Pooled across momenta (--group_by without momentum), runs of equal BS and effective LR share a cell."""
    placed = runs.copy()
    known = placed[rf.EFFECTIVE_LR].notna()
    placed.loc[known, "lr"] = placed.loc[known, rf.EFFECTIVE_LR]
    placed.loc[known, "ratio"] = placed.loc[known, rf.EFFECTIVE_RATIO]
    return placed


def measure_name(measure: str) -> str:
    """'largest Hessian eigenvalue' for 'lambda_max'; an unknown key is returned as it is."""
    return MEASURE_NAMES.get(measure, measure)


def key_value(value: Any) -> Any:
    """A hashable, NaN-safe, plain-Python group-key component: NaN, None and pd.NA all become None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def group_keys(frame: pd.DataFrame, group_cols: Sequence[str]) -> pd.Series:
    """Each row's group key: a tuple over `group_cols`, the same tuple that keys Analysis.labels."""
    return pd.Series([tuple(key_value(v) for v in row)
                      for row in frame[list(group_cols)].itertuples(index=False)],
                     index=frame.index, dtype=object)


def varying_settings(configs: dict[str, dict]) -> list[str]:
    """The identity settings (runs/config.IDENTITY_SETTINGS, a key a config.json lacks read as its default)
    that take more than one value among the runs of one arch and dataset, other than batch size, learning rate,
    seed, and the data's source and file (NOT_GROUPED: the dataset's name stands for them)."""
    skip = {*GRID_SETTINGS, "arch", "dataset", *NOT_GROUPED}
    seen: dict[tuple, dict[str, set]] = {}
    for cfg in configs.values():
        where = seen.setdefault((str(cfg.get("arch")), str(cfg.get("dataset_name") or cfg.get("dataset"))), {})
        for key in IDENTITY_SETTINGS:
            if key not in skip:
                where.setdefault(key, set()).add(json.dumps(cfg.get(key, DEFAULTS[key]), sort_keys=True))
    return [k for k in IDENTITY_SETTINGS if any(len(values.get(k, ())) > 1 for values in seen.values())]


def resolve_group_by(group_by: Sequence[str], configs: dict[str, dict]) -> tuple[list[str], list[str]]:
    """`group_by` with its VARYING token replaced by the varying settings it does not list already; and
    those added (the settings that define groups only because they vary here)."""
    listed = [k for k in group_by if k != VARYING]
    added = [k for k in varying_settings(configs) if k not in listed] if VARYING in group_by else []
    return listed + added, added


def group_columns(group_by: Sequence[str]) -> list[str]:
    """The runs.csv columns that define a group: arch, dataset and the `group_by` config keys (VARYING, which
    stands for settings known only from the runs, left out: resolve_group_by replaces it)."""
    cols = ["arch", "dataset"]
    for key in group_by:
        if key == VARYING:
            continue
        col = CONFIG_COLUMN.get(key, key)
        if col not in cols:
            cols.append(col)
    return cols


def _order(key: tuple) -> tuple[str, ...]:
    # Keys mix None with numbers and strings, which do not compare; their text always does.
    return tuple(str(v) for v in key)


def group_labels(runs: pd.DataFrame, group_cols: list[str]) -> dict[tuple, str]:
    """'vgg19 on cifar10', plus the group_by settings that differ between groups (e.g. 'momentum=0.9').

    One entry per group of the runs whose arch and dataset are known, in iter_groups' order.
    """
    known = runs[runs["arch"].notna() & runs["dataset"].notna()]
    keys = sorted(set(group_keys(known, group_cols)), key=_order)
    varying = [i for i in range(2, len(group_cols)) if len({k[i] for k in keys}) > 1]
    return {k: f"{k[0]} on {k[1]}" + "".join(f", {group_cols[i]}={k[i]}" for i in varying) for k in keys}


def iter_groups(frame: pd.DataFrame, group_cols: list[str],
                labels: dict[tuple, str]) -> Iterator[tuple[dict, str, pd.DataFrame]]:
    """Yields (key dict, label, rows) per group present in `frame`, in a stable sorted order.

    Raises KeyError when a group of `frame` has no label (its arch or dataset is unknown, or `labels`
    was built from other runs).
    """
    if frame.empty:
        return
    keys = group_keys(frame, group_cols)
    for key in sorted(set(keys), key=_order):
        if key not in labels:
            raise KeyError(f"group {dict(zip(group_cols, key))} has no label; labelled groups: "
                           f"{', '.join(labels.values()) or 'none'}")
        yield dict(zip(group_cols, key)), labels[key], frame[keys == key]
