"""The run folder: the contract between `bin/train` and every binary that reads its results.

A run folder `<workdir>/<run_name>/` holds what this table says (the README's table "The run folder",
verbatim; a test checks that the two agree):

| file | written | content |
|---|---|---|
| `config.json` | once, atomically, before the first step | every resolved setting keyed by its flag name (`arch`, `dataset`, `batch_size`, `lr`, `seed`, `epochs`, `max_steps`, `momentum`, `weight_decay`, `augment`, ...), plus `num_params`, `num_classes`, `input_shape`, `num_train`, `num_test`, `steps_per_epoch`, `replicas`, `column_lrs` (the learning rates trained in the same process), `normalization`, `versions`, `git_commit`, `created`, `command` |
| `metrics.jsonl` | one line appended and flushed per finished epoch | `epoch` (1-based), `step` (optimizer steps from the run's start to the epoch's end), `examples_seen` (= step x batch_size; SVAG steps read two batches, a schedule's batch size changes), `lr` and `batch_size` (the epoch's: a `--schedule` changes them), `train_loss`, `train_accuracy` (over the epoch's training steps), `test_loss`, `test_accuracy` (whole test set), `weight_norm_sq` (squared L2 norm of all trainable weights), `effective_lr` (= lr / weight_norm_sq, the intrinsic-LR view of BN nets), `grad_norm_sq` (the mean over the epoch's steps of the squared L2 norm of the minibatch loss gradient over all trainable weights, weight decay left out: E‖g‖² of theory/intrinsic_lr.py), `seconds` (the whole epoch, evaluation and checkpoint included; in a column, the column's epoch), `train_seconds` (its training steps alone) |
| `result.json` | atomically, when the run ends | `status` (`done`, `diverged` or `failed`), `epochs`, `steps` (optimizer steps trained), `best_test_accuracy`, `best_epoch`, `final_train_loss`, `final_train_accuracy`, `final_test_accuracy`; `stop_reason` (why a done or diverged run ended: `epochs`, `max_steps`, `stop_at_train_loss` or `diverged`); `diverged_epoch`, `stopped_early`, or `error` and `traceback` where they apply |
| `ckpt/` | at an epoch's end once `--checkpoint_seconds` (10) have passed since the last, at the last epoch, and at each epoch kept for good (`--checkpoint_epochs`, `--checkpoint_every`, `--checkpoint_geometric`); atomically | `ckpt-<epoch>` checkpoints (model, optimizer state, epochs done): the `--checkpoints_to_keep` newest and those kept for good |
| `model.keras` | atomically, at the end | the final model: `keras.models.load_model(path)` |
| `tb/` | every epoch, flushed | TensorBoard: the run's HParams (`arch`, `dataset`, `batch_size`, `lr`, `bs_over_lr`, `momentum`, `weight_decay`, `seed`, `epochs`, `max_steps` (0: none), `stop_at_train_loss`), the metrics on the step axis (`step`), and result.json's numbers so far under `result/`; `tb/sharpness/` is bin/sharpness's (its own writer): the curvature quantities |
| `sharpness.json` | by `bin/sharpness` (its own writer), atomically | the curvature quantities and how they were measured (docs/curvature.md) |
| `sharpness-epoch<E>.json`, `eigenvectors-epoch<E>.npy`, `curvature.csv` | by `bin/sharpness --epoch` (its own writer), atomically | at kept epoch E: the quantities and the (d, top_k) top Hessian eigenvectors; the trajectory, one row per measured epoch (docs/curvature.md) |

`read_config` and `read_result` are the one typed reader of config.json and result.json: every binary that
reads a run folder goes through them, so the contract's keys and their types are checked in one place.
Every file is written through lrbs_tf.core.durable (atomic and synced, lines appended whole or not at all), and
`read_metrics` never takes a torn last line for a record (docs/reliability.md lists the faults covered).
This module has no TensorFlow dependency so that analysis tools stay fast to import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from lrbs_tf.core.durable import append_line, atomic_write_text  # atomic_write_text: every writer reaches it here
from lrbs_tf.core.errors import RunFolderError
from lrbs_tf.runs.config import DEFAULTS

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
SHARPNESS = "sharpness.json"
SHARPNESS_AT_EPOCH = "sharpness-epoch{epoch}.json"  # bin/sharpness --epoch=E: at epoch E's checkpoint
EIGENVECTORS_AT_EPOCH = "eigenvectors-epoch{epoch}.npy"  # (d, k) float32, beside sharpness-epoch<E>.json
CURVATURE_CSV = "curvature.csv"  # a run's curvature trajectory, one row per measured epoch
MODEL = "model.keras"
CKPT_DIR = "ckpt"
TENSORBOARD_DIR = "tb"
SWEEP_RECORD = "sweep.json"  # in a bin/sweep workdir: its grid (lrbs_tf.sweep.record)

STATUS_DONE = "done"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
TERMINAL_STATUSES = (STATUS_DONE, STATUS_DIVERGED)  # a failed run is retried when started again

METRIC_KEYS = ("epoch", "step", "examples_seen", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
               "weight_norm_sq", "effective_lr", "grad_norm_sq", "seconds", "train_seconds")
# Recorded in every metrics.jsonl row (since issue 26): the epoch's learning rate and batch size (under a
# --schedule they change; a constant run's equal config.json's).
SCHEDULE_METRIC_KEYS = ("lr", "batch_size")
RESULT_NUMBERS = ("best_test_accuracy", "best_epoch", "final_train_loss", "final_train_accuracy",
                  "final_test_accuracy")
RESULT_KEYS = ("status", "epochs", "steps", *RESULT_NUMBERS)  # in every result.json (steps since issue 13)
# result.json's stop_reason: why a finished run ended.
STOP_EPOCHS, STOP_STEPS, STOP_LOSS, STOP_DIVERGED = "epochs", "max_steps", "stop_at_train_loss", "diverged"
STOP_REASONS = (STOP_EPOCHS, STOP_STEPS, STOP_LOSS, STOP_DIVERGED)
# sharpness.json: the curvature quantities bin/correlate tests (runs.csv's columns, its sharpness tests, the
# run's TensorBoard metrics), in that order; the numbers recorded beside them; the gradient noise scale's keys
# (curvature.noise_scale.NoiseScale.fields, null unless measured). Any may be absent: NaN in runs.csv.
SHARPNESS_QUANTITIES = ("lambda_max", "trace", "frobenius_norm", "grad_cov_trace", "eps_sharpness",
                        "avg_sharpness", "adaptive_sharpness", "adaptive_sharpness_linf", "adaptive_sharpness_avg")
SHARPNESS_INFO = ("trace_stderr", "num_examples", "stability_ratio", "adaptive_sharpness_avg_stderr")
NOISE_SCALE_KEYS = ("noise_scale", "noise_scale_stderr", "noise_scale_grad_sq", "noise_scale_grad_sq_stderr",
                    "noise_scale_cov_trace", "noise_scale_groups", "noise_scale_resolved", "noise_scale_note")
# ... and of the curvature-over-training quantities (bin/sharpness --quantities=batch_sharpness,ggn_*), null
# unless measured.
BATCH_SHARPNESS_KEYS = ("batch_sharpness", "batch_sharpness_stderr", "batch_sharpness_batches",
                        "batch_sharpness_batch_size")
# Adaptive sharpness (bin/sharpness --quantities=adaptive_sharpness,...; curvature.adaptive), null unless
# measured: the worst cases for p = 2 and inf, the average case and its standard error (nats); the radii,
# steps, restarts and draws are in sharpness.json's settings.
ADAPTIVE_KEYS = ("adaptive_sharpness", "adaptive_sharpness_linf", "adaptive_sharpness_avg",
                 "adaptive_sharpness_avg_stderr")
GGN_KEYS = ("ggn_lambda_max", "ggn_top_eigenvalues", "ggn_eigen_converged", "ggn_trace", "ggn_trace_stderr",
            "ggn_trace_num_probes", "ggn_trace_converged")


def ratio(batch_size: int, lr: float, momentum: float = 0.0) -> float:
    """BS/LR, the ratio He et al. vary, computed on the decimal the learning rate was written as, so equal
    ratios are equal floats (runs.csv, the analyses, TensorBoard's HParams). With `momentum` mu, BS over the
    effective learning rate, BS (1 - mu) / LR (`effective_lr`); mu = 0 is the raw ratio, bit for bit.

    Plain float division breaks ties: 48 / 0.03 = 1599.9999999999998 but 16 / 0.01 = 1600.0. On the
    paper's 20 x 20 grid float division yields 258 distinct values; the exact ratios are 255. So with
    momentum: 32 / 0.1 and 32 (1 - 0.9) / 0.01 are both exactly 320.0.
    """
    return float(Fraction(batch_size) * (1 - _decimal(momentum)) / _decimal(lr))


def effective_lr(lr: float, momentum: float) -> float:
    """lr / (1 - mu): heavy-ball momentum's effective learning rate (the step a constant gradient settles to,
    and the SDE's; docs/theory.md), on the decimals the two were written as, so equal values are equal floats
    (0.1 at mu 0 and 0.01 at mu 0.9 are both 0.1). Raises ValueError unless 0 <= mu < 1."""
    mu = _decimal(momentum)
    if not 0 <= mu < 1:
        raise ValueError(f"momentum={momentum} has no effective learning rate (needs 0 <= momentum < 1)")
    return float(_decimal(lr) / (1 - mu))


def _decimal(value: float) -> Fraction:
    return Fraction(repr(float(value)))


# runs.csv's columns of momentum's effective learning rate and the ratio every ratio analysis places a run at
# (ratio(batch_size, lr, momentum)); the raw `lr` and `ratio` stay beside them. Not metrics.jsonl's
# `effective_lr`, lr / ||w||^2, the intrinsic-LR view of BN nets, a per-epoch metric of another meaning.
EFFECTIVE_LR, EFFECTIVE_RATIO = "effective_lr", "effective_lr_ratio"


def _jsonable(value: Any) -> Any:
    """Makes floats JSON-safe: NaN and +-Inf become None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file, raising RunFolderError with the path on any problem."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} is unreadable: {e}") from None


