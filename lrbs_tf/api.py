"""The Python API: a study's results as pandas frames, and the entry points bin/train and bin/correlate use.

    import lrbs_tf
    runs = lrbs_tf.load_runs("outputs/quick")          # one row per run folder: config, result, sharpness
    epochs = lrbs_tf.load_metrics("outputs/quick")     # one row per (run, epoch), with the run's config
    lrbs_tf.train(arch="mlp", lr=[0.05, 0.1], epochs=5, workdir="outputs/mine")    # as bin/train
    lrbs_tf.correlate("outputs/quick")                 # as bin/correlate

Everything is read through the run-folder contract: lrbs_tf.runs.table's table (bin/correlate's runs.csv, the
same statuses, premise flag and sharpness columns) beside each run's config.json settings read through the
typed reader (lrbs_tf.runs.folder), and metrics.jsonl. No TensorFlow is imported to read results.
docs/python_api.md documents every column and has the examples.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lrbs_tf.analysis.settings import DEFAULT_MIN_TRAIN_ACCURACY
from lrbs_tf.runs import folder as runfolder, table as runtable
from lrbs_tf.runs.config import DEFAULTS, TrainConfig, UsageError

if TYPE_CHECKING:
    from lrbs_tf.analysis.model import Analysis

# config.json settings added to runtable's table, after its columns; `data_source` is config.json's
# `dataset` (where the examples came from, e.g. npz: runtable's `dataset` is their name).
SETTING_COLUMNS = ("data_source", *[k for k in DEFAULTS if k not in (*runtable.COLUMNS, "dataset", "epochs")])
# What bin/train records beside the settings (the run-folder contract's config.json row).
RECORDED_COLUMNS = ("num_params", "num_classes", "num_train", "num_test", "steps_per_epoch", "replicas",
                    "git_commit", "created")
# load_metrics: each row's run and configuration, then the epoch's metrics line.
RUN_KEY_COLUMNS = ("run_dir", "status", "arch", "dataset", "batch_size", "lr", "ratio", "seed", "momentum",
                   "weight_decay", "epochs_budget")
# load_metrics' last columns: metrics.jsonl's `lr` and `batch_size` (runfolder.SCHEDULE_METRIC_KEYS), the
# epoch's, renamed beside the run's own `lr` and `batch_size`.
EPOCH_COLUMNS = ("epoch_lr", "epoch_batch_size")


def _settings(config: dict | None) -> dict[str, Any]:
    """The extra columns of one run from its config.json (defaults for keys an older lrbs_tf did not write)."""
    if config is None:
        return {k: None for k in (*SETTING_COLUMNS, *RECORDED_COLUMNS)}
    values = {k: config.get(k, DEFAULTS.get(k)) for k in SETTING_COLUMNS[1:]}
    values["data_source"] = config.get("dataset")
    values.update({k: config.get(k) for k in RECORDED_COLUMNS})
    return {k: values[k] for k in (*SETTING_COLUMNS, *RECORDED_COLUMNS)}


def load_runs(root: str | Path, min_train_accuracy: float = DEFAULT_MIN_TRAIN_ACCURACY) -> pd.DataFrame:
    """One row per run folder below `root` (recursively; `root` may be one run folder), sorted by run_dir.

    Columns: lrbs_tf.runs.table's (run_dir relative to `root`, status done / diverged / failed / unfinished /
    running (being written: its lock is held) / skipped or corrupt with the reason in `problem`, arch,
    dataset, batch_size, lr, ratio = BS/LR exactly, seed, momentum, weight_decay, epochs_budget, the
    result.json numbers, generalisation_gap, reached_min_train_accuracy: the premise flag at
    `min_train_accuracy`, and the sharpness.json quantities, NaN where not measured), then SETTING_COLUMNS
    and RECORDED_COLUMNS from config.json, then `finished` (done or diverged), `has_sharpness` (any
    curvature quantity measured) and `path` (the folder).
    A folder that cannot be read is a `skipped` (or `corrupt`) row, never an exception: a damaged run costs
    that run, not the study; no folder at all is a UsageError.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    table, configs = runtable.collect_runs(root, [], min_train_accuracy)
    extra = pd.DataFrame([_settings(configs.get(d)) for d in table["run_dir"]],
                         columns=[*SETTING_COLUMNS, *RECORDED_COLUMNS], index=table.index)
    frame = pd.concat([table, extra], axis=1)
    # Columns for filtering, computed from the ones above.
    frame["finished"] = frame["status"].isin(runfolder.TERMINAL_STATUSES)
    frame["has_sharpness"] = frame[list(runfolder.SHARPNESS_QUANTITIES)].notna().any(axis=1)
    frame["path"] = [str(root if d == "." else root / d) for d in frame["run_dir"]]
    return frame.sort_values("run_dir", kind="stable").reset_index(drop=True)


