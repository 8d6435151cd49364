"""The tidy table of runs: one row per run folder, read through the run-folder contract (lrbs_tf.runs.folder).

A folder is never fatal: an unreadable or mistyped folder becomes a row with status `skipped` and the reason
in `problem`; one whose metrics.jsonl is damaged (a line that does not parse, an epoch repeated or missing,
steps that do not increase) or disagrees with its result.json is `corrupt`, the line named in `problem`; a
folder a process is writing (its lock is held: bin/train, bin/sharpness) is `running`; one without
result.json is `unfinished`. Only rows with status `done` are analysed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lrbs_tf.runs import folder as rf, locking
from lrbs_tf.runs.config import DEFAULTS, EXECUTION_SETTINGS, GRID_SETTINGS, ROUNDING_SETTINGS
from lrbs_tf.runs.folder import (
    ACCURACIES,
    EFFECTIVE_LR,
    EFFECTIVE_RATIO,
    REQUIRED_CONFIG,
    RESULT_NUMBERS,
    SHARPNESS_INFO,
    SHARPNESS_QUANTITIES,
    effective_lr,
    ratio,
)
from lrbs_tf.theory.ou import stability_ratio

if TYPE_CHECKING:  # pandas is imported when the table is built, not with this module
    import pandas as pd

STATUS_UNFINISHED = "unfinished"  # no result.json, and no process writes the folder: never started, or killed
STATUS_SKIPPED = "skipped"        # partial, mistyped or unreadable: see the `problem` column
STATUS_CORRUPT = "corrupt"        # metrics.jsonl damaged (the line in `problem`), or result.json disagrees with it
STATUS_RUNNING = "running"        # a process holds the folder's lock (lrbs_tf.runs.locking): being written now
HYPERPARAMETERS = ("batch_size", "lr")
TARGET = "best_test_accuracy"     # the paper's measure of generalisation: the best test accuracy of 200 epochs
# B_simple early in training: from the run's earliest sharpness-epoch{E}.json with a noise_scale
# (bin/sharpness --epoch=E --quantities=noise_scale), its standard error and E. At the end of training
# G -> 0 and B_simple means nothing, so sharpness.json's own noise_scale is not read here.
EARLY_NOISE = ("noise_scale_epoch", "noise_scale_early", "noise_scale_early_stderr")
CONFIG_COLUMN = {"epochs": "epochs_budget"}  # config key -> runs.csv column, where result.json has the name
# Config keys not reported when they vary inside a group: the varied settings (batch size, learning rate,
# seed), what bin/train records beside them that follows from them or from when and how it ran (the command
# line, the time, steps_per_epoch, the vectorised LR column; dry_run in folders of an older lrbs_tf), and
# the execution settings that change neither the model nor the numbers. The execution settings that can
# change float rounding (config.ROUNDING_SETTINGS, and `replicas`) are reported.
BOOKKEEPING_KEYS = frozenset({"command", "created", "steps_per_epoch", "column_lrs", "dry_run"})
UNREPORTED_KEYS = frozenset(GRID_SETTINGS) | BOOKKEEPING_KEYS | (EXECUTION_SETTINGS - ROUNDING_SETTINGS)
COLUMNS = ["run_dir", "status", "problem", "arch", "dataset", "batch_size", "lr", "ratio", EFFECTIVE_LR,
           EFFECTIVE_RATIO, "seed", "momentum", "weight_decay", "epochs_budget", "epochs", "best_test_accuracy", "best_epoch",
           "final_train_accuracy", "final_train_loss", "final_test_accuracy", "generalisation_gap",
           "reached_min_train_accuracy", "diverged_epoch", "error", "source",
           *SHARPNESS_QUANTITIES, *SHARPNESS_INFO, *EARLY_NOISE]



def _setting(value: Any) -> Any:
    """A config value as a table cell: lists and dicts as sorted JSON so they compare and group."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _from_metrics(run_dir: Path, epochs: Any) -> dict[str, float]:
    """Best and final numbers recomputed from metrics.jsonl, only if it covers exactly `epochs` epochs."""
    records = rf.read_metrics(run_dir)
    if not rf.is_int(epochs):
        raise rf.RunFolderError(f"{run_dir / rf.RESULT} has epochs={epochs!r}, so metrics.jsonl cannot be "
                                "checked against it")
    seen = [r.get("epoch") if isinstance(r, dict) else None for r in records]
    if seen != list(range(1, epochs + 1)):
        raise rf.RunFolderError(f"{run_dir / rf.METRICS} holds {len(records)} epoch records, not epochs "
                                f"1..{epochs} as {rf.RESULT} says")
    test = [r.get("test_accuracy") for r in records]
    finite = [(a, i) for i, a in enumerate(test) if rf.is_number(a)]
    out = {k: math.nan for k in RESULT_NUMBERS}
    if finite:
        best = max(a for a, _ in finite)
        out["best_test_accuracy"] = float(best)
        out["best_epoch"] = float(next(i for a, i in finite if a == best) + 1)
    last = records[-1] if records else {}
    for key, metric in (("final_train_loss", "train_loss"), ("final_train_accuracy", "train_accuracy"),
                        ("final_test_accuracy", "test_accuracy")):
        if rf.is_number(last.get(metric)):
            out[key] = float(last[metric])
    return out