def append_jsonl(path: str | os.PathLike, obj: dict, sync: bool = True) -> None:
    """Appends `obj` as one JSON line, whole or not at all (durable.append_line); synced to disk unless
    `sync` is False (the writer then syncs the file when it must be durable)."""
    append_line(path, dumps(obj, indent=None), sync=sync)


def _records(data: bytes) -> list[dict]:
    """The JSON objects of `data`'s whole lines, up to the first line that is not one."""
    rows = []
    for line in data.split(b"\n")[:-1]:  # the last piece is a torn tail (or empty): never data
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def sharpness_epoch_files(run_dir: str | os.PathLike) -> dict[int, Path]:
    """The sharpness-epoch{E}.json files of a run folder (bin/sharpness --epoch), by epoch E, ascending."""
    pattern = re.compile("^" + re.escape(SHARPNESS_AT_EPOCH).replace(r"\{epoch\}", r"(\d+)") + "$")
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {int(m.group(1)): Path(run_dir) / name for name in names if (m := pattern.match(name))}
    return dict(sorted(found.items()))


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Returns the complete epoch records of `metrics.jsonl`.

    A last line without its newline (a write cut short by a kill, a crash or a full disk) is not a record,
    even when it happens to parse; nor is anything from the first line that is not a JSON object on.
    """
    path = Path(run_dir) / METRICS
    try:
        return _records(path.read_bytes())
    except FileNotFoundError:
        return []


def read_checked_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """metrics.jsonl's records for a reader that must trust all of them: every whole line a JSON object with
    an integer `epoch`, the epochs 1, 2, 3... each once and in order, and `step` (where recorded) increasing.
    Raises RunFolderError naming the first line that breaks this (1-based), instead of read_metrics' silent
    stop at it: a line damaged in the middle of a finished run, or the lines of two writers interleaved,
    must cost the run, not quietly drop its later epochs. A torn last line (no newline: a kill or a full
    disk while appending) is not a record and not damage; a missing file is no records."""
    path = Path(run_dir) / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunFolderError(f"{path} is unreadable: {e.strerror or e}") from None
    rows: list[dict] = []
    last_step, last_step_line = None, 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunFolderError(f"{where} is not JSON ({line[:40]!r}{'...' if len(line) > 40 else ''})") from None
        if not isinstance(row, dict):
            raise RunFolderError(f"{where} is not a JSON object")
        epoch = row.get("epoch")
        if not is_int(epoch):
            raise RunFolderError(f"{where} has epoch={epoch!r}, not an epoch number" if "epoch" in row
                                 else f"{where} has no epoch")
        expected = len(rows) + 1
        if epoch != expected:
            what = "repeats" if epoch < expected else "skips to"
            raise RunFolderError(f"{where} {what} epoch {epoch} where epoch {expected} belongs (the epochs must run "
                                 "1, 2, 3... once each: a second writer, or lost lines)")
        step = row.get("step")
        if step is not None:
            if not is_number(step):
                raise RunFolderError(f"{where} has step={step!r}, not a number")
            if last_step is not None and not step > last_step:
                raise RunFolderError(f"{where} has step {step}, not more than {last_step} at line {last_step_line}")
            last_step, last_step_line = step, number
        rows.append(row)
    return rows


def check_result_against_metrics(result: "RunResult", rows: list[dict], path: Path) -> None:
    """Raises RunFolderError when result.json's best test accuracy or best epoch disagree with the epoch
    records (bin/train writes them from the same rows, so a disagreement means one file was changed or
    comes from another run). Only a result.json that holds a best test accuracy is checked (one without
    is completed from the rows by its reader, which checks them then); ties in test accuracy let best_epoch
    name any of the tied epochs."""
    accuracy = {r["epoch"]: r.get("test_accuracy") for r in rows}
    scored = {e: float(a) for e, a in accuracy.items() if is_number(a)}
    if not scored or math.isnan(result.best_test_accuracy):
        return
    best = max(scored.values())
    claimed = result.best_test_accuracy
    if not math.isclose(claimed, best, rel_tol=1e-9, abs_tol=1e-12):
        at = min(e for e, a in scored.items() if a == best)
        raise RunFolderError(f"{path} has best_test_accuracy={claimed!r} but {METRICS} records {best!r} (epoch "
                             f"{at}) as the best")
    epoch = result.best_epoch
    if not math.isnan(epoch):
        value = scored.get(int(epoch))
        if value is None or not math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12):
            raise RunFolderError(f"{path} has best_epoch={int(epoch)} but {METRICS} records test accuracy "
                                 f"{accuracy.get(int(epoch), 'nothing')!r} there, and {best!r} as the best")


def recorded_epochs(rows: list[dict]) -> int:
    """How many epochs `rows` records without a gap from epoch 1: a checkpoint past that cannot be resumed
    from, since the epochs it covers would be missing from metrics.jsonl."""
    count = 0
    for row in rows:
        if row.get("epoch") != count + 1:
            break
        count += 1
    return count


def trim_metrics(run_dir: str | os.PathLike, num_epochs: int) -> list[dict]:
    """Keeps the first `num_epochs` records of metrics.jsonl (those covered by a checkpoint).

    Epoch records are appended before the epoch's checkpoint is saved, so a kill in between leaves a line
    whose epoch will be trained again; dropping it (and any torn tail) keeps the log equal to an
    uninterrupted run's. The file is replaced atomically, and only when something must go.
    """
    path = Path(run_dir) / METRICS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    rows = _records(raw or b"")
    kept = rows[:min(num_epochs, recorded_epochs(rows))]
    expected = "".join(dumps(r, indent=None) + "\n" for r in kept)
    if raw is not None and raw != expected.encode():
        atomic_write_text(path, expected)
    return kept


# config.json's contract keys, with the type each must have (the rest is read as written).
REQUIRED_CONFIG = {"arch": str, "dataset": str, "batch_size": int, "lr": float, "seed": int, "epochs": int,
                   "momentum": float, "weight_decay": float}
RESULT_STATUSES = (STATUS_DONE, STATUS_DIVERGED, STATUS_FAILED)
ACCURACIES = ("best_test_accuracy", "final_train_accuracy", "final_test_accuracy")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's config.json, checked: the contract's keys typed, and every key as written in `raw`."""
    arch: str
    dataset: str
    batch_size: int
    lr: float
    seed: int
    epochs: int
    momentum: float
    weight_decay: float
    raw: dict
    # The loader the examples came from (config.json's `dataset`, e.g. npz); `dataset` above is their name:
    # config.json's `dataset_name` when bin/train was given one (an npz of CIFAR-10 named cifar10), so
    # readers that group runs pool it with the runs of that dataset, and readers that load data use this.
    data_source: str = ""

    def setting(self, key: str) -> Any:
        """A setting as recorded, or its default when an older lrbs_tf did not record it."""
        return self.raw.get(key, DEFAULTS.get(key))

    @property
    def data_dir(self) -> str | None:
        return self.raw.get("data_dir")

    @property
    def data_path(self) -> str | None:
        return self.raw.get("data_path")

    @property
    def num_params(self) -> int | None:
        return self.raw.get("num_params")

    @property
    def num_classes(self) -> int | None:
        return self.raw.get("num_classes")

    @property
    def input_shape(self) -> list | None:
        return self.raw.get("input_shape")

    @property
    def num_train(self) -> int | None:
        return self.raw.get("num_train")


