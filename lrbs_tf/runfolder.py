"""The run folder: the contract between `bin/train` and every binary that reads its results.

A run folder `<workdir>/<run_name>/` holds (see README, "The run folder"):

- `config.json`   every resolved setting, keyed by flag name, plus `num_params`, `versions`, `git_commit`.
                  Written once, atomically, before the first step.
- `metrics.jsonl` one JSON object per finished epoch: `epoch` (1-based), `train_loss`, `train_accuracy`,
                  `test_loss`, `test_accuracy`, `weight_norm_sq`, `effective_lr`, `seconds` (the whole
                  epoch), `train_seconds` (its training steps alone). Appended and
                  flushed; a line is only trusted once its epoch's checkpoint exists (see `trim_metrics`).
- `result.json`   written atomically when the run ends: `status` in {done, diverged, failed}, `epochs`,
                  `best_test_accuracy`, `best_epoch`, `final_train_loss`, `final_train_accuracy`,
                  `final_test_accuracy` (+ `diverged_epoch` or `error` where they apply).
                  No `result.json` means the run is unfinished (never started, running, or killed).
- `ckpt/`         tf.train.CheckpointManager checkpoints, one per epoch.
- `model.keras`   the final model (`keras.models.load_model`).
- `sharpness.json` optional, written by `bin/sharpness` (its own writer).

This module has no TensorFlow dependency so that analysis tools stay fast to import.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
SHARPNESS = "sharpness.json"
MODEL = "model.keras"
CKPT_DIR = "ckpt"
TENSORBOARD_DIR = "tb"

STATUS_DONE = "done"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
TERMINAL_STATUSES = (STATUS_DONE, STATUS_DIVERGED)  # a failed run is retried when started again

METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
               "weight_norm_sq", "effective_lr", "seconds", "train_seconds")
RESULT_KEYS = ("status", "epochs", "best_test_accuracy", "best_epoch", "final_train_loss",
               "final_train_accuracy", "final_test_accuracy")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (missing, unfinished, corrupt, or another configuration)."""


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder and os.replace.

    Readers see either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_figure(fig: Any, stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf"),
                        dpi: int = 150) -> list[Path]:
    """Saves a matplotlib figure as stem.png and stem.pdf, each through a temporary file and os.replace."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = stem.with_suffix(f".{ext}")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp.{ext}", dir=path.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths.append(path)
    return paths


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


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Appends one JSON line and flushes it to disk."""
    with open(path, "a") as f:
        f.write(dumps(obj, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Returns the complete epoch records of `metrics.jsonl` (a partial trailing line is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a write cut off by a kill: not a record
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def trim_metrics(run_dir: str | os.PathLike, num_epochs: int) -> list[dict]:
    """Keeps the first `num_epochs` records of metrics.jsonl (those covered by a checkpoint).

    Epoch records are appended before the epoch's checkpoint is saved, so a kill in between leaves a line
    whose epoch will be trained again; dropping it keeps the log equal to an uninterrupted run's.
    The file is replaced atomically, and only when something must go.
    """
    path = Path(run_dir) / METRICS
    rows = read_metrics(run_dir)
    kept = [r for r in rows if r.get("epoch", 0) <= num_epochs]
    raw = path.read_text() if path.exists() else ""
    expected = "".join(dumps(r, indent=None) + "\n" for r in kept)
    if raw != expected and (kept or path.exists()):
        atomic_write_text(path, expected)
    return kept


def read_config(run_dir: str | os.PathLike) -> dict:
    return read_json(Path(run_dir) / CONFIG)


def read_result(run_dir: str | os.PathLike) -> dict | None:
    """The run's result.json, or None when the run is unfinished."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    return read_json(path)


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


def format_lr(lr: float) -> str:
    """A short, exact-enough text for a learning rate in run names: 0.05 -> '0.05', 1e-4 -> '0.0001'."""
    return f"{lr:.10g}"


def run_name(arch: str, dataset: str, batch_size: int, lr: float, seed: int,
             momentum: float = 0.0, weight_decay: float = 0.0) -> str:
    """The default run name, e.g. 'vgg19-cifar10-bs64-lr0.05-s0' (+ '-m0.9', '-wd0.0005' when non-zero)."""
    name = f"{arch}-{dataset}-bs{batch_size}-lr{format_lr(lr)}-s{seed}"
    if momentum:
        name += f"-m{format_lr(momentum)}"
    if weight_decay:
        name += f"-wd{format_lr(weight_decay)}"
    return name
