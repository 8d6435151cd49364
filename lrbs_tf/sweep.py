"""bin/sweep: a grid of bin/train runs (batch sizes x learning rates x seeds), locally or as a cluster shard.

    bin/sweep --flagfile=flags/quick.flags                      # the offline quick study (README)
    bin/sweep --flagfile=flags/paper/resnet110_cifar10.flags --num_shards=20 --shard_index=3
    bin/sweep --flagfile=flags/quick.flags --dry_list           # what this shard would run

The sweep is a scheduler, never a writer of run folders: `bin/train` trains (and resumes) each run,
`bin/sharpness` writes its sharpness.json, `bin/correlate` writes `<workdir>/correlate/`. The sweep's own
files are `<workdir>/sweep.json` (the grid, written once; a different grid is refused),
`<workdir>/sweep_failures*.jsonl` (one per shard) and `<workdir>/sweep_logs/` (each process's output).
Because every run's state lives in its folder, killing the sweep at any moment and starting it again loses
nothing and trains nothing twice: finished runs are skipped, unfinished ones resume from their checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from lrbs_tf import grid as gridlib
from lrbs_tf import durable, provenance, runfolder, workers
from lrbs_tf.cli import run_app
from lrbs_tf.config import DEFAULTS, EXECUTION_SETTINGS, GRID_SETTINGS, TrainConfig, UsageError, validate

REPO = Path(__file__).resolve().parents[1]
SWEEP_RECORD = "sweep.json"
LOG_DIR = "sweep_logs"
CORRELATE_LOCK = "correlate.lock"
GRID_FLAGS = (*GRID_SETTINGS, "run_name")  # set per run by the grid, never by a flagfile
# bin/train flags the sweep sets itself per worker (threads) or always (no progress bar in a log file).
WORKER_FLAGS = ("intra_op_threads", "inter_op_threads", "progress", "workdir")


@dataclasses.dataclass
class SweepConfig:
    """Everything one `bin/sweep` invocation does, as plain values (built from flags by `_main`)."""
    grid: gridlib.Grid
    train: TrainConfig                 # the settings shared by every run (its lr/batch_size/seed go unused: the grid sets them)
    train_args: tuple[str, ...]        # the bin/train flags the user set, forwarded to every run
    workdir: Path
    workers: int = 0                   # 0: one per GPU, else one per CPU core
    shard_index: int = 0
    num_shards: int = 1
    vectorize: bool = True
    column_size: int = 0               # most learning rates per bin/train process; 0: the whole column
    sharpness: bool = False
    sharpness_args: tuple[str, ...] = ()
    correlate: bool = False
    correlate_now: bool = False
    correlate_args: tuple[str, ...] = ()
    dry_list: bool = False
    train_command: tuple[str, ...] = ()       # empty: this checkout's bin/train (see _binary)
    sharpness_command: tuple[str, ...] = ()
    correlate_command: tuple[str, ...] = ()
    user_set_threads: bool = False     # --intra_op_threads/--inter_op_threads given: forwarded as they are


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
    """What identifies the grid in sweep.json: the axes and every run-defining bin/train setting."""
    resolved = dataclasses.asdict(dataclasses.replace(cfg.train, run_name="-").resolved())
    shared = {k: v for k, v in resolved.items() if k not in EXECUTION_SETTINGS and k not in GRID_FLAGS}
    return {"batch_sizes": list(cfg.grid.batch_sizes), "lrs": list(cfg.grid.lrs), "seeds": list(cfg.grid.seeds),
            **shared}


def check_sweep_record(workdir: Path, record: dict) -> None:
    """Writes `<workdir>/sweep.json` on first start, or refuses a grid other than the one it holds.

    Created with link(2), which fails if the file exists, so shards starting together agree on one record.
    """
    path = workdir / SWEEP_RECORD
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = workdir / f".{SWEEP_RECORD}.{os.getpid()}.tmp"
        runfolder.atomic_write_json(tmp, {"grid": record, "created": provenance.now(), "command": " ".join(sys.argv)})
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another shard was first; compared below like any restart
        finally:
            tmp.unlink()
        durable.fsync_dir(workdir)  # the link is what makes sweep.json exist: durable only once synced
    try:
        old = runfolder.read_json(path)["grid"]
    except (runfolder.RunFolderError, KeyError, TypeError):
        raise UsageError(f"{path} is not a sweep record; is {workdir} another tool's folder?") from None
    diffs = [f"{k}: {old.get(k, DEFAULTS.get(k))!r} there, {v!r} now" for k, v in record.items()
             if old.get(k, DEFAULTS.get(k)) != v]
    diffs += [f"{k}: {old[k]!r} there, absent now" for k in old if k not in record]
    if diffs:
        raise UsageError(f"{workdir} holds another sweep ({'; '.join(diffs)}); use another --workdir or "
                         f"the flags recorded in {path}")


def _train_argv(cfg: SweepConfig, unit: gridlib.WorkUnit, threads: int) -> list[str]:
    argv = _binary("train", cfg.train_command) + list(cfg.train_args)
    argv += [f"--workdir={cfg.workdir}", "--noprogress", f"--batch_size={unit.batch_size}",
             f"--seed={unit.seed}", "--lr=" + ",".join(repr(lr) for lr in unit.lrs)]
    if not cfg.user_set_threads:
        argv += [f"--intra_op_threads={threads}", "--inter_op_threads=1"]
    return argv


def _needs_sharpness(run_dir: Path) -> bool:
    """A done run without sharpness.json (diverged runs have no minimum to measure)."""
    return (runfolder.run_status(run_dir) == runfolder.STATUS_DONE
            and not (run_dir / runfolder.SHARPNESS).exists() and (run_dir / runfolder.MODEL).exists())


class _Session:
    """One sweep's bookkeeping: turns ended processes into counts, failure records and follow-up tasks."""

    def __init__(self, cfg: SweepConfig, runs: Sequence[gridlib.Run], threads: int) -> None:
        self.cfg, self.threads = cfg, threads
        self.log_dir = cfg.workdir / LOG_DIR
        suffix = "" if cfg.num_shards == 1 else f"-shard{cfg.shard_index}of{cfg.num_shards}"
        self.failures_path = cfg.workdir / f"sweep_failures{suffix}.jsonl"  # one writer: this shard
        finished = {s: sum(runfolder.run_status(cfg.workdir / r.name) == s for r in runs)
                    for s in runfolder.TERMINAL_STATUSES}
        self.progress = workers.Progress(len(runs), finished)
        self.failed_runs: list[str] = []
        self.sharpness_failed: list[str] = []
        self.sharpness_refused = False

    def train_task(self, unit: gridlib.WorkUnit) -> workers.Task:
        return workers.Task("train", unit.label, _train_argv(self.cfg, unit, self.threads),
                            self.log_dir / f"{unit.label}.log", unit)

    def sharpness_task(self, run: gridlib.Run) -> workers.Task:
        argv = (_binary("sharpness", self.cfg.sharpness_command) + [f"--ckpt={self.cfg.workdir / run.name}"]
                + list(self.cfg.sharpness_args))
        self.progress.sharpness_todo += 1
        # Measurements wait behind training (priority 1): a retried run must not be the last thing left.
        return workers.Task("sharpness", run.name, argv, self.log_dir / f"{run.name}.sharpness.log", run, 1)

    def record_failure(self, run: str, done: workers.Finished, **extra) -> None:
        runfolder.append_jsonl(self.failures_path, {
            "time": provenance.now(),
            "run": run, "kind": done.task.kind, "exit_code": done.returncode, **extra,
            "log": str(done.task.log_path), "log_tail": done.log_tail,
            "command": " ".join(shlex.quote(a) for a in done.task.argv)})

    def on_start(self, task: workers.Task) -> bool:
        if task.kind == "sharpness" and self.sharpness_refused:
            self.progress.sharpness_todo -= 1
            return False
        self.progress.running[task.kind] += 1
        self.progress.event(f"start {task.kind} {task.label}")
        return True

    def on_finish(self, done: workers.Finished) -> list[workers.Task]:
        self.progress.running[done.task.kind] -= 1
        if done.task.kind == "sharpness":
            return self._sharpness_finished(done)
        return self._train_finished(done)

    def _train_finished(self, done: workers.Finished) -> list[workers.Task]:
        unit: gridlib.WorkUnit = done.task.payload
        follow, unfinished, words = [], [], []
        for run in unit.runs:
            status = runfolder.run_status(self.cfg.workdir / run.name)
            if status in runfolder.TERMINAL_STATUSES:
                self.progress.counts[status] += 1
                words.append(f"{run.name} {status}")
                if self.cfg.sharpness and not self.sharpness_refused and _needs_sharpness(
                        self.cfg.workdir / run.name):
                    follow.append(self.sharpness_task(run))
            else:
                unfinished.append((run, status))
        self.progress.ended_items += len(unit.runs)
        if unfinished and len(unit.runs) > 1:
            # A column process failing (e.g. killed for memory with K models) says little about each run:
            # its unfinished runs get one process each, once, before any is called failed.
            for run, status in unfinished:
                self.record_failure(run.name, done, result_status=status, retry="one process per run")
            self.progress.ended_items -= len(unfinished)
            follow += [self.train_task(gridlib.WorkUnit(r.batch_size, r.seed, (r,))) for r, _ in unfinished]
            words.append(f"{len(unfinished)} unfinished (exit {done.returncode}): retried one process per run")
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
                            + "; ".join(words))
        return follow

    def _sharpness_finished(self, done: workers.Finished) -> list[workers.Task]:
        run: gridlib.Run = done.task.payload
        self.progress.sharpness_todo -= 1
        self.progress.ended_items += 1
        if (self.cfg.workdir / run.name / runfolder.SHARPNESS).exists() and done.returncode == 0:
            self.progress.sharpness_done += 1
            self.progress.event(f"end sharpness {run.name} after {workers.format_duration(done.seconds)}")
            return []
        self.record_failure(run.name, done)
        self.sharpness_failed.append(run.name)
        last = done.log_tail[-1] if done.log_tail else ""
        if done.returncode == 2 and not self.sharpness_refused:
            # Exit 2 is bad input; every run of a grid shares arch, data and --sharpness_flags, so the
            # others would be refused the same way.
            self.sharpness_refused = True
            self.progress.event(f"sharpness {run.name} refused its input ({last}); no more sharpness "
                                "measurements this session")
        else:
            self.progress.event(f"sharpness {run.name} FAILED (exit {done.returncode}: {last})")
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