def parse_config(raw: Any, path: Path) -> RunConfig:
    """Checks a config.json's content; raises RunFolderError naming every missing or mistyped contract key."""
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path} is not a JSON object")
    missing = [k for k in REQUIRED_CONFIG if k not in raw]
    if missing:
        raise RunFolderError(f"{path} lacks {', '.join(missing)}")
    check = {str: lambda v: isinstance(v, str) and bool(v), int: is_int, float: is_number}
    wrong = [f"{k}={raw[k]!r}" for k, kind in REQUIRED_CONFIG.items() if not check[kind](raw[k])]
    if not wrong:
        wrong = [f"{k}={raw[k]!r} (must be > 0)" for k in ("batch_size", "lr") if raw[k] <= 0]
    name = raw.get("dataset_name")
    if name is not None and not (isinstance(name, str) and name):
        wrong.append(f"dataset_name={name!r}")
    if wrong:
        raise RunFolderError(f"{path} has invalid {', '.join(wrong)}")
    typed = {k: (float(raw[k]) if kind is float else raw[k]) for k, kind in REQUIRED_CONFIG.items()}
    typed["dataset"] = name or raw["dataset"]
    return RunConfig(**typed, raw=raw, data_source=raw["dataset"])


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """The run's config.json, checked (RunFolderError when it is missing, unreadable or breaks the contract)."""
    path = Path(run_dir) / CONFIG
    return parse_config(read_json(path), path)


