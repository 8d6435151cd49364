"""The training loop: constant-LR SGD in a custom tf.distribute loop, one epoch per checkpoint.

One loop trains a *column*: K >= 1 members that share the batch size, the initialisation and every batch,
each with its own learning rate, run folder, optimizer and batch-norm statistics. K = 1 is an ordinary run.
The members' steps are one computation, so a column costs one input pipeline and one dispatch per chunk of
steps instead of K; each member's arithmetic is exactly what it would be alone.

Read top to bottom: devices and data (`train`) -> members (lrbs_tf.training.members: model, optimizer, run folder,
checkpoint) -> step functions (lrbs_tf.training.steps) -> epochs (`train_column`: `run_epoch` trains and evaluates
one epoch, `close_epoch` records it and decides who goes on) -> results. Many steps run inside one
tf.function call, so Python is not in the step.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from lrbs_tf.data.loaders import Data, DataError, load_data
from lrbs_tf.data.pipelines import Pipelines, make_pipelines
from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.runs.config import RuntimeFacts, TrainConfig, TrainingFailed, UsageError, svag_batches, validate
from lrbs_tf.training import members as mem, scheduling
from lrbs_tf.training.distribute import (
    StrategyError,
    configure_numerics,
    configure_threads,
    distribute_train,
    is_chief,
    is_multi_worker,
    make_strategy,
)
from lrbs_tf.training.steps import StepFunctions, make_step_functions, zero_sums


class _Preempted(BaseException):
    """SIGTERM (e.g. SLURM preemption): stop like Ctrl-C, leaving the runs resumable, not failed."""


def _raise_preempted(signum, frame):
    raise _Preempted()


def _setup_devices(cfg: TrainConfig) -> tf.distribute.Strategy:
    try:
        configure_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    except RuntimeError:
        pass  # TF already running in this process (tests, notebooks): its thread pools stay as they are
    try:
        strategy = make_strategy(cfg.cpu_devices)
    except StrategyError as e:
        raise UsageError(str(e)) from None
    configure_numerics(cfg.deterministic, cfg.tf32)
    return strategy


def _load(cfg: TrainConfig) -> Data:
    try:
        return load_data(cfg.dataset, cfg.data_dir, cfg.data_path, stream=True)
    except DataError as e:
        raise UsageError(str(e)) from None


def train(cfgs: Sequence[TrainConfig], settings: Sequence[dict], provenance: Callable[[], dict]) -> list[dict]:
    """Trains (or resumes) the unfinished runs `cfgs`, which differ only in `lr` and `run_name`.

    The devices and the data are set up first and every configuration is checked again against what they
    reveal (config.validate), before any run folder is written. Members can share batches only from a common
    epoch, so they are grouped by the epoch they resume from (checkpoints.resume_epochs: after an interrupted
    column, the newest one all members can restore) and the groups are trained in turn. Under
    MultiWorkerMirroredStrategy only the chief writes run folders; the other workers restore from the chief's
    checkpoints (a shared file system) and write their copies to a scratch folder, deleted after. Returns
    each run's result.json content.
    """
    strategy = _setup_devices(cfgs[0])
    data = _load(cfgs[0])
    facts = RuntimeFacts(data.input_shape, data.num_train, strategy.num_replicas_in_sync, data.num_classes)
    for cfg in cfgs:
        validate(cfg, facts)
    scratch = None if is_chief(strategy) else tempfile.mkdtemp(prefix="lrbs_worker_")
    groups: dict[int, list[int]] = {}
    for i, epoch in enumerate(checkpoints.resume_epochs([cfg.run_dir for cfg in cfgs])):
        groups.setdefault(epoch, []).append(i)
    results: list[dict | None] = [None] * len(cfgs)
    try:
        for _, indices in sorted(groups.items()):
            group = [cfgs[i] for i in indices]
            writes = [dataclasses.replace(c, workdir=scratch) for c in group] if scratch else group
            trained = train_column(strategy, data, writes, [settings[i] for i in indices], provenance,
                                   restore_dirs=[c.run_dir for c in group])
            for i, result in zip(indices, trained):
                results[i] = result
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


# How long one tf.function call of training steps should last when --steps_per_call is 0. Python's signal
# handlers run only between calls, so this is how long SIGTERM (a cluster's preemption) waits, instead of
# up to an epoch; a call's dispatch and synchronisation are a small share of a second (benchmarks/sweep.md).
SECONDS_PER_CALL = 1.0
# With a progress bar, a call lasts about this long instead, so the bar moves a few times a second: every
# call ends in a synchronisation, so capping calls at a share of an epoch (50 calls) cost a short epoch of a
# small model far more than its steps (issue 23: 75% more training time; benchmarks/progress.md).
PROGRESS_SECONDS_PER_CALL = 0.4


@dataclasses.dataclass
class CallPace:
    """Steps per tf.function call: `fixed` (--steps_per_call), else as many as took SECONDS_PER_CALL at the
    previous call's measured rate, at most `most` (0: no cap); the first call takes one step (it traces).
    Chunking never changes the numbers: train_chunk carries the epoch's sums across calls."""
    fixed: int = 0
    most: int = 0
    rate: float = 0.0          # steps per second of the last call; 0 before any
    seconds: float = SECONDS_PER_CALL  # how long a call should last (PROGRESS_SECONDS_PER_CALL with a bar)

    def steps(self, remaining: int) -> int:
        n = self.fixed or (max(1, int(self.rate * self.seconds)) if self.rate else 1)
        return min(n, self.most or n, remaining)

    def measured(self, steps: int, seconds: float) -> None:
        if seconds > 0:
            self.rate = steps / seconds


