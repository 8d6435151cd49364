"""Which saved state can be trusted: epoch checkpoints that restore cleanly, and model files that load.

A run folder's `ckpt/` holds checkpoints `ckpt-<epoch>` (an `.index` file and its `.data-*` shards; written
by `write`, or by tf.train.CheckpointManager in folders of an older lrbs_tf). A copy cut short, a
file-system fault or a full disk can leave the newest of them unreadable while an older one beside it is intact. This module finds, restores and reports:

- `restore_newest(checkpoint, ckpt_dir)` restores the newest checkpoint that passes every check into a
  `tf.train.Checkpoint` and says which newer ones it skipped and why (bin/train's resume, through
  members.build_members);
- `restore_epoch(checkpoint, ckpt_dir, epoch)` restores the checkpoint of one epoch or says why it cannot
  (for a reader that measures a given epoch, such as bin/sharpness --epoch);
- `resume_epochs(run_dirs)` says, without a model, which epoch each run of one bin/train process resumes
  from: the newest epoch all of them can restore when there is one (loop.train groups a column's members
  by it before building them, and members.build_members restores it);
- `write(checkpoint, ckpt_dir, epoch, keep_last, keep_epochs)` saves one, durably, and deletes the old ones
  that are neither among the newest nor kept for good;
- `sync(ckpt_dir, epoch)` makes a just-saved checkpoint durable (TensorFlow does not fsync it);
- `describe_keras_file(path)` says what is wrong with a model.keras that Keras cannot load.

The checks, each a reason to skip a checkpoint: (1) its index and data files read back, every tensor
against its stored CRC32C checksum (TensorFlow verifies them as it reads); (2) optionally, metrics.jsonl
records every epoch up to it, so a resumed log has no gap; (3) it restores into the given objects, every
existing variable matched. Candidates are found from the files, not from the `checkpoint` state file:
TensorFlow silently ignores a damaged state file, and the resume would then start again from epoch 0.
When checkpoints exist but none passes, CheckpointError (a RunFolderError: one line, exit status 2) names
each and what is wrong with it; nothing has been written by then. No TensorFlow at import.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from lrbs_tf.core.durable import fsync_dir, fsync_file
from lrbs_tf.core.errors import RunFolderError
from lrbs_tf.runs import folder as runfolder

if TYPE_CHECKING:
    import tensorflow as tf

CHECKPOINT_NAME = "ckpt"      # checkpoints are <ckpt_dir>/ckpt-<epoch> (CheckpointManager's name, kept)
STATE_FILE = "checkpoint"     # CheckpointManager's list of checkpoints (a text proto), in older run folders
KERAS_CONFIG = "config.json"                          # what keras.models.load_model reads from a .keras zip:
KERAS_WEIGHTS = ("model.weights.h5", "model.weights.npz")  # the architecture, and the weights in one of these
_PREFIX = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.index$")


class CheckpointError(RunFolderError):
    """Checkpoints exist but none can be used as asked; the message names each and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A checkpoint passed over, and why."""
    epoch: int
    prefix: str
    reason: str

    def __str__(self) -> str:
        return f"{Path(self.prefix).name} {self.reason}"


@dataclasses.dataclass(frozen=True)
class Found:
    """What a search found: the checkpoint used (prefix None and epoch 0 when there is none at all), the
    newer ones skipped (newest first), and the epochs of newer, intact ones not used because of `at_most`."""
    epoch: int
    prefix: str | None
    skipped: tuple[Skipped, ...] = ()
    passed_over: tuple[int, ...] = ()


def candidates(ckpt_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(epoch, prefix) of every checkpoint whose index file is in `ckpt_dir`, newest first."""
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), str(Path(ckpt_dir) / f"{CHECKPOINT_NAME}-{m.group(1)}"))
             for m in map(_PREFIX.match, names) if m]
    return sorted(found, reverse=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def unreadable(prefix: str) -> str | None:
    """What keeps checkpoint `prefix` from reading back whole (missing or short files, a checksum that does
    not match, an index that is not one), or None when every tensor reads back."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except Exception as e:  # OpError, IndexError ("Read less bytes than requested"), ValueError...
        return f"does not read back ({_first_line(e)})"
    return None


def _check(epoch: int, prefix: str, recorded_epochs: int | None) -> str | None:
    if recorded_epochs is not None and epoch > recorded_epochs:
        return (f"covers epochs 1..{epoch} but metrics.jsonl records "
                + (f"epochs 1..{recorded_epochs} only" if recorded_epochs else "none of them"))
    return unreadable(prefix)


def _restore(checkpoint: tf.train.Checkpoint, prefix: str) -> str | None:
    """Restores `prefix` into `checkpoint`; what went wrong, or None. Checkpoint.read, not .restore: restore
    creates the checkpoint's save counter, which `write` does not save (CheckpointManager's did; read
    leaves such a counter in an older folder's checkpoint unused)."""
    try:
        status = checkpoint.read(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()  # a reader that builds only the model leaves the optimizer's values unused
    except Exception as e:  # an intact checkpoint of another model: names or shapes that do not match
        return f"does not restore into this run's model ({_first_line(e)})"
    return None


def _none_usable(ckpt_dir: str | os.PathLike, skipped: list[Skipped]) -> CheckpointError:
    return CheckpointError(
        f"{ckpt_dir}: no checkpoint restores cleanly ({'; '.join(map(str, skipped))}); nothing was changed. "
        "Move the run folder aside to keep it, then run the same command again to train the run from the "
        "start")


def intact_epochs(ckpt_dir: str | os.PathLike, recorded_epochs: int | None = None) -> list[int]:
    """Epochs of the checkpoints in `ckpt_dir` that read back whole and (when `recorded_epochs` is given,
    the epochs metrics.jsonl records) are covered by the metrics, newest first; [] when there is none.
    Raises CheckpointError when there are checkpoints but none passes."""
    epochs, skipped = [], []
    for epoch, prefix in candidates(ckpt_dir):
        problem = _check(epoch, prefix, recorded_epochs)
        if problem is None:
            epochs.append(epoch)
        else:
            skipped.append(Skipped(epoch, prefix, problem))
    if skipped and not epochs:
        raise _none_usable(ckpt_dir, skipped)
    return epochs


def resume_epochs(run_dirs: Sequence[str | os.PathLike]) -> list[int]:
    """The epoch each run folder of one bin/train process resumes from (0: from the start), found without
    building a model: the newest epoch that all of them can restore when there is one, else each its
    newest. A kill between two members' checkpoint saves leaves a column one epoch apart; resumed together
    from the epoch they share, its members go on as one column, and their metrics stay those of an
    uninterrupted column (trained apart they would only agree to float tolerance)."""
    usable = []
    for run_dir in run_dirs:
        recorded = runfolder.recorded_epochs(runfolder.read_metrics(run_dir))
        usable.append(intact_epochs(Path(run_dir) / runfolder.CKPT_DIR, recorded) or [0])
    common = set(usable[0]).intersection(*usable[1:]) if usable else set()
    return [max(common)] * len(usable) if common else [epochs[0] for epochs in usable]


def restore_newest(checkpoint: tf.train.Checkpoint, ckpt_dir: str | os.PathLike,
                   recorded_epochs: int | None = None, at_most: int | None = None) -> Found:
    """Restores into `checkpoint` the newest checkpoint of `ckpt_dir` (of an epoch <= `at_most`, when given)
    that reads back whole, is covered by `recorded_epochs` (when given) and restores with every existing
    object matched; the newer ones are skipped (Found.skipped says why; Found.passed_over lists the intact
    ones past `at_most`).
    Found(0, None) when the folder holds no checkpoint: `checkpoint`'s objects are left as they are. Raises
    CheckpointError when there are checkpoints but none restores; `checkpoint`'s variables may then hold
    part of a failed restore, so the caller must not use them.

    `checkpoint` holds what the caller wants back, e.g. tf.train.Checkpoint(model=..., optimizer=...,
    epochs_done=...) for training, or tf.train.Checkpoint(model=model) to read the weights alone."""
    skipped: list[Skipped] = []
    passed_over = []
    for epoch, prefix in candidates(ckpt_dir):
        problem = _check(epoch, prefix, recorded_epochs)
        if problem is None and at_most is not None and epoch > at_most:
            passed_over.append(epoch)  # intact, but newer than the epoch the caller resumes from
            continue
        problem = problem or _restore(checkpoint, prefix)
        if problem is None:
            return Found(epoch, prefix, tuple(skipped), tuple(passed_over))
        skipped.append(Skipped(epoch, prefix, problem))
    if skipped:
        raise _none_usable(ckpt_dir, skipped)
    return Found(0, None)


def restore_epoch(checkpoint: tf.train.Checkpoint, ckpt_dir: str | os.PathLike, epoch: int) -> Found:
    """Restores the checkpoint of epoch `epoch` (1-based) of `ckpt_dir` into `checkpoint`, or raises
    CheckpointError saying why it cannot: no such checkpoint (naming the epochs there are), or what is
    wrong with it (the same checks as restore_newest)."""
    available = candidates(ckpt_dir)
    prefix = dict(available).get(epoch)
    if prefix is None:
        kept = ", ".join(str(e) for e, _ in sorted(available)) or "none"
        raise CheckpointError(f"{ckpt_dir} has no checkpoint of epoch {epoch} (epochs kept: {kept})")
    problem = unreadable(prefix) or _restore(checkpoint, prefix)
    if problem is not None:
        raise CheckpointError(f"{prefix} (epoch {epoch}) {problem}")
    return Found(epoch, prefix)


def report(found: Found, run_dir: str | os.PathLike, log: Callable[[str], None] | None = None) -> None:
    """Says, one line each, which checkpoints a resume skipped and why, and which newer ones it left for
    the epoch its column shares (stderr unless `log`)."""
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    for s in found.skipped:
        then = f"falling back to {Path(found.prefix).name}" if found.prefix else "no older checkpoint"
        (log or say)(f"warning: {run_dir}: skipped checkpoint {s}; {then}")
    if found.passed_over:
        (log or say)(f"note: {run_dir}: resuming after epoch {found.epoch} with the rest of its column, which "
                     f"has no later checkpoint (epochs {found.epoch + 1}..{max(found.passed_over)} are trained "
                     "again, to the same numbers)")


def sync(ckpt_dir: str | os.PathLike, epoch: int) -> None:
    """Syncs the files of checkpoint `epoch`, the state file and the folder to disk, so that after a crash
    or power cut the checkpoint is whole or absent rather than renamed but empty."""
    ckpt_dir = Path(ckpt_dir)
    stem = f"{CHECKPOINT_NAME}-{epoch}"
    for path in ckpt_dir.iterdir():
        if path.name == STATE_FILE or path.name == f"{stem}.index" or path.name.startswith(f"{stem}.data-"):
            fsync_file(path)
    fsync_dir(ckpt_dir)


@functools.lru_cache(maxsize=64)
def spaced_epochs(epochs: int, every: int = 0, geometric: int = 0) -> frozenset[int]:
    """Epochs (1-based, within 1..epochs) kept for good by a spacing: every `every`-th epoch (0: none), and
    `geometric` epochs spaced evenly in log(epoch) from 1 to `epochs`, rounded (0: none; fewer when two
    round to the same epoch, as early ones do in a short run). A trajectory of a long run then has as many
    points in its first tenth as in its last: the curvature moves fastest early."""
    kept: set[int] = set(range(every, epochs + 1, every)) if every > 0 else set()
    if geometric > 0 and epochs >= 1:
        kept |= {int(e) for e in np.unique(np.rint(np.geomspace(1, epochs, geometric)))} if geometric > 1 else {1}
    return frozenset(kept)


def write(checkpoint: tf.train.Checkpoint, ckpt_dir: str | os.PathLike, epoch: int, keep_last: int,
          keep_epochs: Sequence[int] = ()) -> str:
    """Writes `checkpoint` as ckpt-<epoch> in `ckpt_dir`, synced, then deletes the checkpoints that are neither
    among the `keep_last` newest nor of an epoch in `keep_epochs`. Returns the new checkpoint's prefix.

    Written with tf.train.Checkpoint.write rather than a CheckpointManager, whose rolling deletion cannot
    spare chosen epochs; readers find checkpoints by their files (`candidates`), not by a state file."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    prefix = checkpoint.write(str(ckpt_dir / f"{CHECKPOINT_NAME}-{epoch}"))
    sync(ckpt_dir, epoch)
    keep = set(keep_epochs)
    rolling = [e for e, _ in candidates(ckpt_dir) if e not in keep]  # newest first
    for old in rolling[keep_last:]:
        stem = f"{CHECKPOINT_NAME}-{old}"
        for path in ckpt_dir.iterdir():
            if path.name == f"{stem}.index" or path.name.startswith(f"{stem}.data-"):
                path.unlink(missing_ok=True)
    return prefix


def describe_keras_file(path: str | os.PathLike) -> str | None:
    """What is wrong with `path` as a .keras file (a zip archive holding config.json and the weights),
    in words that complete "<path> ...", or None when the archive is whole (Keras' own error then says
    what is wrong inside it)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty (0 bytes): it was never written whole"
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":
            return (f"is cut short ({size:,} bytes): it starts as a zip archive, as a .keras file is, but its "
                    "end (the zip's central directory) is missing")
        return f"is not a Keras model file: a .keras file is a zip archive, this one starts with {head!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            missing = [KERAS_CONFIG] if KERAS_CONFIG not in names else []
            if not any(w in names for w in KERAS_WEIGHTS):
                missing.append(KERAS_WEIGHTS[0])
            if missing:
                return (f"is a zip archive without {' and '.join(missing)} (it holds "
                        f"{', '.join(names) or 'nothing'}): not a Keras model file")
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"is a damaged zip archive ({_first_line(e)})"
    if bad is not None:
        return f"is damaged: its member {bad} fails its CRC check"
    return None