def sweep_argv(workdir: str | os.PathLike) -> list[str] | None:
    """The command line of the bin/sweep that last set `workdir`'s grid (its last growth, else its creation),
    from its sweep.json; None when there is none or it records no argv (lrbs_tf.sweep.record writes it)."""
    try:
        raw = read_json(Path(workdir) / SWEEP_RECORD)
    except RunFolderError:
        return None
    if not isinstance(raw, dict):
        return None
    for entry in reversed([raw, *(raw.get("grown") or [])]):
        if isinstance(entry, dict) and isinstance(entry.get("argv"), list):
            return [str(a) for a in entry["argv"]]
    return None


def read_recorded_settings(run_dir: str | os.PathLike) -> dict:
    """config.json as written, only checked to be a JSON object: what bin/train compares a configuration
    against before it writes into a folder, so a foreign folder is named as "another configuration" with
    the settings that differ, whatever keys it lacks."""
    path = Path(run_dir) / CONFIG
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path} is not a JSON object")
    return raw


@dataclasses.dataclass(frozen=True)
class RunResult:
    """A run's result.json, checked: numbers are floats (NaN where the contract's null or absent), accuracies
    fractions; every key as written in `raw`."""
    status: str
    epochs: int | None
    best_test_accuracy: float
    best_epoch: float
    final_train_loss: float
    final_train_accuracy: float
    final_test_accuracy: float
    diverged_epoch: int | None
    stopped_early: bool
    error: str | None
    raw: dict
    steps: int | None = None           # optimizer steps trained; None in a result.json of an older lrbs_tf
    stop_reason: str | None = None     # epochs, max_steps, stop_at_train_loss or diverged (done / diverged runs)

    @property
    def finished(self) -> bool:
        """done or diverged: a rerun leaves the run alone (a failed run is retried)."""
        return self.status in TERMINAL_STATUSES