@dataclasses.dataclass
class EpochStats:
    """What one epoch of the active members measured; arrays are per member, in column order."""
    loss_sum: np.ndarray       # float64: sum of per-example training losses over the steps counted
    correct: np.ndarray        # int64: training hits over the same steps
    seen: np.ndarray           # int64: training examples counted (a member stops at its first non-finite loss)
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    seconds: float             # the whole epoch: training, evaluation, unstacking
    train_seconds: float       # its training steps alone
    # float64: the mean over the steps counted of the squared L2 norm of the minibatch loss gradient (weight
    # decay left out; steps with a non-finite gradient, which float16 loss scaling skips, left out too)
    grad_norm_sq: np.ndarray | None = None
    steps_before: int = 0      # optimizer steps of the epochs before this one (all whole: only a last is partial)
    examples_before: int = 0   # training examples of the epochs before this one (batch sizes vary under a schedule)


def eval_batches(strategy: tf.distribute.Strategy, pipes: Pipelines):
    """The test set as `evaluate` iterates it (distributed over the replicas); built once per column, since
    distributing a dataset anew each epoch was a visible share of a short epoch (benchmarks/sweep.md)."""
    return pipes.test() if is_multi_worker(strategy) else strategy.experimental_distribute_dataset(pipes.test())


def evaluate(strategy: tf.distribute.Strategy, pipes: Pipelines, eval_step: Callable,
             test=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean test loss and accuracy of each member over the whole test set (`test`: test_batches' dataset,
    when already built)."""
    loss_sum, correct = 0.0, 0
    for x, y in eval_batches(strategy, pipes) if test is None else test:
        batch_loss, batch_correct = eval_step(x, y)
        loss_sum, correct = loss_sum + batch_loss.numpy(), correct + batch_correct.numpy()
    n = pipes.data.num_test
    return loss_sum / n, correct / n


def train_batches(pipes: Pipelines, cfg: TrainConfig, epoch: int, batch_size: int) -> tf.data.Dataset:
    """Epoch `epoch`'s (0-based) training input, one element per optimizer step. SGD: the epoch's shuffled
    batches (x, y). SVAG (svag = l > 1): 2l shuffled passes of the data, each seeded as its own epoch
    (epoch * 2l + j), cut into consecutive pairs of batches (x1, y1, x2, y2): l x floor(n / B) steps, so an
    epoch reads 2l epochs' worth of examples. The two batches of a pair are disjoint (drawn without
    replacement, as SGD's consecutive batches are), which is independence up to a covariance of order B / n.
    `batch_size`: the epoch's (scheduling.epoch_plan: --batch_size, or a schedule's)."""
    if cfg.svag == 1:
        return pipes.train(batch_size, cfg.seed, epoch)
    passes = 2 * cfg.svag
    stream = pipes.train(batch_size, cfg.seed, epoch * passes)
    for j in range(1, passes):
        stream = stream.concatenate(pipes.train(batch_size, cfg.seed, epoch * passes + j))
    pairs = stream.batch(2, drop_remainder=True)  # 2l x floor(n / B) batches: an even count
    return pairs.map(lambda x, y: (x[0], y[0], x[1], y[1])).prefetch(tf.data.AUTOTUNE)


def run_epoch(strategy: tf.distribute.Strategy, pipes: Pipelines, functions: StepFunctions, cfg: TrainConfig,
              epoch: int, num_members: int, chunk: int | CallPace, show_progress: bool, test=None) -> EpochStats:
    """Trains the active members through epoch `epoch` (0-based) in calls of `chunk` steps (a number, or a
    CallPace sizing each call), then evaluates them (on `test`, test_batches' dataset, when given) and
    copies the engine's state back into the models. The epoch is whole unless --max_steps ends the run in
    it: then its first steps (its batches are the same whatever the budget)."""
    start = time.time()
    pace = chunk if isinstance(chunk, CallPace) else CallPace(fixed=chunk)
    batch_size, steps_per_epoch, steps_before, examples_before = scheduling.epoch_plan(cfg, pipes.data.num_train,
                                                                                        epoch)
    iterator = iter(distribute_train(strategy, lambda: train_batches(pipes, cfg, epoch, batch_size), batch_size))
    # The bar draws from the sums each call returns anyway, at most every PROGRESS_SECONDS_PER_CALL.
    bar = (keras.utils.Progbar(steps_per_epoch, unit_name="step", interval=PROGRESS_SECONDS_PER_CALL)
           if show_progress else None)
    sums, alive, steps = zero_sums(num_members), tf.ones([num_members], tf.bool), 0
    while steps < steps_per_epoch and bool(tf.reduce_any(alive)):
        todo = pace.steps(steps_per_epoch - steps)
        called = time.perf_counter()
        *sums, alive = functions.train_steps(iterator, tf.constant(todo, tf.int32), alive, *sums)
        loss_sum, correct = sums[0].numpy(), sums[1].numpy()
        seen = sums[2].numpy() * (batch_size * svag_batches(cfg.svag))  # examples: SVAG steps read two batches
        pace.measured(todo, time.perf_counter() - called)
        steps += todo
        if bar is not None:
            bar.update(steps, [("loss", float(np.nanmin(loss_sum / np.maximum(seen, 1))))])
    # Release the epoch's iterator (and its prefetch thread) now: left for the next epoch's iter() to replace,
    # its teardown overlapped that iter() and slowed it many times over in about half the epochs
    # (BENCHMARKS.md, the input pipeline).
    del iterator
    train_seconds = time.time() - start
    test_loss, test_accuracy = evaluate(strategy, pipes, functions.eval_step, test)
    functions.engine.unstack()  # the member models hold the state that is recorded, checkpointed, saved
    with np.errstate(invalid="ignore", divide="ignore"):
        grad_norm_sq = np.where(sums[4].numpy() > 0, sums[3].numpy() / sums[4].numpy(), np.nan)
    return EpochStats(loss_sum, correct, seen, test_loss, test_accuracy, time.time() - start, train_seconds,
                      grad_norm_sq, steps_before=steps_before, examples_before=examples_before)


def close_epoch(active: Sequence[mem.Member], epoch: int, stats: EpochStats, labelled: bool,
                checkpoint: bool = True) -> list[mem.Member]:
    """Records epoch `epoch` (1-based) of every active member, checkpoints them when `checkpoint` (the loop's
    members.checkpoint_due), and returns the members that end with it: diverged (a non-finite loss or weight
    norm; not checkpointed) or done early (--stop_at_train_loss reached; always checkpointed)."""
    leaving = []
    for k, member in enumerate(active):
        row = mem.record_epoch(member, epoch, stats.loss_sum[k] / stats.seen[k], stats.correct[k] / stats.seen[k],
                               float(stats.test_loss[k]), float(stats.test_accuracy[k]), stats.seconds,
                               stats.train_seconds, label=f"[lr {member.cfg.lr:g}] " if labelled else "",
                               grad_norm_sq=math.nan if stats.grad_norm_sq is None else float(stats.grad_norm_sq[k]),
                               step=stats.steps_before + int(stats.seen[k]) // (
                                   member.cfg.batch_size * svag_batches(member.cfg.svag)),
                               examples=stats.examples_before + int(stats.seen[k]))
        if mem.is_diverged(row):
            member.status, member.diverged_epoch = runfolder.STATUS_DIVERGED, epoch
            member.stop_reason = runfolder.STOP_DIVERGED
            leaving.append(member)
            continue
        stops = bool(member.cfg.stop_at_train_loss) and row["train_loss"] <= member.cfg.stop_at_train_loss
        if checkpoint or stops:
            mem.save_checkpoint(member, epoch)
        if stops:
            member.status, member.stopped_early = runfolder.STATUS_DONE, True
            member.stop_reason = runfolder.STOP_LOSS
            leaving.append(member)
    return leaving


def resume_note(run_dirs: Sequence[str], saved_epoch: int) -> str:
    """What running the same command again does after an interruption: resume from the newest checkpoint,
    or, when none was written yet, start the runs over."""
    if saved_epoch:
        return (f"run the same command again to resume {', '.join(run_dirs)} from its checkpoint of epoch "
                f"{saved_epoch}")
    return f"no checkpoint was written yet: run the same command again to start {', '.join(run_dirs)} over"


def train_column(strategy: tf.distribute.Strategy, data: Data, cfgs: Sequence[TrainConfig],
                 settings: Sequence[dict], provenance: Callable[[], dict], restore_dirs: Sequence[Path]) -> list[dict]:
    """Trains the runs `cfgs` (one column, all resumed from the same epoch) to their end; returns each run's
    result.json content. An interruption (Ctrl-C, SIGTERM) leaves every run resumable; any other error
    records the active runs as failed and raises TrainingFailed."""
    cfg = cfgs[0]
    pipes = make_pipelines(data, augment=cfg.augment, eval_batch_size=cfg.eval_batch_size)
    members = mem.build_members(strategy, data, cfgs, settings, provenance, restore_dirs)
    start_epoch = int(members[0].epochs_done.numpy())
    show_progress = sys.stdout.isatty() if cfg.progress is None else cfg.progress
    steps_per_epoch = cfg.steps_per_epoch(data.num_train)  # x svag for SVAG
    # --epochs, or fewer under --max_steps (the last then partial); a schedule's epochs differ in steps
    epochs = cfg.budget_epochs(cfg.epoch_step_counts(data.num_train))
    if is_multi_worker(strategy):
        # Every worker must make the same calls (each step all-reduces across them): a timed pace would differ
        # between workers and deadlock them, so a fixed 2% of an epoch per call (the sums do not depend on it).
        pace = CallPace(fixed=cfg.steps_per_call or max(1, steps_per_epoch // 50))
    else:
        pace = CallPace(fixed=cfg.steps_per_call,
                        seconds=PROGRESS_SECONDS_PER_CALL if show_progress else SECONDS_PER_CALL)
    active = list(members)
    bases = {m.cfg.run_name: m.cfg for m in members}  # each run's identity; members carry the epoch's config
    if cfg.schedule:
        scheduling.begin(active, bases, start_epoch)
    functions = make_step_functions(strategy, active)
    test = eval_batches(strategy, pipes)
    previous_handler = signal.signal(signal.SIGTERM, _raise_preempted)
    saved_at = time.monotonic()  # when the column's members were last checkpointed (or restored)
    saved_epoch = start_epoch    # the epoch of the newest checkpoint (restored or written); 0: none yet
    try:
        for epoch in range(start_epoch, epochs):  # 0-based here, 1-based in metrics.jsonl
            if not active:
                break
            if cfg.schedule and scheduling.enter_epoch(active, bases, epoch):
                functions = make_step_functions(strategy, active)  # traced for the epoch's lr and batch size
            stats = run_epoch(strategy, pipes, functions, cfg, epoch, len(active), pace, show_progress, test)
            # A clock would differ between workers, which must all save together: multi-worker saves every epoch.
            due = is_multi_worker(strategy) or mem.checkpoint_due(cfg, epoch + 1, epoch + 1 == epochs,
                                                                  time.monotonic() - saved_at)
            leaving = close_epoch(active, epoch + 1, stats, labelled=len(members) > 1, checkpoint=due)
            if due:
                saved_at, saved_epoch = time.monotonic(), epoch + 1
            for member in leaving:  # a member that ends leaves the column; the others go on
                mem.finish(member)
                active.remove(member)
            if leaving and active:
                functions = make_step_functions(strategy, active)
        for member in active:
            member.status, member.stop_reason = runfolder.STATUS_DONE, mem.budget_reason(member)
            mem.finish(member)
    except (KeyboardInterrupt, _Preempted):
        print(f"interrupted; {resume_note([str(m.run_dir) for m in active], saved_epoch)}", file=sys.stderr,
              flush=True)
        raise KeyboardInterrupt from None
    except Exception as e:
        unrecorded = mem.fail(active, e)
        note = f" (not recorded in {', '.join(map(str, unrecorded))}: the same fault)" if unrecorded else ""
        raise TrainingFailed(f"{', '.join(str(m.run_dir) for m in active)} failed: {mem.describe_error(e)}"
                             f"{note}") from e
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        for member in members:
            member.writer.flush()
    return [runfolder.read_result(m.run_dir).raw for m in members]
