"""A sweep's grid: batch sizes x learning rates x seeds x any --grid axes, its work units, and its shards.

Pure Python (no TensorFlow, no disk): `bin/sweep` and the tests reason about the grid without starting a
training process.

Terms:
- a *point* is one value of each --grid axis (e.g. weight_decay=0.01, momentum=0.9); () without axes;
- a *run* is one (batch size, learning rate, seed, point) = one `bin/train` run folder;
- a *column* is the runs of one (batch size, seed, point): `bin/train --lr=a,b,c` trains them in one process;
- a *work unit* is what one worker process does: a column (vectorised) or a single run.

Sharding partitions *runs*, never folders twice: every run belongs to exactly one shard, computed from the
grid alone, so shards started with the same flags never write the same run folder, whether or not they
vectorise, and a resumed shard gets the same runs again. Shards are balanced by *work*, the optimizer steps
of their runs (`run_steps`: epochs x floor(num_train / batch_size) each, or --max_steps when a step budget
ends them sooner): a batch-16 run takes 20 times the steps of a batch-320 one, so equal numbers of runs (or
one batch size per shard) leave the array waiting for the smallest batch size's shard; at a step budget
every run takes the same steps (though a step of a larger batch costs more).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

from lrbs_tf.data.specs import known_train_size
from lrbs_tf.runs.config import TrainConfig, format_lr, name_part, run_steps as config_run_steps, step_cost

Point = tuple  # ((setting, value), ...): one value of each --grid axis, in the axes' order


@dataclasses.dataclass(frozen=True)
class Run:
    """One grid point and its run folder name."""
    batch_size: int
    lr: float
    seed: int
    name: str
    point: Point = ()


def point_label(point: Point) -> str:
    """A point as file-name-safe text, e.g. '-wd0.01-m0.9' (every axis, at its default too)."""
    return "".join(name_part(k, v) for k, v in point)


def flag_text(value: Any) -> str:
    """A --grid value as bin/train's flag parses it back exactly (floats by repr, bools true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """The runs one `bin/train` process trains: one column (same batch size, seed and point) or one run."""
    batch_size: int
    seed: int
    runs: tuple[Run, ...]

    @property
    def point(self) -> Point:
        return self.runs[0].point if self.runs else ()

    @property
    def lrs(self) -> tuple[float, ...]:
        return tuple(r.lr for r in self.runs)

    @property
    def label(self) -> str:
        """A file-name-safe name: the run's name for one run, else the column's, e.g. 'bs64-s0-lr0.01..0.2x20'
        (+ its point, e.g. '-wd0.01-m0.9')."""
        if len(self.runs) == 1:
            return self.runs[0].name
        lrs = self.lrs
        return (f"bs{self.batch_size}-s{self.seed}-lr{format_lr(lrs[0])}.."
                f"{format_lr(lrs[-1])}x{len(lrs)}{point_label(self.point)}")


def train_size(cfg: TrainConfig) -> int | None:
    """The training-set size of `cfg`'s data when known without loading it (None: an npz)."""
    return known_train_size(cfg.dataset)