def check_accuracy(key: str, value: float, path: Path) -> None:
    """Accuracies are fractions in [0, 1] (NaN stands for unknown)."""
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise RunFolderError(f"{path} has {key}={value} outside [0, 1] (accuracies are fractions)")


def parse_result(raw: Any, path: Path) -> RunResult:
    """Checks a result.json's content; raises RunFolderError naming what breaks the contract."""
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path} is not a JSON object")
    status = raw.get("status")
    if status not in RESULT_STATUSES:
        raise RunFolderError(f"{path} has status={status!r}; expected done, diverged or failed")
    numbers = {}
    for key in RESULT_NUMBERS:
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RunFolderError(f"{path} has {key}={v!r}, not a number")
        numbers[key] = math.nan if v is None else float(v)
    for key in ACCURACIES:
        check_accuracy(key, numbers[key], path)
    # Counts and epoch numbers are integers (a reader's table holds them as such): one such field mistyped
    # costs its run (RunFolderError), never the study.
    for key, least in (("steps", 0), ("epochs", 0), ("diverged_epoch", 1)):
        v = raw.get(key)
        if v is not None and not (is_int(v) and v >= least):
            raise RunFolderError(f"{path} has {key}={v!r}, not " + ("a count" if least == 0 else "an epoch number"))
    if not math.isnan(numbers["best_epoch"]) and not (numbers["best_epoch"].is_integer()
                                                      and numbers["best_epoch"] >= 1):
        raise RunFolderError(f"{path} has best_epoch={raw['best_epoch']!r}, not an epoch number")
    for key, kind in (("stopped_early", bool), ("error", str), ("stop_reason", str)):
        v = raw.get(key)
        if v is not None and not isinstance(v, kind):
            raise RunFolderError(f"{path} has {key}={v!r}, not a {kind.__name__}")
    steps = raw.get("steps")
    return RunResult(status=status, epochs=raw.get("epochs"), **numbers, diverged_epoch=raw.get("diverged_epoch"),
                     stopped_early=bool(raw.get("stopped_early", False)), error=raw.get("error"), raw=raw,
                     steps=steps, stop_reason=raw.get("stop_reason"))


def read_result(run_dir: str | os.PathLike) -> RunResult | None:
    """The run's result.json, checked, or None when the run is unfinished (no result.json)."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    return parse_result(read_json(path), path)


def run_status(run_dir: str | os.PathLike) -> str | None:
    """result.json's status, "unreadable" for one that breaks the contract, None when the run is unfinished."""
    try:
        result = read_result(run_dir)
    except RunFolderError:
        return "unreadable"
    return None if result is None else result.status


def iter_run_dirs(root: str | os.PathLike, unreadable: list[str] | None = None) -> Iterator[Path]:
    """Yields every folder below `root` (recursively, sorted) that holds a config.json.

    Folders that cannot be listed are appended to `unreadable` (when given) as "path: reason", so a reader
    can report them instead of silently missing the runs inside.
    """
    root = Path(root)
    if (root / CONFIG).is_file():
        yield root
        return

    def onerror(error: OSError) -> None:
        if unreadable is not None:
            unreadable.append(f"{error.filename}: {error.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        if CONFIG in filenames:
            dirnames[:] = []  # a run folder's subfolders (ckpt/, tb/) hold no runs
            yield Path(dirpath)