def run(cfg: SweepConfig) -> int:
    """Runs this shard's unfinished runs (and measurements); returns the exit status (0: all finished)."""
    try:
        shard = gridlib.shard_runs(cfg.grid, cfg.shard_index, cfg.num_shards)
    except ValueError as e:
        raise UsageError(str(e)) from None
    workdir = cfg.workdir
    todo = [r for r in shard if runfolder.run_status(workdir / r.name) not in runfolder.TERMINAL_STATUSES]
    units = gridlib.work_units(todo, cfg.vectorize, cfg.column_size)
    gpus = workers.visible_gpus()
    num_workers = cfg.workers or len(gpus) or workers.available_cores()
    threads = max(1, workers.available_cores() // num_workers)
    if cfg.dry_list:
        print(f"shard {cfg.shard_index} of {cfg.num_shards}: {len(shard)} of the grid's {cfg.grid.size} runs, "
              f"{len(shard) - len(todo)} finished, {len(units)} work units to run")
        for unit in units:
            print(f"{unit.label}\t{' '.join(shlex.quote(a) for a in _train_argv(cfg, unit, threads))}")
        return 0
    check_sweep_record(workdir, grid_record(cfg))
    if cfg.correlate_now:
        return correlate(cfg)
    grid_dirs = {workdir / r.name for r in cfg.grid.runs()}
    foreign = [d for d in runfolder.iter_run_dirs(workdir) if d not in grid_dirs]
    if foreign:  # bin/correlate --results=<workdir> reads every run folder below it
        print(f"sweep: note: {len(foreign)} run folder(s) under {workdir} are not of this grid (e.g. "
              f"{foreign[0]}); bin/correlate will include them", flush=True)
    session = _Session(cfg, shard, threads)
    tasks = [session.train_task(u) for u in units]
    if cfg.sharpness:
        tasks += [session.sharpness_task(r) for r in shard if _needs_sharpness(workdir / r.name)]
    where = f"{len(gpus)} GPU(s)" if gpus else f"{workers.available_cores()} CPU core(s), {threads} thread(s) each"
    print(f"sweep: {workdir}: shard {cfg.shard_index}/{cfg.num_shards} holds {len(shard)} of {cfg.grid.size} "
          f"runs; {len(shard) - len(todo)} finished, {len(todo)} to run in {len(units)} processes; "
          f"{num_workers} worker(s) on {where}", flush=True)
    pool = workers.Pool(workers.slot_environments(num_workers, workers.available_cores(), gpus))
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


def _numbers(name: str, values: Sequence[str] | None, kind: type) -> tuple:
    """A list flag's entries as ints or floats, naming the entry that is not one."""
    out = []
    for v in values or ():
        try:
            out.append(kind(v))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"--{name} holds {v!r}, which is not {what}") from None
    return tuple(out)


