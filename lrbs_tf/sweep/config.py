"""bin/sweep's configuration: `SweepConfig` (everything one invocation does, as plain values) and how the
command line becomes one, every check made before anything runs.

The grid's axes come from --batch_sizes / --lrs / --seeds and any number of `--grid=FLAG=V1,V2,...` over the
identity settings of runs/config.py (IDENTITY_SETTINGS but batch size, learning rate and seed), each value
parsed by bin/train's own flag parser and every combination validated as bin/train validates it; every other
bin/train flag the user set is forwarded to each run, except those the grid sets per run (GRID_FLAGS, the
--grid axes) and those the sweep sets per worker (WORKER_FLAGS). No TensorFlow, no disk: bad flags are
refused in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Mapping, Sequence

from lrbs_tf.core.pricing import measurement_passes  # noqa: F401  (bin/sweep's price of one measurement)
from lrbs_tf.runs.config import (
    ASKED_TAGS,
    EXECUTION_SETTINGS,
    GRID_SETTINGS,
    IDENTITY_SETTINGS,
    RuntimeFacts,
    TrainConfig,
    UsageError,
    validate,
)
from lrbs_tf.sweep import grid as gridlib

# What --sharpness measures unless --sharpness_flags says otherwise: lambda_max (the top eigenvalue) and the
# trace, the cheap pair; the spectrum, eps- and average sharpness and the noise scale cost several times a
# short run's training each (issue 23: about 75 s per quick-study run, four times its training) and are
# asked for with --sharpness_flags='--quantities=...' (flags/quick.flags does so).
SHARPNESS_DEFAULT_FLAGS = ("--quantities=eigenvalues,trace", "--top_k=1")
GRID_FLAGS = (*GRID_SETTINGS, "run_name")  # set per run by the grid, never by a flagfile
# bin/train flags the sweep sets itself per worker (threads) or always (no progress bar in a log file; the run
# names' settings, the user's with the --grid axes that names carry only when asked).
WORKER_FLAGS = ("intra_op_threads", "inter_op_threads", "progress", "workdir", "name_settings")
# What --grid may vary: a run's identity settings, but those --batch_sizes, --lrs and --seeds vary.
GRID_AXIS_SETTINGS = tuple(k for k in IDENTITY_SETTINGS if k not in GRID_SETTINGS)
_AXIS_OF = {"batch_size": "--batch_sizes", "lr": "--lrs", "seed": "--seeds"}


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


def sharpness_weight(passes: float, num_examples: int, grid: gridlib.Grid) -> float:
    """One measurement's cost in trained runs: its passes over `num_examples` examples (0: the training set)
    against a run's mean examples trained over the grid (epochs x training set, or the step budget). 1.0
    where a training-set size is unknown (npz)."""
    columns = [grid.config(bs, grid.lrs[0], seed, point) for seed, point, bs in grid.column_order()]
    sizes = [gridlib.train_size(c) for c in columns]
    if not all(sizes):
        return 1.0
    measured = [num_examples or size for size in sizes]
    trained = [gridlib.run_steps(c) * c.batch_size for c in columns]
    return passes * (sum(measured) / len(measured)) / (sum(trained) / len(trained))


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


def _grid_axis(text: str, fv) -> tuple[str, tuple]:
    """One --grid=FLAG=V1,V2,... as (setting, values parsed by bin/train's parser of that flag)."""
    name, sep, listed = text.partition("=")
    name = name.strip().removeprefix("--")
    if not sep or not name:
        raise UsageError(f"--grid={text!r}: write --grid=FLAG=V1,V2,..., e.g. --grid=weight_decay=0,0.0005")
    if name in _AXIS_OF:
        raise UsageError(f"--grid={text}: the grid's {name} values are given with {_AXIS_OF[name]}")
    if name in EXECUTION_SETTINGS:
        raise UsageError(f"--grid={text}: {name} is an execution setting (how a run is computed, not what it is), "
                         f"never a grid axis; give it once as --{name}=... for every run")
    if name not in GRID_AXIS_SETTINGS:
        raise UsageError(f"--grid={text}: bin/train has no setting {name!r}; a grid axis is one of "
                         f"{', '.join(GRID_AXIS_SETTINGS)}")
    if fv[name].present:
        raise UsageError(f"--grid={text} and --{name}={fv[name].value} both given: a setting is either one "
                         "value for every run or a grid axis")
    texts = [v.strip() for v in listed.split(",")] if listed.strip() else []
    if not texts:
        raise UsageError(f"--grid={text}: no values; write --grid={name}=V1,V2,...")
    values = []
    for v in texts:
        try:
            values.append(fv[name].parser.parse(v))
        except (ValueError, TypeError) as e:
            raise UsageError(f"--grid={text}: {v!r} is not a value of --{name} ({e})") from None
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise UsageError(f"--grid={text} repeats {', '.join(repeated)}: each run would be trained once under one "
                         "folder anyway")
    return name, tuple(values)


def grid_axes(texts, fv) -> tuple[tuple[str, tuple], ...]:
    """Every --grid axis, in the order given, each axis' values sorted (a grid listed in another order is
    the same grid: the same shards and sweep.json)."""
    axes: dict[str, tuple] = {}
    for text in texts or ():
        name, values = _grid_axis(text, fv)
        if name in axes:
            raise UsageError(f"--grid={name}=... is given twice; list all of its values in one --grid")
        axes[name] = tuple(sorted(values, key=lambda v: (v is None, str(type(v)), v)))
    return tuple(axes.items())


def _check_grid(grid: gridlib.Grid) -> None:
    """Every run as bin/train would check it before it starts (ranges, names, a known dataset's size), and
    one folder per run; UsageError naming the first bad one."""
    for seed, point, bs in grid.column_order():
        where = f" (at --grid {', '.join(f'{k}={gridlib.flag_text(v)}' for k, v in point)})" if point else ""
        cfg = grid.config(bs, grid.lrs[0], seed, point)
        for lr in grid.lrs:  # arch, dataset, ranges: every run is valid before any is started
            try:
                validate(dataclasses.replace(cfg, lr=lr), RuntimeFacts(num_train=gridlib.train_size(cfg)))
            except UsageError as e:
                raise UsageError(f"{e}{where}") from None
    seen: dict[str, gridlib.Run] = {}
    for r in grid.runs():
        if r.name in seen:
            other = seen[r.name]
            raise UsageError(f"runs {dict(other.point) | {'lr': other.lr}} and {dict(r.point) | {'lr': r.lr}} would "
                             f"share the run folder {r.name} (values equal to 10 significant digits?)")
        seen[r.name] = r


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
    axes = grid_axes(fv.grid, fv)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {n: getattr(fv, n) for n in names if n not in GRID_FLAGS}
    # The --grid axes that names carry only when asked join the user's --name_settings, so every run differs.
    asked = [*shared["name_settings"], *(a for a, _ in axes if a in ASKED_TAGS)]
    shared["name_settings"] = tuple(dict.fromkeys(asked))
    train = TrainConfig(**shared, lr=lrs[0], batch_size=batch_sizes[0], seed=seeds[0])
    grid = gridlib.Grid(batch_sizes, lrs, seeds, train, axes)
    _check_grid(grid)
    if fv.workers < 0:
        raise UsageError(f"--workers={fv.workers} must be >= 0 (0: one per GPU, else one per CPU core)")
    if fv.sharpness and "," in str(Path(fv.workdir).absolute()):
        raise UsageError(f"--workdir={fv.workdir} holds a comma: with --sharpness the sweep passes a column's run "
                         "folders to bin/sharpness as one comma list; choose a folder without one")
    if fv.column_size < 0:
        raise UsageError(f"--column_size={fv.column_size} must be >= 0 (0: a whole column per process)")
    train_args = tuple(fv[n].serialize() for n in sorted(names - set(GRID_FLAGS) - set(WORKER_FLAGS))
                       if fv[n].present)
    if train.name_settings:
        train_args += (f"--name_settings={','.join(train.name_settings)}",)
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
