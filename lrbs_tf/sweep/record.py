"""`<workdir>/sweep.json`: the record of a sweep's grid, and how a grid grows in place.

A workdir holds one experiment: every run-defining bin/train setting (epochs, step budget, architecture,
dataset, momentum, ...) is recorded on the sweep's first start, and a later sweep that changes one of them
is refused, naming it, since its runs would be a different experiment beside the old ones. The grid's
axes (batch sizes, learning rates, seeds, and the --grid axes) may *grow*: a grid listing every recorded value of each axis plus
new ones adds runs to the same experiment, so the sweep trains only the new runs and keeps the finished
ones. A grid that leaves out a recorded value is refused too (the workdir's runs of that value would be
read by bin/correlate as part of a grid that does not name them); list the old values with the new.

A --grid axis is recorded as the list of its values under its setting's key, its name in "grid_axes"; a
setting recorded as one value counts as an axis of that one value when a grid makes it an axis, so the
four one-weight-decay sweeps of an older flagfile grow into one --grid=weight_decay=... sweep.

The file, written atomically (temporary file, fsync, rename, folder fsync):
    {"grid": {...the current grid: axes and settings...}, "created": time, "command": text, "argv": [...],
     "grown": [{"time": ..., "added": {"seeds": [1]}, "command": ..., "argv": [...]}, ...]}
"grid" is always the whole current grid; "grown" lists each growth in order, so the first grid is the
current one less every "added". Growth is written under an exclusive flock on sweep.json itself (taken
again when another process replaced the file meanwhile), so shards starting together with the same grown
grid record it once, and two different growths both land. No TensorFlow, no pandas.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator, Sequence

from lrbs_tf.core import durable, provenance
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import DEFAULTS, UsageError

SWEEP_RECORD = runfolder.SWEEP_RECORD
AXES = ("batch_sizes", "lrs", "seeds")
AXIS_FLAGS = {"batch_sizes": "--batch_sizes", "lrs": "--lrs", "seeds": "--seeds"}
GRID_AXES = "grid_axes"  # the record's key listing its --grid axes (absent: none)


def _axis_flag(axis: str, values: list) -> str:
    if axis in AXIS_FLAGS:
        return f"{AXIS_FLAGS[axis]}={','.join(map(str, values))}"
    texts = [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]
    return f"--grid={axis}={','.join(texts)}"


def _values(record: dict, key: str) -> list:
    """An axis' values in `record`: its list, or the one value of a setting it records as one (its default
    where it lacks the key)."""
    if key in AXES or key in record.get(GRID_AXES, ()):
        return list(record.get(key, []))
    return [record.get(key, DEFAULTS.get(key))]


class Comparison:
    """How a grid (`new`) stands against the recorded one (`old`): the settings that differ (conflicts: a
    different experiment), the recorded axis values it leaves out, and the values it adds."""

    def __init__(self, old: dict, new: dict) -> None:
        axes = list(dict.fromkeys([*AXES, *old.get(GRID_AXES, ()), *new.get(GRID_AXES, ())]))
        self.conflicts = [f"{k}: {old.get(k, DEFAULTS.get(k))!r} there, {v!r} now" for k, v in new.items()
                          if k not in axes and k != GRID_AXES and old.get(k, DEFAULTS.get(k)) != v]
        self.conflicts += [f"{k}: {old[k]!r} there, absent now" for k in old
                           if k not in new and k not in axes and k != GRID_AXES]
        before = {a: _values(old, a) for a in axes}
        now = {a: _values(new, a) for a in axes}
        self.dropped = {a: [v for v in before[a] if v not in now[a]] for a in axes}
        self.dropped = {a: v for a, v in self.dropped.items() if v}
        self.added = {a: [v for v in now[a] if v not in before[a]] for a in axes}
        self.added = {a: v for a, v in self.added.items() if v}
        self.union = {a: sorted(set(before[a]) | set(now[a]), key=lambda v: (str(type(v)), v)) for a in axes}

    @property
    def same(self) -> bool:
        return not (self.conflicts or self.dropped or self.added)

    def refusal(self, workdir: Path) -> str | None:
        """The one-line refusal of this grid in `workdir`, or None when it is the same or a growth."""
        path = workdir / SWEEP_RECORD
        if self.conflicts:
            return (f"{workdir} holds another sweep ({'; '.join(self.conflicts)}): its runs would be a different "
                    f"experiment; use another --workdir or the flags recorded in {path} (a grid may only grow: "
                    "more seeds, learning rates, batch sizes or --grid values)")
        if self.dropped:
            left = "; ".join(f"{a} {', '.join(map(repr, v))}" for a, v in self.dropped.items())
            lists = " ".join(_axis_flag(a, self.union[a]) for a in self.dropped)
            return (f"{workdir} holds a sweep whose grid this one leaves out ({left}); a grid grows in place by "
                    f"listing the recorded values with the new ones: {lists}")
        return None


def describe(added: dict) -> str:
    """{'seeds': [1, 2]} -> 'seeds + 1, 2'."""
    return "; ".join(f"{a} + {', '.join(map(repr, v))}" for a, v in added.items())


def read_record(workdir: Path) -> dict | None:
    """sweep.json's content, None when there is none; refuses a file that is not a sweep record."""
    path = workdir / SWEEP_RECORD
    if not path.exists():
        return None
    try:
        raw = runfolder.read_json(path)
        if not isinstance(raw, dict) or not isinstance(raw["grid"], dict):
            raise TypeError
    except (runfolder.RunFolderError, KeyError, TypeError):
        raise UsageError(f"{path} is not a sweep record; is {workdir} another tool's folder?") from None
    return raw


def compare(workdir: Path, record: dict) -> Comparison | None:
    """How `record` stands against the workdir's sweep.json (None: no sweep.json yet). Writes nothing."""
    raw = read_record(workdir)
    return None if raw is None else Comparison(raw["grid"], record)


def _create(workdir: Path, record: dict, argv: Sequence[str]) -> None:
    """Writes the first sweep.json with link(2), which fails if the file exists, so shards starting together
    agree on one record (the others then compare against it like any restart)."""
    path = workdir / SWEEP_RECORD
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".{SWEEP_RECORD}.{os.getpid()}.tmp"
    runfolder.atomic_write_json(tmp, {"grid": record, "created": provenance.now(), "command": shlex.join(argv),
                                      "argv": list(argv)})
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    durable.fsync_dir(workdir)  # the link is what makes sweep.json exist: durable only once synced


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on the file now at `path` (retaken if a writer replaced the file meanwhile)."""
    while True:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                yield
                return


def check_record(workdir: Path, record: dict, argv: Sequence[str] | None = None) -> dict:
    """Writes sweep.json on first start, records a grown grid, or refuses a grid that is another experiment
    (or leaves out recorded values). Returns the axis values this grid adds ({} when none)."""
    argv = list(sys.argv if argv is None else argv)
    path = workdir / SWEEP_RECORD
    if not path.exists():
        _create(workdir, record, argv)
    comparison = compare(workdir, record)
    message = comparison.refusal(workdir)
    if message:
        raise UsageError(message)
    if not comparison.added:
        return {}
    with _locked(path):
        raw = read_record(workdir)  # again under the lock: another shard may have grown it meanwhile
        comparison = Comparison(raw["grid"], record)
        message = comparison.refusal(workdir)
        if message:
            raise UsageError(message)
        if comparison.added:
            grown = [*raw.get("grown", []), {"time": provenance.now(), "added": comparison.added,
                                             "command": shlex.join(argv), "argv": argv}]
            runfolder.atomic_write_json(path, {**raw, "grid": record, "grown": grown})
    return comparison.added