def _extra_flags(name: str, text: str, forbidden: Sequence[str]) -> tuple[str, ...]:
    """--sharpness_flags / --correlate_flags: shell-split flags for the other binary, checked for form."""
    try:
        args = tuple(shlex.split(text or ""))
    except ValueError as e:
        raise UsageError(f"--{name}={text!r}: {e}") from None
    for a in args:
        if not a.startswith("--"):
            raise UsageError(f"--{name} holds {a!r}; give flags written --name=value")
        if a[2:].split("=", 1)[0] in forbidden:
            raise UsageError(f"--{name} holds {a!r}; bin/sweep sets that flag itself")
    return args


def config_from_flags(flag_values, env: Mapping[str, str]) -> SweepConfig:
    """Builds and checks the SweepConfig of a bin/sweep command line (every check before anything runs)."""
    fv = flag_values
    given = [f"--{n}" for n in (*GRID_FLAGS, "dry_run") if fv[n].present]
    if given:
        raise UsageError(f"{', '.join(given)} set for a sweep: the grid sets batch size, learning rate, seed and "
                         "run name per run; use --batch_sizes, --lrs, --seeds (and --dry_list to see the runs)")
    batch_sizes = _numbers("batch_sizes", fv.batch_sizes, int)
    lrs = _numbers("lrs", fv.lrs, float)
    seeds = _numbers("seeds", fv.seeds, int)
    try:
        gridlib.check_axes(batch_sizes, lrs, seeds)
        shard_index, num_shards = gridlib.resolve_shard(fv.shard_index, fv.num_shards, env)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # Sorted, so listing the same values in another order is the same grid (same shards, same sweep.json).
    batch_sizes, lrs, seeds = tuple(sorted(batch_sizes)), tuple(sorted(lrs)), tuple(sorted(seeds))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {n: getattr(fv, n) for n in names if n not in GRID_FLAGS}
    train = TrainConfig(**shared, lr=lrs[0], batch_size=batch_sizes[0], seed=seeds[0])
    grid = gridlib.Grid(batch_sizes, lrs, seeds, train.arch, train.dataset, train.momentum, train.weight_decay)
    for run_ in grid.runs():  # arch, dataset, ranges: every run is valid before any is started
        validate(dataclasses.replace(train, lr=run_.lr, batch_size=run_.batch_size, seed=run_.seed))
    if len({r.name for r in grid.runs()}) != grid.size:
        raise UsageError(f"--lrs={','.join(map(str, lrs))} holds rates equal to 10 significant digits: "
                         "their runs would share a folder")
    if fv.workers < 0:
        raise UsageError(f"--workers={fv.workers} must be >= 0 (0: one per GPU, else one per CPU core)")
    if fv.column_size < 0:
        raise UsageError(f"--column_size={fv.column_size} must be >= 0 (0: a whole column per process)")
    train_args = tuple(fv[n].serialize() for n in sorted(names - set(GRID_FLAGS) - set(WORKER_FLAGS))
                       if fv[n].present)
    train_args += tuple(fv[n].serialize() for n in ("intra_op_threads", "inter_op_threads") if fv[n].present)
    commands = {}
    for tool in ("train", "sharpness", "correlate"):
        try:
            commands[tool] = tuple(shlex.split(getattr(fv, f"{tool}_command") or ""))
        except ValueError as e:
            raise UsageError(f"--{tool}_command: {e}") from None
    return SweepConfig(
        grid=grid, train=train, train_args=train_args, workdir=Path(fv.workdir).absolute(), workers=fv.workers,
        shard_index=shard_index, num_shards=num_shards, vectorize=fv.vectorize, column_size=fv.column_size,
        sharpness=fv.sharpness,
        sharpness_args=_extra_flags("sharpness_flags", fv.sharpness_flags, ("ckpt", "interpolate", "out")),
        correlate=fv.correlate, correlate_now=fv.correlate_now,
        correlate_args=_extra_flags("correlate_flags", fv.correlate_flags, ("results",)),
        dry_list=fv.dry_list, train_command=commands["train"], sharpness_command=commands["sharpness"],
        correlate_command=commands["correlate"],
        user_set_threads=fv["intra_op_threads"].present or fv["inter_op_threads"].present)


def _main(argv: Sequence[str]) -> int:
    from lrbs_tf.flags import FLAGS

    return run(config_from_flags(FLAGS, os.environ))


def main() -> None:
    from lrbs_tf import flags

    flags.define_sweep_flags()
    run_app(_main)
