"""The training loop: constant-LR SGD in a custom tf.distribute loop, one epoch per checkpoint.

One loop trains a *column*: K >= 1 members that share the batch size, the initialisation and every batch,
each with its own learning rate, run folder, optimizer and batch-norm statistics. K = 1 is an ordinary run.
The members' steps are one computation, so a column costs one input pipeline and one dispatch per chunk of
steps instead of K; each member's arithmetic is exactly what it would be alone.

Read top to bottom: devices -> data -> members (model, optimizer, run folder, checkpoint) -> step
functions -> epochs -> results. Many steps run inside one tf.function call, so Python is not in the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from lrbs_tf import runfolder
from lrbs_tf.cli import UsageError
from lrbs_tf.data import Data, DataError, Pipelines, load_data
from lrbs_tf.distribute import (StrategyError, check_batch_size, configure_numerics, configure_threads,
                                distribute_train, is_chief, is_multi_worker, make_strategy)
from lrbs_tf import stacked
from lrbs_tf.models import build_model, count_trainable_params
from lrbs_tf.train import MIXED_PRECISION, TrainConfig, TrainingFailed


class _Preempted(BaseException):
    """SIGTERM (e.g. SLURM preemption): stop like Ctrl-C, leaving the runs resumable, not failed."""


def _raise_preempted(signum, frame):
    raise _Preempted()


def sgd(lr: float, momentum: float) -> keras.optimizers.Optimizer:
    """Keras SGD. With a constant LR its momentum form (v = m v - lr g; w += v) equals PyTorch's
    (b = m b + g; w -= lr b) with v = -lr b, so runs match the paper's PyTorch recipe."""
    return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)


def _architecture(cfg: TrainConfig, num_classes: int, input_shape: tuple) -> keras.Model:
    """The run's model, under whatever Keras dtype policy is current."""
    return build_model(cfg.arch, num_classes, input_shape, mlp_depth=cfg.mlp_depth, mlp_width=cfg.mlp_width,
                       mlp_batch_norm=cfg.mlp_batch_norm)