def _outcome(run_dir: Path, result: rf.RunResult) -> dict:
    """The analysed numbers of a finished run; raises RunFolderError when they cannot be trusted."""
    path = run_dir / rf.RESULT
    rec: dict[str, Any] = {"status": result.status, "epochs": result.epochs, "source": rf.RESULT,
                           "diverged_epoch": result.diverged_epoch, "error": result.error}
    values = {k: getattr(result, k) for k in RESULT_NUMBERS}
    problem = ""
    if result.status == rf.STATUS_DONE and any(math.isnan(v) for v in values.values()):
        # result.json is the authority; metrics.jsonl only fills gaps, and only when it is the same run.
        try:
            fallback = _from_metrics(run_dir, result.epochs)
        except rf.RunFolderError as e:
            if math.isnan(values[TARGET]):
                raise rf.RunFolderError(f"{path} has no best_test_accuracy and {e}") from None
            problem = f"result.json lacks {', '.join(k for k, v in values.items() if math.isnan(v))}; {e}"
        else:
            filled = [k for k, v in values.items() if math.isnan(v) and not math.isnan(fallback[k])]
            values.update({k: fallback[k] for k in filled})
            if filled:
                rec["source"] = f"{rf.RESULT}+{rf.METRICS}"
            for k in filled:
                if k in ACCURACIES:
                    rf.check_accuracy(k, values[k], run_dir / rf.METRICS)
        if math.isnan(values[TARGET]):
            raise rf.RunFolderError(f"{path} says done but no finite test accuracy was recorded")
    rec.update(values)
    rec["generalisation_gap"] = values["final_train_accuracy"] - values["final_test_accuracy"]
    rec["problem"] = problem
    return rec


def _sharpness(run_dir: Path) -> tuple[dict[str, float], str]:
    """The sharpness quantities of a run (NaN where absent) and a note when sharpness.json is unusable."""
    values = {k: math.nan for k in (*SHARPNESS_QUANTITIES, *SHARPNESS_INFO)}
    path = run_dir / rf.SHARPNESS
    if not path.exists():
        return values, ""
    try:
        data = rf.read_json(path)
    except rf.RunFolderError as e:
        return values, f"sharpness ignored: {e}"
    if not isinstance(data, dict):
        return values, f"sharpness ignored: {path} is not a JSON object"
    bad = []
    for k in values:
        v = data.get(k)
        if rf.is_number(v):
            values[k] = float(v)
        elif v is not None:
            bad.append(f"{k}={v!r}")
    return values, (f"{path.name} has non-numeric {', '.join(bad)}" if bad else "")


def _early_noise(run_dir: Path) -> tuple[dict[str, float], str]:
    """EARLY_NOISE of a run (NaN when no sharpness-epoch file has a noise_scale), and a note naming any
    such file that cannot be read."""
    values = {k: math.nan for k in EARLY_NOISE}
    notes = []
    for epoch, path in rf.sharpness_epoch_files(run_dir).items():
        try:
            data = rf.read_json(path)
        except rf.RunFolderError as e:
            notes.append(f"ignored: {e}")
            continue
        b = data.get("noise_scale") if isinstance(data, dict) else None
        if rf.is_number(b):
            se = data.get("noise_scale_stderr")
            values.update(noise_scale_epoch=float(epoch), noise_scale_early=float(b),
                          noise_scale_early_stderr=float(se) if rf.is_number(se) else math.nan)
            break
    return values, "; ".join(notes)


