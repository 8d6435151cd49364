"""bin/sweep's configuration: `SweepConfig` (everything one invocation does, as plain values) and how the
command line becomes one, every check made before anything runs.

The grid's axes come from --batch_sizes / --lrs / --seeds; every other bin/train flag the user set is
forwarded to each run, except those the grid sets per run (GRID_FLAGS) and those the sweep sets per worker
(WORKER_FLAGS). No TensorFlow, no disk: bad flags are refused in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Mapping, Sequence

from lrbs_tf.data.specs import known_train_size
from lrbs_tf.runs.config import GRID_SETTINGS, RuntimeFacts, TrainConfig, UsageError, validate
from lrbs_tf.sweep import grid as gridlib

# What --sharpness measures unless --sharpness_flags says otherwise: lambda_max (the top eigenvalue) and the
# trace, the cheap pair; the spectrum, eps- and average sharpness and the noise scale cost several times a
# short run's training each (issue 23: about 75 s per quick-study run, four times its training) and are
# asked for with --sharpness_flags='--quantities=...' (flags/quick.flags does so).
SHARPNESS_DEFAULT_FLAGS = ("--quantities=eigenvalues,trace", "--top_k=1")
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
    sharpness_weight: float = 1.0      # one measurement's estimated cost in trained runs (sharpness_weight())


def with_sharpness_defaults(args: Sequence[str]) -> tuple[str, ...]:
    """--sharpness_flags completed by SHARPNESS_DEFAULT_FLAGS for each flag it does not set."""
    given = {a[2:].split("=", 1)[0] for a in args}
    return tuple(d for d in SHARPNESS_DEFAULT_FLAGS if d[2:].split("=", 1)[0] not in given) + tuple(args)


def measurement_passes(quantities: Sequence[str], top_k: int, max_hvps: int, max_probes: int, slq_steps: int,
                       slq_runs: int, eps_steps: int, noise_draws: int) -> float:
    """The sweep's price of one bin/sharpness measurement, in gradient passes over its examples (a
    Hessian-vector product costs about two): Lanczos' iterations for the top eigenvalues, Hutchinson's
    probes for the trace, SLQ's steps, eps-sharpness' ascent steps, average sharpness' noisy losses, a pass
    for the gradient noise. Caps, not expectations: Lanczos and Hutchinson stop once converged, so the ETA
    leans long until a measurement has ended and its measured duration takes over (workers.Progress)."""
    cost = {"eigenvalues": 2 * min(max_hvps, 20 + 10 * top_k), "trace": 2 * max_probes,
            "spectrum": 2 * slq_steps * slq_runs, "eps_sharpness": eps_steps, "avg_sharpness": noise_draws / 3,
            "grad_cov": 2, "noise_scale": 2}
    return float(sum(cost.get(q, 2) for q in quantities))


def sharpness_weight(passes: float, num_examples: int, grid: gridlib.Grid) -> float:
    """One measurement's cost in trained runs: its passes over `num_examples` examples (0: the training set)
    against a run's mean examples trained over the grid (epochs x training set, or the step budget). 1.0
    where the training-set size is unknown (npz)."""
    if not grid.num_train:
        return 1.0
    examples = num_examples or grid.num_train
    trained = [grid.steps(bs) * bs for bs in grid.batch_sizes]
    return passes * examples / (sum(trained) / len(trained))


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
    fv = flag_values  # holds no --lr, --batch_size, --seed, --run_name, --dry_run (cli.flags.REFUSED)
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
    num_train = known_train_size(train.dataset)  # npz: unknown, so shards are cut from the flags alone
    grid = gridlib.Grid(batch_sizes, lrs, seeds, train.arch, train.dataset_label, train.momentum,
                        train.weight_decay, num_train=num_train, epochs=train.epochs, max_steps=train.max_steps,
                        svag=train.svag)
    facts = RuntimeFacts(num_train=num_train)  # a known dataset's size: batch sizes and step budgets checked now
    for run_ in grid.runs():  # arch, dataset, ranges: every run is valid before any is started
        validate(dataclasses.replace(train, lr=run_.lr, batch_size=run_.batch_size, seed=run_.seed), facts)
    if len({r.name for r in grid.runs()}) != grid.size:
        raise UsageError(f"--lrs={','.join(map(str, lrs))} holds rates equal to 10 significant digits: "
                         "their runs would share a folder")
    if fv.workers < 0:
        raise UsageError(f"--workers={fv.workers} must be >= 0 (0: one per GPU, else one per CPU core)")
    if fv.sharpness and "," in str(Path(fv.workdir).absolute()):
        raise UsageError(f"--workdir={fv.workdir} holds a comma: with --sharpness the sweep passes a column's run "
                         "folders to bin/sharpness as one comma list; choose a folder without one")
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
        sharpness_args=with_sharpness_defaults(
            _extra_flags("sharpness_flags", fv.sharpness_flags, ("ckpt", "interpolate", "out"))),
        correlate=fv.correlate, correlate_now=fv.correlate_now,
        correlate_args=_extra_flags("correlate_flags", fv.correlate_flags, ("results",)),
        dry_list=fv.dry_list, train_command=commands["train"], sharpness_command=commands["sharpness"],
        correlate_command=commands["correlate"],
        user_set_threads=fv["intra_op_threads"].present or fv["inter_op_threads"].present)
