"""The training loop: constant-LR SGD in a custom tf.distribute loop, one epoch per checkpoint.

Read top to bottom: devices -> data -> model and optimizer -> run folder and checkpoint -> step functions
-> epochs -> result. Many steps run inside one tf.function call, so Python is not in the step.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from lrbs_tf import runfolder
from lrbs_tf.cli import UsageError
from lrbs_tf.data import DataError, Pipelines, load_data
from lrbs_tf.distribute import (StrategyError, check_batch_size, configure_numerics, configure_threads,
                                 make_strategy)
from lrbs_tf.models import build_model, count_trainable_params
from lrbs_tf.train import TrainConfig, TrainingFailed


class _Preempted(BaseException):
    """SIGTERM (e.g. SLURM preemption): stop like Ctrl-C, leaving the run resumable, not failed."""


def _raise_preempted(signum, frame):
    raise _Preempted()


def sgd(lr: float, momentum: float) -> keras.optimizers.Optimizer:
    """Keras SGD. With a constant LR its momentum form (v = m v - lr g; w += v) equals PyTorch's
    (b = m b + g; w -= lr b) with v = -lr b, so runs match the paper's PyTorch recipe."""
    return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)


def weight_norm_sq(variables) -> float:
    """Squared L2 norm of all trainable weights, in float64."""
    return float(sum(np.sum(np.square(np.asarray(v.numpy(), np.float64))) for v in variables))


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def train(cfg: TrainConfig, config_settings: dict, provenance: Callable[[], dict]) -> dict:
    """Runs (or resumes) the run `cfg` describes; see lrbs_tf.train.run."""
    # --- Devices and numerics ----------------------------------------------------------------------------
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

    # --- Data --------------------------------------------------------------------------------------------
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
    pipes = Pipelines(data, augment=cfg.augment, eval_batch_size=cfg.eval_batch_size)
    steps_per_epoch = data.num_train // cfg.batch_size

    # --- Model and optimizer -----------------------------------------------------------------------------
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg.arch, data.num_classes, data.input_shape, mlp_depth=cfg.mlp_depth,
                            mlp_width=cfg.mlp_width, mlp_batch_norm=cfg.mlp_batch_norm)
        optimizer = sgd(cfg.lr, cfg.momentum)
        optimizer.build(model.trainable_variables)
        epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    tvars = model.trainable_variables

    # --- Run folder and checkpoint -----------------------------------------------------------------------
    run_dir = cfg.run_dir
    config_path = run_dir / runfolder.CONFIG
    if not config_path.exists():
        config = {**config_settings,
                  "num_params": count_trainable_params(model), "num_classes": data.num_classes,
                  "input_shape": list(data.input_shape), "num_train": data.num_train,
                  "num_test": int(len(data.y_test)), "steps_per_epoch": steps_per_epoch,
                  "replicas": strategy.num_replicas_in_sync,
                  "normalization": {"mean": data.mean.tolist(), "std": data.std.tolist(), "scale": data.scale},
                  **provenance()}
        runfolder.atomic_write_json(config_path, config)
    result_path = run_dir / runfolder.RESULT
    if result_path.exists():  # a failed run being retried: it is unfinished again until it ends
        result_path.unlink()
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epochs_done=epochs_done)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / runfolder.CKPT_DIR),
                                         max_to_keep=cfg.checkpoints_to_keep)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resuming {run_dir} after epoch {int(epochs_done.numpy())}", flush=True)
    start_epoch = int(epochs_done.numpy())
    rows = runfolder.trim_metrics(run_dir, start_epoch)
    tb = tf.summary.create_file_writer(str(run_dir / runfolder.TENSORBOARD_DIR))

    # --- Step functions ----------------------------------------------------------------------------------
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    replicas = strategy.num_replicas_in_sync

    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = loss_fn(y, logits)
            # Sum over the replica's examples / global batch: the optimizer's all-reduce sums replicas.
            loss = tf.reduce_sum(per_example) / cfg.batch_size
        grads = tape.gradient(loss, tvars)
        if cfg.weight_decay:
            # PyTorch's coupled L2: grad += wd * w (split over replicas, whose gradients are summed).
            grads = [g + (cfg.weight_decay / replicas) * v for g, v in zip(grads, tvars)]
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.int64))
        return grads, tf.reduce_sum(tf.cast(per_example, tf.float64)), correct

    if cfg.jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(x, y):
        grads, loss_sum, correct = forward_backward(x, y)
        optimizer.apply_gradients(zip(grads, tvars))
        return loss_sum, correct

    def reduce_sum(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    @tf.function
    def train_steps(iterator, num_steps):
        """Runs up to `num_steps` steps; stops early at the first non-finite batch loss."""
        loss_sum = tf.constant(0.0, tf.float64)
        correct = tf.constant(0, tf.int64)
        steps = tf.constant(0, tf.int32)
        for _ in tf.range(num_steps):
            batch_loss, batch_correct = strategy.run(replica_step, args=next(iterator))
            batch_loss = reduce_sum(batch_loss)
            loss_sum += batch_loss
            correct += reduce_sum(batch_correct)
            steps += 1
            if not tf.math.is_finite(batch_loss):
                break
        return loss_sum, correct, steps

    @tf.function
    def eval_step(x, y):
        def fn(x, y):
            logits = model(x, training=False)
            hits = tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y)
            return (tf.reduce_sum(tf.cast(loss_fn(y, logits), tf.float64)),
                    tf.reduce_sum(tf.cast(hits, tf.int64)))
        loss_sum, correct = strategy.run(fn, args=(x, y))
        return reduce_sum(loss_sum), reduce_sum(correct)

    def evaluate() -> tuple[float, float]:
        loss_sum, correct = 0.0, 0
        for x, y in strategy.experimental_distribute_dataset(pipes.test()):
            batch_loss, batch_correct = eval_step(x, y)
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
        n = len(data.y_test)
        return loss_sum / n, correct / n

    show_progress = sys.stdout.isatty() if cfg.progress is None else cfg.progress
    chunk = cfg.steps_per_call or (max(1, steps_per_epoch // 50) if show_progress else steps_per_epoch)

    # --- Epochs ------------------------------------------------------------------------------------------
    status, diverged_epoch, stopped_early = runfolder.STATUS_DONE, None, False
    previous_handler = signal.signal(signal.SIGTERM, _raise_preempted)
    try:
        for epoch in range(start_epoch, cfg.epochs):  # 0-based here, 1-based in metrics.jsonl
            start = time.time()
            iterator = iter(strategy.experimental_distribute_dataset(
                pipes.train(cfg.batch_size, cfg.seed, epoch)))
            bar = keras.utils.Progbar(steps_per_epoch, unit_name="step") if show_progress else None
            loss_sum, correct, steps = 0.0, 0, 0
            while steps < steps_per_epoch:
                todo = min(chunk, steps_per_epoch - steps)
                chunk_loss, chunk_correct, chunk_steps = train_steps(iterator, tf.constant(todo, tf.int32))
                loss_sum, correct, steps = loss_sum + float(chunk_loss), correct + int(chunk_correct), \
                    steps + int(chunk_steps)
                if bar is not None:
                    bar.update(steps, [("loss", loss_sum / (steps * cfg.batch_size))])
                if int(chunk_steps) < todo or not math.isfinite(float(chunk_loss)):
                    break
            seen = steps * cfg.batch_size
            train_loss, train_accuracy = loss_sum / seen, correct / seen
            test_loss, test_accuracy = evaluate() if math.isfinite(train_loss) else (math.nan, math.nan)
            norm_sq = weight_norm_sq(tvars)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                   "test_loss": test_loss, "test_accuracy": test_accuracy, "weight_norm_sq": norm_sq,
                   "effective_lr": cfg.lr / norm_sq if norm_sq > 0 else math.nan,
                   "seconds": time.time() - start}
            runfolder.append_jsonl(run_dir / runfolder.METRICS, row)
            rows.append(row)
            with tb.as_default(step=epoch + 1):
                for key in runfolder.METRIC_KEYS[1:]:
                    if _finite(row[key]):
                        tf.summary.scalar(key, row[key])
            print(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {train_loss:.4f}  train_acc {train_accuracy:.4f}"
                  f"  test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({row['seconds']:.1f}s)", flush=True)
            if not all(_finite(row[k]) for k in ("train_loss", "test_loss", "weight_norm_sq")):
                status, diverged_epoch = runfolder.STATUS_DIVERGED, epoch + 1
                break
            epochs_done.assign(epoch + 1)
            manager.save(checkpoint_number=epoch + 1)
            if cfg.stop_at_train_loss and train_loss <= cfg.stop_at_train_loss:
                stopped_early = True
                break
        tb.flush()
        _save_model(model, run_dir / runfolder.MODEL)
    except (KeyboardInterrupt, _Preempted):
        print(f"interrupted; run the same command again to resume {run_dir} from its last checkpoint",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt from None
    except Exception as e:
        runfolder.atomic_write_json(result_path, {**_summary(rows), "status": runfolder.STATUS_FAILED,
                                                  "error": f"{type(e).__name__}: {e}",
                                                  "traceback": traceback.format_exc()})
        raise TrainingFailed(f"{run_dir} failed: {type(e).__name__}: {e}") from e
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    result = {**_summary(rows), "status": status}
    if diverged_epoch is not None:
        result["diverged_epoch"] = diverged_epoch
    if stopped_early:
        result["stopped_early"] = True
    runfolder.atomic_write_json(result_path, result)
    print(f"{run_dir}: {status} after {result['epochs']} epochs, best test accuracy "
          f"{result['best_test_accuracy']} (epoch {result['best_epoch']})", flush=True)
    return result


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