def read_run(run_dir: Path, root: Path, group_by: Sequence[str], min_train_accuracy: float) -> tuple[dict, Any]:
    """One runs.csv row for `run_dir`, and its config (None when unreadable). Never raises for bad data."""
    rec: dict[str, Any] = {"run_dir": str(run_dir.relative_to(root)) if run_dir != root else ".",
                           "status": "", "problem": ""}
    config = None
    try:
        config = rf.read_json(run_dir / rf.CONFIG)
        typed = rf.parse_config(config, run_dir / rf.CONFIG)
        rec.update({k: _setting(getattr(typed, k)) for k in REQUIRED_CONFIG if k != "epochs"})
        rec["epochs_budget"] = typed.epochs
        # A key an older lrbs_tf did not record reads as its default: the run was made with it.
        rec.update({CONFIG_COLUMN.get(k, k): _setting(config.get(k, DEFAULTS.get(k))) for k in group_by})
        rec["ratio"] = ratio(typed.batch_size, typed.lr)
        if 0 <= typed.momentum < 1:  # bin/train refuses others; a hand-edited config.json reads as NaN here
            rec[EFFECTIVE_LR] = effective_lr(typed.lr, typed.momentum)
            rec[EFFECTIVE_RATIO] = ratio(typed.batch_size, typed.lr, typed.momentum)
        writer = locking.holder(run_dir)
        if writer is not None:  # its files are changing: read it once it is written
            rec.update(status=STATUS_RUNNING, problem=f"being written by {writer}")
            return rec, config
        result = rf.read_result(run_dir)
        try:
            rows = rf.read_checked_metrics(run_dir)
            if result is not None and result.finished:
                rf.check_result_against_metrics(result, rows, run_dir / rf.RESULT)
        except rf.RunFolderError as e:
            rec.update(status=STATUS_CORRUPT, problem=str(e))
            return rec, config
        if result is None:
            rec["status"] = STATUS_UNFINISHED
            return rec, config
        rec.update(_outcome(run_dir, result))
    except rf.RunFolderError as e:
        rec.update(status=STATUS_SKIPPED, problem=str(e))
        return rec, config if isinstance(config, dict) else None
    sharp, note = _sharpness(run_dir)
    if math.isnan(sharp["stability_ratio"]) and not math.isnan(sharp["lambda_max"]):
        sharp["stability_ratio"] = stability_ratio(sharp["lambda_max"], typed.lr)  # a file from before it
    early, early_note = _early_noise(run_dir)
    rec.update(sharp, **early)
    rec["problem"] = "; ".join(p for p in (rec["problem"], note, early_note) if p)
    acc = rec.get("final_train_accuracy", math.nan)
    # An unknown final training accuracy cannot show the premise holds, so it counts as not reached.
    rec["reached_min_train_accuracy"] = bool(rec["status"] == rf.STATUS_DONE and not math.isnan(acc)
                                             and acc >= min_train_accuracy)
    return rec, config


def collect_runs(results: Path, group_by: Sequence[str],
                 min_train_accuracy: float) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The tidy table of every run folder below `results` (recursively), and each readable config by run_dir."""
    import pandas as pd

    rows, configs = [], {}
    for run_dir in rf.iter_run_dirs(results):
        rec, config = read_run(run_dir, results, group_by, min_train_accuracy)
        rows.append(rec)
        if config is not None:
            configs[rec["run_dir"]] = config
    extra = [CONFIG_COLUMN.get(k, k) for k in group_by if CONFIG_COLUMN.get(k, k) not in COLUMNS]
    cut = COLUMNS.index("epochs_budget") + 1  # the group_by settings after the settings
    frame = pd.DataFrame(rows, columns=COLUMNS[:cut] + extra + COLUMNS[cut:])
    frame["reached_min_train_accuracy"] = frame["reached_min_train_accuracy"].map(lambda v: v is True)
    for col in ("batch_size", "seed", "epochs_budget", "epochs", "best_epoch", "diverged_epoch"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("lr", "ratio", EFFECTIVE_LR, EFFECTIVE_RATIO, "momentum", "weight_decay", *RESULT_NUMBERS[:1], *RESULT_NUMBERS[2:],
                "generalisation_gap", *SHARPNESS_QUANTITIES, *SHARPNESS_INFO, *EARLY_NOISE):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame, configs


def uncontrolled_settings(group: pd.DataFrame, configs: dict[str, dict],
                          group_keys: Sequence[str]) -> dict[str, list[str]]:
    """The config keys of one group's runs (other than BS, LR, seed, names) that take more than one value.

    A group pools runs that should differ only in batch size, learning rate and seed; anything else that
    varies (augmentation, width, code version...) is reported so a reader can judge the comparison.
    group_keys: the config keys that define the group (constant inside it by construction).
    Returns {key: sorted JSON texts of its values}, '"<absent>"' standing for a key a config lacks.
    """
    cfgs = [configs[d] for d in group["run_dir"] if d in configs]
    if not cfgs:
        return {}
    varying = {}
    for k in sorted(set().union(*cfgs) - UNREPORTED_KEYS - set(group_keys)):
        values = sorted({json.dumps(c.get(k, "<absent>"), sort_keys=True) for c in cfgs})
        if len(values) > 1:
            varying[k] = values
    return varying