def run_steps(cfg: TrainConfig) -> int:
    """The optimizer steps of one run of settings `cfg`: epochs x floor(num_train / batch_size) (training
    batches drop the remainder; each epoch's batch size under a --schedule), or max_steps if fewer;
    NOMINAL_TRAIN stands in for an unknown training set. A run stopped early by --stop_at_train_loss takes
    fewer; none more. Counted in minibatch gradients: an SVAG run's are step_cost(svag) times its SGD steps.
    The one cost shards are balanced by: a setting that changes a run's steps changes them here."""
    return config_run_steps(cfg.epochs, cfg.max_steps, train_size(cfg) or NOMINAL_TRAIN, cfg.batch_size,
                            cfg.schedule) * step_cost(cfg.svag)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The axes of a sweep: batch sizes x learning rates x seeds x the --grid `axes`, and `base`, the settings
    every run shares (its batch size, learning rate and seed go unused; each point replaces its axes')."""
    batch_sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    base: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    axes: tuple[tuple[str, tuple], ...] = ()  # ((setting, values), ...): the --grid axes, in the order given

    @property
    def points(self) -> list[Point]:
        """Every point of the --grid axes (their product, first axis slowest); [()] without axes."""
        return [tuple(zip((name for name, _ in self.axes), values))
                for values in itertools.product(*(values for _, values in self.axes))]

    @property
    def size(self) -> int:
        return len(self.batch_sizes) * len(self.lrs) * len(self.seeds) * len(self.points)

    def config(self, batch_size: int, lr: float, seed: int, point: Point = ()) -> TrainConfig:
        """The settings of one run (its run_name still None: its default name)."""
        return dataclasses.replace(self.base, batch_size=batch_size, lr=lr, seed=seed, run_name=None, **dict(point))

    @functools.cached_property
    def _memo(self) -> dict:
        """Runs and steps computed once per grid (shards are recut from them many times)."""
        return {}

    def steps(self, run: Run) -> int:
        """Optimizer steps of `run` (run_steps of its settings)."""
        key = ("steps", run.batch_size, run.lr, run.seed, run.point)
        if key not in self._memo:
            self._memo[key] = run_steps(self.config(run.batch_size, run.lr, run.seed, run.point))
        return self._memo[key]

    def run(self, batch_size: int, lr: float, seed: int, point: Point = ()) -> Run:
        key = ("run", batch_size, lr, seed, point)
        if key not in self._memo:
            name = self.config(batch_size, lr, seed, point).resolved().run_name
            self._memo[key] = Run(batch_size, lr, seed, name, point)
        return self._memo[key]

    def runs(self) -> list[Run]:
        """Every run in the canonical order of `column_order` (the order shards are cut from)."""
        return [self.run(bs, lr, seed, point) for seed, point, bs in self.column_order() for lr in self.lrs]

    def column_order(self) -> list[tuple[int, Point, int]]:
        """(seed, point, batch size) triples, batch sizes interleaved smallest, largest, 2nd smallest, ...

        A small-batch epoch takes many more steps than a large-batch one, so cutting contiguous blocks from
        this order gives shards a similar mix of slow and fast columns (not shard 0 = all the small batches).
        """
        ordered = sorted(self.batch_sizes)
        interleaved = []
        lo, hi = 0, len(ordered) - 1
        while lo <= hi:
            interleaved.append(ordered[lo])
            if hi != lo:
                interleaved.append(ordered[hi])
            lo, hi = lo + 1, hi - 1
        return [(seed, point, bs) for seed in self.seeds for point in self.points for bs in interleaved]


# Stands in for an unknown training-set size: shards only compare steps between batch sizes, and the floor
# in num_train // batch_size then changes the ratios by less than 1 / (NOMINAL_TRAIN / largest batch).
NOMINAL_TRAIN = 1_000_000


def check_axes(batch_sizes: Sequence[int], lrs: Sequence[float], seeds: Sequence[int]) -> None:
    """Raises ValueError naming the bad value: an empty axis, a repeated value, or one out of range."""
    for name, values in (("batch_sizes", batch_sizes), ("lrs", lrs), ("seeds", seeds)):
        if not values:
            raise ValueError(f"--{name} is empty: the grid has no runs")
        if len(set(values)) != len(values):
            repeated = sorted({v for v in values if list(values).count(v) > 1})
            raise ValueError(f"--{name} repeats {', '.join(map(str, repeated))}: each run would be trained once "
                             "under one folder anyway")
    for bs in batch_sizes:
        if bs <= 0:
            raise ValueError(f"--batch_sizes holds {bs}; batch sizes must be > 0")
    for lr in lrs:
        if not (lr > 0 and math.isfinite(lr)):  # also rejects NaN
            raise ValueError(f"--lrs holds {lr}; learning rates must be finite and > 0")
    for seed in seeds:
        if seed < 0:
            raise ValueError(f"--seeds holds {seed}; seeds must be >= 0")


def _pieces_per_column(costs: Sequence[int], sizes: Sequence[int], num_shards: int) -> list[int]:
    """How many pieces each column is cut into: about its share of the grid's steps times `num_shards`
    (so no piece is much more than one shard's share), then more for the costliest pieces until there are
    at least `num_shards` pieces (or every piece is one run), so that no shard is left without work."""
    total = sum(c * k for c, k in zip(costs, sizes))
    pieces = [min(k, max(1, -(-c * k * num_shards // total))) for c, k in zip(costs, sizes)]
    while sum(pieces) < num_shards:
        splittable = [i for i, (p, k) in enumerate(zip(pieces, sizes)) if p < k]
        if not splittable:
            break
        # Largest piece cost first (cross-multiplied to stay in integers); the earlier column on ties.
        i = max(splittable, key=lambda j: (costs[j] * sizes[j] * 10 ** 6 // pieces[j], -j))
        pieces[i] += 1
    return pieces


def shards(grid: Grid, num_shards: int) -> list[list[Run]]:
    """The grid cut into `num_shards` shards of about equal optimizer steps, each run in exactly one.

    Columns (one batch size and seed, learning rates ascending) are cut into contiguous pieces
    (_pieces_per_column), and the pieces are dealt costliest first, each to the shard with the fewest steps
    so far (lowest index on ties): longest-processing-time scheduling, within 4/3 of the best possible
    largest shard, and exact integer arithmetic, so every shard computes the same partition. A shard's runs
    come costliest column first, so its own workers start the longest column first.
    """
    if num_shards < 1:
        raise ValueError(f"--num_shards={num_shards} must be >= 1")
    columns = [[grid.run(bs, lr, seed, point) for lr in grid.lrs] for seed, point, bs in grid.column_order()]
    costs = [grid.steps(runs[0]) for runs in columns]  # a column's runs differ only in lr: equal steps
    counts = _pieces_per_column(costs, [len(runs) for runs in columns], num_shards)
    pieces = []  # (steps, column index, piece index, runs)
    for i, (runs, cost, count) in enumerate(zip(columns, costs, counts)):
        bounds = [j * len(runs) // count for j in range(count + 1)]
        pieces += [(cost * (b - a), i, j, runs[a:b]) for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    pieces.sort(key=lambda p: (-p[0], p[1], p[2]))
    loads = [(0, k) for k in range(num_shards)]  # a heap of (steps so far, shard index)
    out: list[list[tuple[int, int, int, Run]]] = [[] for _ in range(num_shards)]
    for steps, i, j, runs in pieces:
        load, k = heapq.heappop(loads)
        out[k] += [(-costs[i], i, j, r) for r in runs]
        heapq.heappush(loads, (load + steps, k))
    return [[r for *_, r in sorted(shard, key=lambda x: (x[0], x[1], x[2], x[3].lr))] for shard in out]


def shard_runs(grid: Grid, shard_index: int, num_shards: int) -> list[Run]:
    """The runs of shard `shard_index` of `num_shards` (see `shards`); shards beyond the grid's pieces are
    empty."""
    if num_shards < 1:
        raise ValueError(f"--num_shards={num_shards} must be >= 1")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} is out of range for --num_shards={num_shards} "
                         f"(valid: 0..{num_shards - 1})")
    return shards(grid, num_shards)[shard_index]


def shard_steps(grid: Grid, runs: Iterable[Run]) -> int:
    """The optimizer steps of `runs` (e.g. one shard's), as the partition counts them."""
    return sum(grid.steps(r) for r in runs)


def work_units(runs: Iterable[Run], vectorize: bool, column_size: int = 0) -> list[WorkUnit]:
    """Groups runs into work units: one per (batch size, seed, point) column when `vectorize`, else one per run.

    `column_size` > 0 cuts a column into pieces of at most that many learning rates (consecutive in
    ascending order): a column trains its K models at once, so K bounds its memory. Order is kept (first
    appearance), learning rates ascending inside a column.
    """
    if not vectorize:
        return [WorkUnit(r.batch_size, r.seed, (r,)) for r in runs]
    columns: dict[tuple[int, int, Point], list[Run]] = {}
    for r in runs:
        columns.setdefault((r.batch_size, r.seed, r.point), []).append(r)
    units = []
    for (bs, seed, _), rs in columns.items():
        rs = sorted(rs, key=lambda r: r.lr)
        size = column_size if column_size > 0 else len(rs)
        units += [WorkUnit(bs, seed, tuple(rs[i:i + size])) for i in range(0, len(rs), size)]
    return units


def resolve_shard(shard_index: int | None, num_shards: int | None,
                  env: Mapping[str, str]) -> tuple[int, int]:
    """(shard index, number of shards) from the flags, else from the cluster's environment, else (0, 1).

    SLURM job arrays: index = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN (so `--array=1-20` works too) and
    count = SLURM_ARRAY_TASK_COUNT; the array must be contiguous. Kubernetes Indexed Jobs set only
    JOB_COMPLETION_INDEX, so the number of shards (the Job's `completions`) must be given as a flag.
    Raises ValueError naming the variable when a value is not an integer or a count is missing.
    """
    def integer(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None

    if shard_index is None:
        if "SLURM_ARRAY_TASK_ID" in env:
            shard_index = integer("SLURM_ARRAY_TASK_ID") - (
                integer("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0)
            if num_shards is None:
                if "SLURM_ARRAY_TASK_COUNT" not in env:
                    raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; "
                                     "give --num_shards")
                num_shards = integer("SLURM_ARRAY_TASK_COUNT")
        elif "JOB_COMPLETION_INDEX" in env:
            shard_index = integer("JOB_COMPLETION_INDEX")
            if num_shards is None:
                raise ValueError(f"JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX']} (a Kubernetes Indexed "
                                 "Job) needs --num_shards=<the Job's completions>")
        else:
            shard_index = 0
    if num_shards is None:
        num_shards = integer("SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in env else 1
    return shard_index, num_shards