def load_metrics(root: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per recorded epoch of every run folder below `root` (finished or not), long format.

    Columns: RUN_KEY_COLUMNS, then SETTING_COLUMNS and RECORDED_COLUMNS (as load_runs gives them), then the
    metrics.jsonl keys (epoch 1-based; losses in nats, accuracies fractions, seconds; NaN where the line
    holds null), then EPOCH_COLUMNS: the epoch's learning rate and batch size (a --schedule changes them; the
    `lr` and `batch_size` columns are the run's, its initial ones). Rows are sorted by run_dir, then epoch. `runs`: a load_runs(root) frame already in hand.
    A run whose metrics.jsonl is damaged (load_runs' status `corrupt`) is left out whole, with a warning
    naming the line; its rows are never cut short at the damage.
    """
    runs = load_runs(root) if runs is None else runs
    keys = [*RUN_KEY_COLUMNS, *SETTING_COLUMNS, *RECORDED_COLUMNS]
    pieces = []
    damaged = []
    for run in runs.itertuples(index=False):
        try:  # the same checks as load_runs' `corrupt`: a damaged log is left out whole, never cut short
            rows = runfolder.read_checked_metrics(run.path)
        except runfolder.RunFolderError as e:
            damaged.append(str(e))
            continue
        if rows:
            epochs = pd.DataFrame([{k: r.get(k) for k in runfolder.METRIC_KEYS} for r in rows],
                                  columns=list(runfolder.METRIC_KEYS))
            for key, column in zip(runfolder.SCHEDULE_METRIC_KEYS, EPOCH_COLUMNS):
                # rows written before they held the epoch's lr and batch size: constant runs, the run's own
                epochs[column] = [r.get(key, getattr(run, key)) for r in rows]
            for key in reversed(keys):
                value = getattr(run, key)
                epochs.insert(0, key, [value] * len(epochs) if isinstance(value, (tuple, list)) else value)
            pieces.append(epochs)
    if damaged:
        warnings.warn(f"load_metrics: left out {len(damaged)} run(s) whose metrics.jsonl is damaged (load_runs "
                      f"lists them as corrupt): {'; '.join(damaged)}", stacklevel=2)
    if not pieces:
        return pd.DataFrame(columns=[*keys, *runfolder.METRIC_KEYS, *EPOCH_COLUMNS])
    frame = pd.concat(pieces, ignore_index=True)
    frame["epoch"] = frame["epoch"].astype("int64")
    for key in (*runfolder.METRIC_KEYS[1:], *EPOCH_COLUMNS):
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


def _learning_rates(lr: Any) -> list[float]:
    values = [lr] if isinstance(lr, (int, float)) else list(lr)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UsageError(f"lr={lr!r}: give a number or a list of numbers")
    return [float(v) for v in values]


def train(config: TrainConfig | None = None, /, **settings: Any) -> pd.DataFrame:
    """Trains as bin/train does (lrbs_tf.training.run.run_column) and returns the trained runs' load_runs rows.

    `settings` are bin/train's flags (TrainConfig's fields), over `config` when one is given; `lr` may be a
    list, trained as one column (shared batches, one run folder per rate). Finished runs are left alone,
    interrupted ones resume. Raises UsageError for bad settings (as bin/train's exit 2) and
    lrbs_tf.core.errors.TrainingFailed when training fails (the run is recorded as failed).
    """
    from lrbs_tf.training import run as train_module

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    base = config if config is not None else TrainConfig(progress=False)
    lrs = _learning_rates(settings.pop("lr", base.lr))
    cfg = dataclasses.replace(base, **settings, lr=lrs[0])
    train_module.run_column(cfg, lrs)
    names = {dataclasses.replace(cfg, lr=lr).resolved().run_name for lr in lrs}
    runs = load_runs(cfg.workdir)
    return runs[runs["run_dir"].isin(names)].reset_index(drop=True)


def correlate(results: str | Path, out: str | Path | None = None, **options: Any) -> "Analysis":
    """bin/correlate (lrbs_tf.analysis.correlate.run): the tests, report.md, CSV tables and figures for the runs below
    `results`, written to `out` (default `<results>/correlate/`); returns the Analysis (its `runs` and
    `tables` are pandas frames). `options` are bin/correlate's other flags: min_train_accuracy, alpha,
    group_by, figures."""
    from lrbs_tf.analysis import correlate as correlate_module

    return correlate_module.run(results, out=out, **options)
