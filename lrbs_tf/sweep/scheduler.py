"""bin/sweep: a grid of bin/train runs (batch sizes x learning rates x seeds x --grid axes), locally or as a
cluster shard.

    bin/sweep --flagfile=flags/quick.flags                      # the offline quick study (README)
    bin/sweep --flagfile=flags/paper/resnet110_cifar10.flags --num_shards=20 --shard_index=3
    bin/sweep --flagfile=flags/quick.flags --dry_list           # what this shard would run

The sweep is a scheduler, never a writer of run folders: `bin/train` trains (and resumes) each run,
`bin/sharpness` writes its sharpness.json, `bin/correlate` writes `<workdir>/correlate/`. The sweep's own
files are `<workdir>/sweep.json` (the grid and how it grew: lrbs_tf.sweep.record),
`<workdir>/sweep_failures*.jsonl` (one per shard) and `<workdir>/sweep_logs/` (each process's output).
Because every run's state lives in its folder, killing the sweep at any moment and starting it again loses
nothing and trains nothing twice: finished runs are skipped, unfinished ones resume from their checkpoint.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from lrbs_tf.core import provenance, resources
from lrbs_tf.core.errors import LOCKED_EXIT
from lrbs_tf.core.text import plural
from lrbs_tf.runs import folder as runfolder, locking
from lrbs_tf.runs.config import EXECUTION_SETTINGS, UsageError, identity_differences
from lrbs_tf.sweep import grid as gridlib, record as sweep_record, workers
from lrbs_tf.sweep.config import GRID_FLAGS, SweepConfig

REPO = Path(__file__).resolve().parents[2]
SWEEP_RECORD = sweep_record.SWEEP_RECORD
LOG_DIR = "sweep_logs"
CORRELATE_LOCK = "correlate.lock"


def _binary(name: str, override: Sequence[str]) -> list[str]:
    """The command that runs bin/<name>: an override, this checkout's bin/<name>, or the console script."""
    if override:
        return list(override)
    script = REPO / "bin" / name
    if script.is_file():
        return [sys.executable, str(script)]
    console = shutil.which(f"lrbs-{name}")
    if console:
        return [console]
    raise UsageError(f"cannot find bin/{name} next to lrbs_tf nor lrbs-{name} on PATH")


def grid_record(cfg: SweepConfig) -> dict:
    """What identifies the grid in sweep.json: the axes and every run-defining bin/train setting; a --grid
    axis as the list of its values under its setting's key, named in GRID_AXES (absent without axes)."""
    resolved = dataclasses.asdict(dataclasses.replace(cfg.train, run_name="-").resolved())
    shared = {k: v for k, v in resolved.items() if k not in EXECUTION_SETTINGS and k not in GRID_FLAGS}
    record = {"batch_sizes": list(cfg.grid.batch_sizes), "lrs": list(cfg.grid.lrs), "seeds": list(cfg.grid.seeds),
              **shared}
    if cfg.grid.axes:
        record.update({name: list(values) for name, values in cfg.grid.axes})
        record[sweep_record.GRID_AXES] = [name for name, _ in cfg.grid.axes]
    return record


def check_sweep_record(workdir: Path, record: dict, argv: Sequence[str] | None = None) -> dict:
    """sweep.json: written on first start, grown by a grid that extends it, or the grid refused
    (lrbs_tf.sweep.record); the axis values this grid adds."""
    return sweep_record.check_record(workdir, record, argv)


def run_conflicts(cfg: SweepConfig, runs: Sequence[gridlib.Run]) -> dict[str, str]:
    """Run folders of `runs` that exist with another configuration (e.g. other --epochs: the run names do not
    carry it), by name: bin/train would refuse each. Reads each config.json; no TensorFlow."""
    out = {}
    for r in runs:
        run_dir = cfg.workdir / r.name
        if not (run_dir / runfolder.CONFIG).exists():
            continue
        c = dataclasses.replace(cfg.grid.config(r.batch_size, r.lr, r.seed, r.point), run_name=r.name)
        try:
            diffs = identity_differences(runfolder.read_recorded_settings(run_dir), c.resolved())
        except runfolder.RunFolderError as e:
            diffs = [str(e)]
        if diffs:
            out[r.name] = "; ".join(diffs)
    return out