def build_member(cfg: TrainConfig, data: Data) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """The model under the run's dtype policy (float32 unless --mixed_precision), and its SGD; float16 adds
    Keras' dynamic loss scaling (a step whose scaled gradients overflow is skipped and the scale halved).
    The global policy is restored at once: it only matters while layers are created."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_PRECISION[cfg.mixed_precision])
    try:
        model = _architecture(cfg, data.num_classes, data.input_shape)
    finally:
        keras.config.set_dtype_policy(previous)
    optimizer = sgd(cfg.lr, cfg.momentum)
    if cfg.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return model, optimizer


def weight_norm_sq(variables) -> float:
    """Squared L2 norm of all trainable weights, in float64."""
    return float(sum(np.sum(np.square(np.asarray(v.numpy(), np.float64))) for v in variables))


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


@dataclasses.dataclass
class Member:
    """One run of the column: its configuration, state and record."""
    cfg: TrainConfig
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    epochs_done: tf.Variable
    manager: tf.train.CheckpointManager
    rows: list = dataclasses.field(default_factory=list)
    status: str | None = None          # set when the member ends: done / diverged
    diverged_epoch: int | None = None
    stopped_early: bool = False

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


def _setup_devices(cfg: TrainConfig) -> tf.distribute.Strategy:
    try:
        configure_threads(cfg.intra_op_threads, cfg.inter_op_threads)
    except RuntimeError:
        pass  # TF already running in this process (tests, notebooks): its thread pools stay as they are
    try:
        strategy = make_strategy(cfg.cpu_devices)
        check_batch_size(cfg.batch_size, strategy)
    except StrategyError as e:
        raise UsageError(str(e)) from None
    configure_numerics(cfg.deterministic, cfg.tf32)
    return strategy


def _load(cfg: TrainConfig) -> Data:
    try:
        data = load_data(cfg.dataset, cfg.data_dir, cfg.data_path)
    except DataError as e:
        raise UsageError(str(e)) from None
    if cfg.batch_size > data.num_train:
        raise UsageError(f"batch_size={cfg.batch_size} is larger than the training set ({data.num_train} "
                         f"examples of {cfg.dataset})")
    if cfg.arch != "mlp" and len(data.input_shape) != 3:
        raise UsageError(f"arch {cfg.arch!r} needs image inputs; {cfg.dataset} examples have shape "
                         f"{data.input_shape}")
    if cfg.augment and len(data.input_shape) != 3:
        raise UsageError(f"--augment crops and flips images; {cfg.dataset} examples have shape "
                         f"{data.input_shape} (use --noaugment)")
    return data


def _latest_epoch(run_dir: Path) -> int:
    """Epochs covered by the run folder's latest checkpoint (0 when it has none)."""
    latest = tf.train.latest_checkpoint(str(run_dir / runfolder.CKPT_DIR))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def train(cfgs: list[TrainConfig], settings: list[dict], provenance: Callable[[], dict]) -> list[dict]:
    """Trains (or resumes) the unfinished runs `cfgs`, which differ only in `lr` and `run_name`.

    Members can share batches only from a common epoch, so they are grouped by the epoch their latest
    checkpoint reached (after an interrupted column, all share one) and the groups are trained in turn.
    Under MultiWorkerMirroredStrategy only the chief writes run folders; the other workers restore from the
    chief's checkpoints (a shared file system) and write their copies to a scratch folder, deleted after.
    """
    strategy = _setup_devices(cfgs[0])
    data = _load(cfgs[0])
    scratch = None if is_chief(strategy) else tempfile.mkdtemp(prefix="lrbs_worker_")
    groups: dict[int, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(_latest_epoch(cfg.run_dir), []).append(i)
    results: list[dict | None] = [None] * len(cfgs)
    try:
        for _, indices in sorted(groups.items()):
            group = [cfgs[i] for i in indices]
            writes = [dataclasses.replace(c, workdir=scratch) for c in group] if scratch else group
            trained = _train_column(strategy, data, writes, [settings[i] for i in indices], provenance,
                                    restore_dirs=[c.run_dir for c in group])
            for i, result in zip(indices, trained):
                results[i] = result
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _train_column(strategy: tf.distribute.Strategy, data: Data, cfgs: list[TrainConfig],
                  settings: list[dict], provenance: Callable[[], dict], restore_dirs: list[Path]) -> list[dict]:
    cfg0 = cfgs[0]
    pipes = Pipelines(data, augment=cfg0.augment, eval_batch_size=cfg0.eval_batch_size)
    steps_per_epoch = data.num_train // cfg0.batch_size
    lrs = [c.lr for c in cfgs]

    # --- Members: model, optimizer, run folder, checkpoint -----------------------------------------------
    keras.backend.clear_session()
    members: list[Member] = []
    for cfg, flag_settings, restore_dir in zip(cfgs, settings, restore_dirs):
        keras.utils.set_random_seed(cfg.seed)  # every member starts from the same initial weights
        with strategy.scope():
            model, optimizer = build_member(cfg, data)
            optimizer.build(model.trainable_variables)
            epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        run_dir = cfg.run_dir
        if not (run_dir / runfolder.CONFIG).exists():
            runfolder.atomic_write_json(run_dir / runfolder.CONFIG, {
                **flag_settings, "num_params": count_trainable_params(model), "num_classes": data.num_classes,
                "input_shape": list(data.input_shape), "num_train": data.num_train,
                "num_test": int(len(data.y_test)), "steps_per_epoch": steps_per_epoch,
                "replicas": strategy.num_replicas_in_sync, "column_lrs": lrs,
                "normalization": {"mean": data.mean.tolist(), "std": data.std.tolist(), "scale": data.scale},
                **provenance()})
        if (run_dir / runfolder.RESULT).exists():  # a failed run being retried is unfinished again
            (run_dir / runfolder.RESULT).unlink()
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epochs_done=epochs_done)
        manager = tf.train.CheckpointManager(ckpt, str(run_dir / runfolder.CKPT_DIR),
                                             max_to_keep=cfg.checkpoints_to_keep)
        latest = tf.train.latest_checkpoint(str(restore_dir / runfolder.CKPT_DIR))
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            print(f"resuming {restore_dir} after epoch {int(epochs_done.numpy())}", flush=True)
        rows = runfolder.trim_metrics(run_dir, int(epochs_done.numpy()))
        members.append(Member(cfg, model, optimizer, epochs_done, manager, rows))
    start_epoch = int(members[0].epochs_done.numpy())
    tb = {m.cfg.run_name: tf.summary.create_file_writer(str(m.run_dir / runfolder.TENSORBOARD_DIR))
          for m in members}

    # --- Step functions over the active members ----------------------------------------------------------
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    replicas = strategy.num_replicas_in_sync
    multi_worker = is_multi_worker(strategy)

    def reduce_sum(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def stacked_engine(active: list[Member]) -> stacked.StackedColumn | None:
        """The stacked engine when asked for, or under 'auto' on a GPU (K > 1 MLPs on one device); else None
        (the graph column). On CPU the graph column is the faster one: TensorFlow runs the K members' 2-D
        matmuls side by side, and its CPU batched matmul reaches well under half their FLOP rate
        (BENCHMARKS.md: 2x per epoch at K = 20)."""
        usable = (len(active) > 1 and replicas == 1 and cfg0.mixed_precision == "off"
                  and stacked.supports(active[0].model))
        if cfg0.column_engine == "stacked" and not usable and len(active) > 1:
            raise UsageError("column_engine=stacked needs an mlp (Dense/BN/ReLU layers) in float32 on one device; "
                             f"arch={cfg0.arch}, mixed_precision={cfg0.mixed_precision}, {replicas} replica(s)")
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
        if not usable or cfg0.column_engine == "graph" or (cfg0.column_engine == "auto" and not on_gpu):
            return None
        return stacked.StackedColumn([m.model for m in active], [m.optimizer for m in active],
                                     [m.cfg.lr for m in active], cfg0.momentum, cfg0.weight_decay,
                                     cfg0.batch_size)

    def make_functions(active: list[Member]):
        """tf.functions stepping/evaluating exactly `active` (rebuilt when a member leaves the column)."""
        engine = stacked_engine(active)

        def forward_backward(member: Member, x, y):
            tvars = member.model.trainable_variables
            scaled = isinstance(member.optimizer, keras.optimizers.LossScaleOptimizer)
            with tf.GradientTape() as tape:
                logits = tf.cast(member.model(x, training=True), tf.float32)  # mixed precision: loss in float32
                per_example = loss_fn(y, logits)
                # Sum over the replica's examples / global batch: the optimizer's all-reduce sums replicas.
                loss = tf.reduce_sum(per_example) / member.cfg.batch_size
                if scaled:
                    loss = member.optimizer.scale_loss(loss)
            grads = tape.gradient(loss, tvars)
            if member.cfg.weight_decay:
                # PyTorch's coupled L2: grad += wd * w (split over replicas, whose gradients are summed), in the
                # loss-scaled units of the gradients when float16 scales them.
                decay = member.cfg.weight_decay / replicas
                if scaled:
                    decay = decay * member.optimizer.dynamic_scale
                grads = [g + decay * v for g, v in zip(grads, tvars)]
            hits = tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y)
            return grads, tf.reduce_sum(tf.cast(per_example, tf.float64)), tf.reduce_sum(tf.cast(hits, tf.int64))

        member_steps = [functools.partial(forward_backward, m) for m in active]
        if cfg0.jit_compile and replicas > 1:
            # Across replicas the optimizer's all-reduce stays outside XLA: compile each forward/backward.
            member_steps = [tf.function(f, jit_compile=True) for f in member_steps]

        def replica_step(x, y):
            if engine is not None:
                return engine.train_step(x, y)
            losses, hits = [], []
            for member, step in zip(active, member_steps):
                grads, loss_sum, correct = step(x, y)
                member.optimizer.apply_gradients(zip(grads, member.model.trainable_variables))
                losses.append(loss_sum)
                hits.append(correct)
            return tf.stack(losses), tf.stack(hits)

        if cfg0.jit_compile and replicas == 1:
            # One device: XLA compiles the whole step (forward, backward and the SGD update), as Model.fit does.
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_steps(iterator, num_steps, alive):
            """Up to `num_steps` steps. A member's sums stop at its first non-finite batch loss (that batch
            included), as its run alone would stop there; the chunk ends once no member is `alive`."""
            loss_sum = tf.zeros([len(active)], tf.float64)
            correct = tf.zeros([len(active)], tf.int64)
            steps = tf.zeros([len(active)], tf.int64)
            for _ in tf.range(num_steps):
                if not tf.reduce_any(alive):
                    break
                batch_loss, batch_correct = strategy.run(replica_step, args=next(iterator))
                batch_loss, batch_correct = reduce_sum(batch_loss), reduce_sum(batch_correct)
                loss_sum += tf.where(alive, batch_loss, 0.0)
                correct += tf.where(alive, batch_correct, tf.zeros_like(batch_correct))
                steps += tf.cast(alive, tf.int64)
                alive = tf.logical_and(alive, tf.math.is_finite(batch_loss))
            return loss_sum, correct, steps, alive

        def eval_members(x, y):
            if engine is not None:
                return engine.evaluate(x, y)
            losses, hits = [], []
            for member in active:
                logits = tf.cast(member.model(x, training=False), tf.float32)
                losses.append(tf.reduce_sum(tf.cast(loss_fn(y, logits), tf.float64)))
                hits.append(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y),
                                                  tf.int64)))
            return tf.stack(losses), tf.stack(hits)

        @tf.function
        def eval_step(x, y):
            if multi_worker:  # every worker evaluates the whole test set on its own copy: no collectives
                return eval_members(x, y)
            loss_sum, correct = strategy.run(eval_members, args=(x, y))
            return reduce_sum(loss_sum), reduce_sum(correct)

        return train_steps, eval_step, engine

    def evaluate(eval_step) -> tuple[np.ndarray, np.ndarray]:
        loss_sum, correct = 0.0, 0
        test = pipes.test() if multi_worker else strategy.experimental_distribute_dataset(pipes.test())
        for x, y in test:
            batch_loss, batch_correct = eval_step(x, y)
            loss_sum, correct = loss_sum + batch_loss.numpy(), correct + batch_correct.numpy()
        n = len(data.y_test)
        return loss_sum / n, correct / n

    show_progress = sys.stdout.isatty() if cfg0.progress is None else cfg0.progress
    chunk = cfg0.steps_per_call or (max(1, steps_per_epoch // 50) if show_progress else steps_per_epoch)

    # --- Epochs ------------------------------------------------------------------------------------------
    active = list(members)
    train_steps, eval_step, engine = make_functions(active)
    previous_handler = signal.signal(signal.SIGTERM, _raise_preempted)
    try:
        for epoch in range(start_epoch, cfg0.epochs):  # 0-based here, 1-based in metrics.jsonl
            if not active:
                break
            start = time.time()
            iterator = iter(distribute_train(
                strategy, lambda: pipes.train(cfg0.batch_size, cfg0.seed, epoch), cfg0.batch_size))
            bar = keras.utils.Progbar(steps_per_epoch, unit_name="step") if show_progress else None
            loss_sum, correct = np.zeros(len(active)), np.zeros(len(active), np.int64)
            seen, alive, steps = np.zeros(len(active), np.int64), tf.ones([len(active)], tf.bool), 0
            while steps < steps_per_epoch and bool(tf.reduce_any(alive)):
                todo = min(chunk, steps_per_epoch - steps)
                chunk_loss, chunk_correct, chunk_steps, alive = train_steps(
                    iterator, tf.constant(todo, tf.int32), alive)
                loss_sum, correct = loss_sum + chunk_loss.numpy(), correct + chunk_correct.numpy()
                seen += chunk_steps.numpy() * cfg0.batch_size
                steps += todo
                if bar is not None:
                    bar.update(steps, [("loss", float(np.nanmin(loss_sum / np.maximum(seen, 1))))])
            # Release the epoch's iterator (and its prefetch thread) now: left for the next epoch's iter() to
            # replace, its teardown overlapped that iter() and made it take ~90 ms instead of ~4 ms in about
            # half the epochs (measured; MLP at batch 128, 150 ms epochs).
            del iterator
            train_seconds = time.time() - start
            test_loss, test_accuracy = evaluate(eval_step)
            if engine is not None:
                engine.unstack()  # the member models hold the state that is recorded, checkpointed, saved
            seconds = time.time() - start
            leaving = []
            for k, member in enumerate(active):
                row = _record(member, epoch + 1, loss_sum[k] / seen[k], correct[k] / seen[k], float(test_loss[k]),
                              float(test_accuracy[k]), seconds, train_seconds, tb[member.cfg.run_name],
                              label=f"[lr {member.cfg.lr:g}] " if len(members) > 1 else "")
                if not all(_finite(row[key]) for key in ("train_loss", "test_loss", "weight_norm_sq")):
                    member.status, member.diverged_epoch = runfolder.STATUS_DIVERGED, epoch + 1
                    leaving.append(member)
                    continue
                member.epochs_done.assign(epoch + 1)
                member.manager.save(checkpoint_number=epoch + 1)
                if member.cfg.stop_at_train_loss and row["train_loss"] <= member.cfg.stop_at_train_loss:
                    member.status, member.stopped_early = runfolder.STATUS_DONE, True
                    leaving.append(member)
            for member in leaving:  # a member that ends leaves the column; the others go on
                _finish(member)
                active.remove(member)
            if leaving and active:
                train_steps, eval_step, engine = make_functions(active)
        for member in active:
            member.status = runfolder.STATUS_DONE
            _finish(member)
    except (KeyboardInterrupt, _Preempted):
        print(f"interrupted; run the same command again to resume {', '.join(str(m.run_dir) for m in active)} "
              "from the last checkpoint", file=sys.stderr, flush=True)
        raise KeyboardInterrupt from None
    except Exception as e:
        for member in active:
            runfolder.atomic_write_json(member.run_dir / runfolder.RESULT, {
                **_summary(member.rows), "status": runfolder.STATUS_FAILED, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()})
        raise TrainingFailed(f"{', '.join(str(m.run_dir) for m in active)} failed: {type(e).__name__}: {e}") \
            from e
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        for writer in tb.values():
            writer.flush()
    return [runfolder.read_result(m.run_dir) for m in members]


def _record(member: Member, epoch: int, train_loss: float, train_accuracy: float, test_loss: float,
            test_accuracy: float, seconds: float, train_seconds: float, writer, label: str) -> dict:
    """Appends one epoch's metrics line (and its TensorBoard scalars) for `member`."""
    if not math.isfinite(train_loss):  # a diverged model's test numbers are not measurements
        test_loss, test_accuracy = math.nan, math.nan
    norm_sq = weight_norm_sq(member.model.trainable_variables)
    row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
           "test_loss": test_loss, "test_accuracy": test_accuracy, "weight_norm_sq": norm_sq,
           "effective_lr": member.cfg.lr / norm_sq if norm_sq > 0 else math.nan, "seconds": seconds,
           "train_seconds": train_seconds}
    runfolder.append_jsonl(member.run_dir / runfolder.METRICS, row)
    member.rows.append(row)
    with writer.as_default(step=epoch):
        for key in runfolder.METRIC_KEYS[1:]:
            if _finite(row[key]):
                tf.summary.scalar(key, row[key])
    print(f"{label}epoch {epoch}/{member.cfg.epochs}  train_loss {train_loss:.4f}  train_acc "
          f"{train_accuracy:.4f}  test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({seconds:.1f}s)",
          flush=True)
    return row


def _finish(member: Member) -> None:
    """Writes the final model, then result.json (the run's 'finished' mark, so it comes last).

    model.keras is always a float32 model: after mixed-precision training it holds the trained (float32)
    weights in the float32 twin of the architecture, so readers such as bin/sharpness measure the float32
    function at the minimum found; config.json's mixed_precision says how it was trained."""
    model = member.model
    if member.cfg.mixed_precision != "off":
        twin = _architecture(member.cfg, int(model.output_shape[-1]), tuple(model.input_shape[1:]))
        twin.set_weights(model.get_weights())
        model = twin
    _save_model(model, member.run_dir / runfolder.MODEL)
    result = {**_summary(member.rows), "status": member.status}
    if member.diverged_epoch is not None:
        result["diverged_epoch"] = member.diverged_epoch
    if member.stopped_early:
        result["stopped_early"] = True
    runfolder.atomic_write_json(member.run_dir / runfolder.RESULT, result)
    print(f"{member.run_dir}: {member.status} after {result['epochs']} epochs, best test accuracy "
          f"{result['best_test_accuracy']} (epoch {result['best_epoch']})", flush=True)


def _summary(rows: list[dict]) -> dict:
    """result.json's numbers from the epoch records."""
    scored = [r for r in rows if _finite(r.get("test_accuracy"))]
    best = max(scored, key=lambda r: r["test_accuracy"]) if scored else None  # first epoch wins ties
    last = rows[-1] if rows else {}
    return {"epochs": len(rows),
            "best_test_accuracy": best["test_accuracy"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_train_loss": last.get("train_loss"),
            "final_train_accuracy": last.get("train_accuracy"),
            "final_test_accuracy": last.get("test_accuracy")}


def _save_model(model: keras.Model, path: Path) -> None:
    """model.keras, written to a temporary name first so a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)
