"""The data model bin/correlate's tables, report and figures share: groups of runs, their labels, the claims.

A leaf module (pandas, numpy, the run-folder and run-table constants; nothing that draws or writes) so that
`correlate` (which computes), `report` (which formats) and `correlate_plots` (which draws) all import it at
the top and none of them has to import another for a helper.

A group is the runs that share arch, dataset and the `--group_by` settings; its key is the tuple of those
values in `group_cols` order, with NaN, None and pd.NA all turned into None so a missing value forms one
group instead of one group per row (NaN != NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from lrbs_tf.analysis.settings import DEFAULT_ALPHA, DEFAULT_GROUP_BY, DEFAULT_MIN_TRAIN_ACCURACY  # noqa: F401 (re-exported)
from lrbs_tf.core.figures import DEFAULT_FORMATS as FIGURE_FORMATS  # noqa: F401 (re-exported)
from lrbs_tf.runs import folder as rf
from lrbs_tf.runs.table import CONFIG_COLUMN

PRIMARY_SUBSET = "with_flagged"  # every done run: the paper's analysis
SUBSETS = (PRIMARY_SUBSET, "without_flagged")  # sharpness / Psi: all done runs, or premise met
# Human names of the measures, for titles and axis labels (the CSV files keep the runs.csv keys).
MEASURE_NAMES = {"best_test_accuracy": "best test accuracy", "ratio": "batch size / learning rate",
                 "lambda_max": "largest Hessian eigenvalue", "trace": "Hessian trace",
                 "frobenius_norm": "Hessian Frobenius norm", "grad_cov_trace": "gradient covariance trace",
                 "eps_sharpness": "epsilon-sharpness (Keskar)", "avg_sharpness": "average sharpness"}
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
FIGURE_NAMES = (FIG_RATIO, FIG_CURVES, FIG_HEATMAP, FIG_SHARPNESS, FIG_EQUAL_RATIO, FIG_STEPS, FIG_STABILITY, FIG_SDE)


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

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == rf.STATUS_DONE]

    def label(self, row: pd.Series | dict) -> str:
        """The label of the group a run or a test row (anything holding the group columns) belongs to."""
        return self.labels[tuple(key_value(row[c]) for c in self.group_cols)]

    def groups(self, frame: pd.DataFrame | None = None) -> Iterator[tuple[dict, str, pd.DataFrame]]:
        """iter_groups over `frame` (default: the done runs) with this analysis's columns and labels."""
        return iter_groups(self.done if frame is None else frame, self.group_cols, self.labels)


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


def group_columns(group_by: Sequence[str]) -> list[str]:
    """The runs.csv columns that define a group: arch, dataset and the `group_by` config keys."""
    cols = ["arch", "dataset"]
    for key in group_by:
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