def _train_argv(cfg: SweepConfig, unit: gridlib.WorkUnit, threads: int) -> list[str]:
    argv = _binary("train", cfg.train_command) + list(cfg.train_args)
    argv += [f"--workdir={cfg.workdir}", "--noprogress", f"--batch_size={unit.batch_size}",
             f"--seed={unit.seed}", "--lr=" + ",".join(repr(lr) for lr in unit.lrs)]
    argv += [f"--{name}={gridlib.flag_text(value)}" for name, value in unit.point]
    if not cfg.user_set_threads:
        argv += [f"--intra_op_threads={threads}", "--inter_op_threads=1"]
    return argv


def _needs_sharpness(run_dir: Path) -> bool:
    """A done run without sharpness.json (diverged runs have no minimum to measure)."""
    return (runfolder.run_status(run_dir) == runfolder.STATUS_DONE
            and not (run_dir / runfolder.SHARPNESS).exists() and (run_dir / runfolder.MODEL).exists())


class _Scheduler:
    """One sweep's bookkeeping: turns ended processes into counts, failure records and follow-up tasks."""

    def __init__(self, cfg: SweepConfig, runs: Sequence[gridlib.Run], threads: int) -> None:
        self.cfg, self.threads = cfg, threads
        self.log_dir = cfg.workdir / LOG_DIR
        suffix = "" if cfg.num_shards == 1 else f"-shard{cfg.shard_index}of{cfg.num_shards}"
        self.failures_path = cfg.workdir / f"sweep_failures{suffix}.jsonl"  # one writer: this shard
        finished = {s: sum(runfolder.run_status(cfg.workdir / r.name) == s for r in runs)
                    for s in runfolder.TERMINAL_STATUSES}
        self.progress = workers.Progress(len(runs), finished, sharpness_weight=cfg.sharpness_weight)
        self.failed_runs: list[str] = []
        self.sharpness_failed: list[str] = []
        self.sharpness_refused = False
        self.elsewhere: list[str] = []  # runs whose folders another process held (lrbs_tf.runs.locking)

    def train_task(self, unit: gridlib.WorkUnit) -> workers.Task:
        return workers.Task("train", unit.label, _train_argv(self.cfg, unit, self.threads),
                            self.log_dir / f"{unit.label}.log", unit)

    def sharpness_task(self, unit: gridlib.WorkUnit) -> workers.Task:
        """One bin/sharpness process for the runs of `unit` (a column's done runs): TensorFlow starts, the data
        loads and the functions trace once for all of them."""
        ckpts = ",".join(str(self.cfg.workdir / r.name) for r in unit.runs)
        argv = _binary("sharpness", self.cfg.sharpness_command) + [f"--ckpt={ckpts}"] + list(self.cfg.sharpness_args)
        self.progress.sharpness_todo += len(unit.runs)
        # Measurements wait behind training (priority 1): a retried run must not be the last thing left.
        return workers.Task("sharpness", unit.label, argv, self.log_dir / f"{unit.label}.sharpness.log", unit, 1)

    def record_failure(self, run: str, done: workers.Finished, **extra) -> None:
        runfolder.append_jsonl(self.failures_path, {
            "time": provenance.now(),
            "run": run, "kind": done.task.kind, "exit_code": done.returncode, **extra,
            "log": str(done.task.log_path), "log_tail": done.log_tail,
            "command": " ".join(shlex.quote(a) for a in done.task.argv)})

    def on_start(self, task: workers.Task) -> bool:
        if task.kind == "sharpness" and self.sharpness_refused:
            self.progress.sharpness_todo -= len(task.payload.runs)
            return False
        self.progress.running[task.kind] += 1
        self.progress.event(f"start {task.kind} {task.label}")
        return True

    def on_finish(self, done: workers.Finished) -> list[workers.Task]:
        self.progress.running[done.task.kind] -= 1
        self.progress.timed(done.task.kind, done.seconds, len(done.task.payload.runs))
        if done.task.kind == "sharpness":
            return self._sharpness_finished(done)
        return self._train_finished(done)

    def _train_finished(self, done: workers.Finished) -> list[workers.Task]:
        unit: gridlib.WorkUnit = done.task.payload
        follow, unfinished, words, measure = [], [], [], []
        for run in unit.runs:
            status = runfolder.run_status(self.cfg.workdir / run.name)
            if status in runfolder.TERMINAL_STATUSES:
                self.progress.counts[status] += 1
                words.append(f"{run.name} {status}")
                if self.cfg.sharpness and not self.sharpness_refused and _needs_sharpness(
                        self.cfg.workdir / run.name):
                    measure.append(run)
            else:
                unfinished.append((run, status))
        retried = bool(unfinished) and len(unit.runs) > 1
        if self.cfg.sharpness:  # these runs' measurements are queued now, or none is coming
            self.progress.sharpness_expected -= len(unit.runs) - (len(unfinished) if retried else 0)
        if measure:
            follow.append(self.sharpness_task(dataclasses.replace(unit, runs=tuple(measure))))
        self.progress.ended_items += len(unit.runs)
        if retried:
            # A column process failing (e.g. killed for memory with K models) says little about each run:
            # its unfinished runs get one process each, once, before any is called failed.
            for run, status in unfinished:
                if done.returncode != LOCKED_EXIT:  # a held folder is no failure: its run alone says so
                    self.record_failure(run.name, done, result_status=status, retry="one process per run")
            self.progress.ended_items -= len(unfinished)
            follow += [self.train_task(gridlib.WorkUnit(r.batch_size, r.seed, (r,))) for r, _ in unfinished]
            words.append(f"{len(unfinished)} unfinished (exit {done.returncode}): retried one process per run")
        elif unfinished and done.returncode == LOCKED_EXIT:
            # Another process (a second sweep, a resubmitted job, a hand-started bin/train) holds the run
            # folder: it is running elsewhere, not failed; a later start picks it up if that one stops short.
            for run, _ in unfinished:
                self.elsewhere.append(run.name)
                words.append(f"{run.name} running elsewhere")
        else:
            for run, status in unfinished:
                error = None
                if status == runfolder.STATUS_FAILED:
                    error = runfolder.read_result(self.cfg.workdir / run.name).error
                self.record_failure(run.name, done, result_status=status, error=error)
                self.progress.counts["failed"] += 1
                self.failed_runs.append(run.name)
                last = done.log_tail[-1] if done.log_tail else ""
                words.append(f"{run.name} FAILED (exit {done.returncode}{', ' + last if last else ''})")
        self.progress.event(f"end train {unit.label} after {workers.format_duration(done.seconds)}: "
                            + "; ".join(words), counts=True)
        return follow

    def _sharpness_finished(self, done: workers.Finished) -> list[workers.Task]:
        """A run was measured if its sharpness.json now exists (it had none): bin/sharpness measures the others
        of its process when one fails (exit 1)."""
        unit: gridlib.WorkUnit = done.task.payload
        self.progress.sharpness_todo -= len(unit.runs)
        self.progress.ended_sharpness += len(unit.runs)
        failed = [r for r in unit.runs if not (self.cfg.workdir / r.name / runfolder.SHARPNESS).exists()]
        if failed and done.returncode == LOCKED_EXIT:  # another process holds those folders: not a failure
            self.elsewhere += [r.name for r in failed]
            self.progress.event(f"sharpness {unit.label}: {len(failed)} run(s) held by another process",
                                counts=True)
            return []
        self.progress.sharpness_done += len(unit.runs) - len(failed)
        for run in failed:
            self.record_failure(run.name, done)
            self.sharpness_failed.append(run.name)
        last = done.log_tail[-1] if done.log_tail else ""
        took = workers.format_duration(done.seconds)
        if not failed:
            self.progress.event(f"end sharpness {unit.label} ({plural(len(unit.runs), 'run')}) after {took}", counts=True)
        elif done.returncode == 2 and not self.sharpness_refused:
            # Exit 2 is bad input; every run of a grid shares arch, data and --sharpness_flags, so the
            # others would be refused the same way.
            self.sharpness_refused = True
            self.progress.sharpness_expected = 0
            self.progress.event(f"sharpness {unit.label} refused its input ({last}); no more sharpness "
                                "measurements this session", counts=True)
        else:
            self.progress.event(f"sharpness {unit.label}: {len(failed)} of {len(unit.runs)} FAILED "
                                f"(exit {done.returncode}: {last})", counts=True)
        return []


def correlate(cfg: SweepConfig) -> int:
    """Runs bin/correlate over the workdir (output to this console); its exit status."""
    lock = cfg.workdir / CORRELATE_LOCK
    if not workers.try_lock(lock):
        print(f"sweep: another process holds {lock} and is running bin/correlate; not running it twice "
              "(remove the file if no sweep is running)", flush=True)
        return 0
    try:
        argv = (_binary("correlate", cfg.correlate_command) + [f"--results={cfg.workdir}"]
                + list(cfg.correlate_args))
        print(f"sweep: {' '.join(shlex.quote(a) for a in argv)}", flush=True)
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
    finally:
        lock.unlink(missing_ok=True)


def dry_list(cfg: SweepConfig, shard: Sequence[gridlib.Run], finished: int, units: Sequence[gridlib.WorkUnit],
             threads: int) -> int:
    """--dry_list: this shard's share; in a workdir that holds a sweep or runs, how the grid stands against
    sweep.json and which runs exist, are new or would conflict; then each work unit's bin/train command.
    Writes nothing; a grid the sweep would refuse is listed, then refused (UsageError). A conflicting run
    (a folder of another configuration) is listed: the sweep runs the others, and bin/train refuses it."""
    steps = gridlib.shard_steps(cfg.grid, shard)
    for name, values in cfg.grid.axes:
        print(f"axis\t{name}\t{','.join(gridlib.flag_text(v) for v in values)}")
    print(f"shard {cfg.shard_index} of {cfg.num_shards}: {len(shard)} of the grid's {cfg.grid.size} runs "
          f"({100 * steps / gridlib.shard_steps(cfg.grid, cfg.grid.runs()):.0f}% of its optimizer steps), "
          f"{finished} finished, {len(units)} work unit{'' if len(units) == 1 else 's'} to run")
    comparison = sweep_record.compare(cfg.workdir, grid_record(cfg))
    exists = [r for r in shard if (cfg.workdir / r.name / runfolder.CONFIG).exists()]
    refusal = comparison.refusal(cfg.workdir) if comparison else None
    if comparison is not None or exists:
        conflicts = run_conflicts(cfg, exists)
        if comparison is None:
            state = "none yet (written on the first start)"
        elif refusal:
            state = "this grid would be refused (below)"
        elif comparison.added:
            state = f"this grid grows the recorded one ({sweep_record.describe(comparison.added)})"
        else:
            state = "the same grid"
        print(f"sweep.json: {state}")
        print(f"runs: {len(exists)} exist, {len(shard) - len(exists)} new, {len(conflicts)} would conflict")
        for r in shard:
            if r.name in conflicts:
                print(f"conflict\t{r.name}\t{conflicts[r.name]}")
            elif r in exists:
                print(f"exists\t{r.name}\t{runfolder.run_status(cfg.workdir / r.name) or 'unfinished'}")
            else:
                print(f"new\t{r.name}")
    for unit in units:
        print(f"{unit.label}\t{' '.join(shlex.quote(a) for a in _train_argv(cfg, unit, threads))}")
    if refusal:
        raise UsageError(refusal)
    return 0


def run(cfg: SweepConfig) -> int:
    """Runs this shard's unfinished runs (and measurements); returns the exit status (0: all finished)."""
    try:
        shard = gridlib.shard_runs(cfg.grid, cfg.shard_index, cfg.num_shards)
    except ValueError as e:
        raise UsageError(str(e)) from None
    workdir = cfg.workdir
    todo = [r for r in shard if runfolder.run_status(workdir / r.name) not in runfolder.TERMINAL_STATUSES]
    elsewhere = [r.name for r in todo if locking.is_locked(workdir / r.name)]
    todo = [r for r in todo if r.name not in elsewhere]  # another process trains them now
    units = gridlib.work_units(todo, cfg.vectorize, cfg.column_size)
    gpus = resources.visible_gpus()
    num_workers = cfg.workers or len(gpus) or resources.available_cores()
    threads = max(1, resources.available_cores() // num_workers)
    if cfg.dry_list:
        return dry_list(cfg, shard, len(shard) - len(todo), units, threads)
    comparison = sweep_record.compare(workdir, grid_record(cfg))
    if comparison is not None and comparison.refusal(workdir):
        raise UsageError(comparison.refusal(workdir))  # before anything is written
    conflicts = run_conflicts(cfg, todo)
    if conflicts:  # one foreign folder does not stop the others: bin/train refuses it, recorded as failed
        name, diffs = next(iter(conflicts.items()))
        print(f"sweep: note: {len(conflicts)} run folder(s) of this grid hold another configuration (e.g. "
              f"{workdir / name}: {diffs}); bin/train will refuse them", flush=True)
    added = check_sweep_record(workdir, grid_record(cfg))
    if added:
        print(f"sweep: the grid grows in place ({sweep_record.describe(added)}), recorded in "
              f"{workdir / SWEEP_RECORD}; finished runs are kept, only new runs train", flush=True)
    if cfg.correlate_now:
        return correlate(cfg)
    grid_dirs = {workdir / r.name for r in cfg.grid.runs()}
    foreign = [d for d in runfolder.iter_run_dirs(workdir) if d not in grid_dirs]
    if foreign:  # bin/correlate --results=<workdir> reads every run folder below it
        print(f"sweep: note: {len(foreign)} run folder(s) under {workdir} are not of this grid (e.g. "
              f"{foreign[0]}); bin/correlate will include them", flush=True)
    if elsewhere:
        print(f"sweep: {len(elsewhere)} run(s) are being trained by another process (their folders are locked, "
              f"e.g. {elsewhere[0]}): left to it", flush=True)
    session = _Scheduler(cfg, shard, threads)
    session.elsewhere += elsewhere
    tasks = [session.train_task(u) for u in units]
    if cfg.sharpness:
        session.progress.sharpness_expected = len(todo)  # each run trained now is measured after (if done)
        waiting = [r for r in shard if _needs_sharpness(workdir / r.name)]
        tasks += [session.sharpness_task(u) for u in gridlib.work_units(waiting, vectorize=True)]
    where = f"{len(gpus)} GPU(s)" if gpus else f"{resources.available_cores()} CPU core(s), {threads} thread(s) each"
    print(f"sweep: {workdir}: shard {cfg.shard_index}/{cfg.num_shards} holds {len(shard)} of {cfg.grid.size} "
          f"runs; {len(shard) - len(todo)} finished, {len(todo)} to run in {len(units)} "
          f"{'process' if len(units) == 1 else 'processes'}; "
          f"{num_workers} worker(s) on {where}", flush=True)
    pool = workers.Pool(workers.slot_environments(num_workers, resources.available_cores(), gpus))
    try:
        pool.run(tasks, session.on_start, session.on_finish, session.progress.tick)
    except workers.Interrupted as e:
        session.progress.close()
        print(f"sweep: interrupted ({e}); running runs were stopped and resume when the sweep is started "
              "again", file=sys.stderr, flush=True)
        return 130
    session.progress.close()
    failed = session.failed_runs + [f"{r} (sharpness)" for r in session.sharpness_failed]
    if failed:
        print(f"sweep: {len(failed)} failed: {', '.join(failed)}; details in {session.failures_path}; "
              "starting the sweep again retries them", flush=True)
    if session.elsewhere:
        print(f"sweep: {len(session.elsewhere)} run(s) were running elsewhere (another process held their "
              f"folders: {', '.join(session.elsewhere[:5])}{', ...' if len(session.elsewhere) > 5 else ''}); "
              "not failures: starting the sweep again later picks up any left unfinished", flush=True)
    code = 1 if failed else 0
    if cfg.correlate:
        unfinished = sum(runfolder.run_status(workdir / r.name) not in runfolder.TERMINAL_STATUSES
                         for r in cfg.grid.runs())
        if unfinished:
            print(f"sweep: {unfinished} run(s) of the grid are not finished (failed, or other shards'); "
                  "bin/correlate runs once all are, or now with --correlate_now", flush=True)
        else:
            code = correlate(cfg) or code
    return code
