"""The members of a learning-rate column and their run folders: model, optimizer, checkpoint, records.

`build_members` makes each member (its model under the run's dtype policy, its SGD, its config.json, its
checkpoint restored when the run resumes); `record_epoch` appends an epoch's metrics line and writes its
TensorBoard scalars (lrbs_tf.runs.tensorboard: the metrics and the result numbers so far, flushed every epoch);
`save_checkpoint` marks the epoch resumable; `finish` writes model.keras and result.json, and `fail` records
a failed run. bin/train (through lrbs_tf.training.loop) is the only writer of these files.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from lrbs_tf.core import durable
from lrbs_tf.data.loaders import Data
from lrbs_tf.models.builders import build_model, count_trainable_params
from lrbs_tf.runs import checkpoints, folder as runfolder, tensorboard as summaries
from lrbs_tf.runs.config import MIXED_PRECISION, TrainConfig, model_settings


def sgd(lr: float, momentum: float) -> keras.optimizers.Optimizer:
    """Keras SGD. With a constant LR its momentum form (v = m v - lr g; w += v) equals PyTorch's
    (b = m b + g; w -= lr b) with v = -lr b, so runs match the paper's PyTorch recipe."""
    return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)


def architecture(cfg: TrainConfig, num_classes: int, input_shape: tuple) -> keras.Model:
    """The run's model, under whatever Keras dtype policy is current."""
    return build_model(cfg.arch, num_classes, input_shape, **model_settings(cfg))


def build_member(cfg: TrainConfig, data: Data) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """The model under the run's dtype policy (float32 unless --mixed_precision), and its SGD; float16 adds
    Keras' dynamic loss scaling (a step whose scaled gradients overflow is skipped and the scale halved).
    The global policy is restored at once: it only matters while layers are created."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_PRECISION[cfg.mixed_precision])
    try:
        model = architecture(cfg, data.num_classes, data.input_shape)
    finally:
        keras.config.set_dtype_policy(previous)
    optimizer = sgd(cfg.step_lr, cfg.momentum)  # lr, or lr / svag for SVAG
    if cfg.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return model, optimizer


@dataclasses.dataclass
class Member:
    """One run of the column: its configuration, state and record."""
    cfg: TrainConfig                   # under a --schedule, the current epoch's (lrbs_tf.training.scheduling)
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    epochs_done: tf.Variable
    checkpoint: tf.train.Checkpoint    # model, optimizer, epochs_done
    writer: summaries.RunWriter        # its TensorBoard writer (tb/)
    rows: list = dataclasses.field(default_factory=list)
    status: str | None = None          # set when the member ends: done / diverged
    diverged_epoch: int | None = None
    stopped_early: bool = False
    stop_reason: str | None = None     # set when the member ends: one of runfolder.STOP_REASONS

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


def _write_config(cfg: TrainConfig, flag_settings: dict, model: keras.Model, data: Data, replicas: int,
                  column_lrs: list[float], provenance: Callable[[], dict]) -> None:
    """config.json: the flag settings, what follows from the model and the data, and provenance."""
    runfolder.atomic_write_json(cfg.run_dir / runfolder.CONFIG, {
        **flag_settings, "num_params": count_trainable_params(model), "num_classes": data.num_classes,
        "input_shape": list(data.input_shape), "num_train": data.num_train, "num_test": data.num_test,
        "steps_per_epoch": cfg.steps_per_epoch(data.num_train), "replicas": replicas, "column_lrs": column_lrs,
        "normalization": {"mean": data.mean.tolist(), "std": data.std.tolist(), "scale": data.scale},
        **provenance()})


def _build(strategy: tf.distribute.Strategy, data: Data, cfg: TrainConfig, restore_dir: Path,
           at_most: int) -> tuple[keras.Model, keras.optimizers.Optimizer, tf.Variable, tf.train.Checkpoint,
                                  checkpoints.Found]:
    """A member's model, SGD and epoch counter from its seed, with the newest checkpoint of `restore_dir` up
    to epoch `at_most` that restores cleanly (and that metrics.jsonl covers) restored into them. Writes
    nothing."""
    keras.utils.set_random_seed(cfg.seed)  # every member starts from the same initial weights
    with strategy.scope():
        model, optimizer = build_member(cfg, data)
        optimizer.build(model.trainable_variables)
        epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epochs_done=epochs_done)
    recorded = runfolder.recorded_epochs(runfolder.read_metrics(restore_dir))
    found = checkpoints.restore_newest(ckpt, restore_dir / runfolder.CKPT_DIR, recorded, at_most)
    return model, optimizer, epochs_done, ckpt, found


def build_members(strategy: tf.distribute.Strategy, data: Data, cfgs: Sequence[TrainConfig],
                  settings: Sequence[dict], provenance: Callable[[], dict],
                  restore_dirs: Sequence[Path]) -> list[Member]:
    """One Member per configuration, each from the same initial weights (its seed), its config.json written
    if the run is new, and the newest checkpoint in `restore_dirs` that restores cleanly restored if there
    is one (its metrics.jsonl trimmed to that checkpoint's epoch; newer checkpoints that do not restore are
    named on stderr, and retrained over). Members resume from the newest epoch they all can
    (checkpoints.resume_epochs), so a column cut between two members' checkpoint saves goes on as one.

    Every member is restored before anything is written, so when one has checkpoints of which none restores
    (checkpoints.CheckpointError) or the members would resume from different epochs, no folder changes."""
    keras.backend.clear_session()
    resume = checkpoints.resume_epochs(restore_dirs)  # the epoch loop.train grouped these members by
    built = [_build(strategy, data, cfg, restore_dir, epoch)
             for cfg, restore_dir, epoch in zip(cfgs, restore_dirs, resume)]
    epochs = {cfg.run_name: int(b[2].numpy()) for cfg, b in zip(cfgs, built)}
    if len(set(epochs.values())) > 1:  # only when a checkpoint that reads back whole held another model
        raise checkpoints.CheckpointError(f"the runs of one column would resume from different epochs "
                                          f"({', '.join(f'{k}: {v}' for k, v in epochs.items())}); nothing "
                                          "was changed")
    lrs = [c.lr for c in cfgs]
    members = []
    for cfg, flag_settings, restore_dir, (model, optimizer, epochs_done, ckpt, found) in zip(
            cfgs, settings, restore_dirs, built):
        if not (cfg.run_dir / runfolder.CONFIG).exists():
            _write_config(cfg, flag_settings, model, data, strategy.num_replicas_in_sync, lrs, provenance)
        if (cfg.run_dir / runfolder.RESULT).exists():  # a failed run being retried is unfinished again
            (cfg.run_dir / runfolder.RESULT).unlink()
        checkpoints.report(found, restore_dir)
        if found.prefix:
            print(f"resuming {restore_dir} after epoch {int(epochs_done.numpy())}", flush=True)
        rows = runfolder.trim_metrics(cfg.run_dir, int(epochs_done.numpy()))
        writer = summaries.RunWriter(cfg.run_dir / runfolder.TENSORBOARD_DIR, summaries.hparams_of(flag_settings),
                                     trial_id=cfg.run_name)
        members.append(Member(cfg, model, optimizer, epochs_done, ckpt, writer, rows))
    return members


def weight_norm_sq(variables) -> float:
    """Squared L2 norm of all trainable weights, in float64."""
    return float(sum(np.sum(np.square(np.asarray(v.numpy(), np.float64))) for v in variables))


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def record_epoch(member: Member, epoch: int, train_loss: float, train_accuracy: float, test_loss: float,
                 test_accuracy: float, seconds: float, train_seconds: float, label: str = "", *,
                 grad_norm_sq: float = math.nan, step: int = 0, examples: int = 0) -> dict:
    """Appends one epoch's metrics line for `member` and writes its TensorBoard scalars (at `step`); returns
    the row. `grad_norm_sq`: the epoch's mean squared norm of the minibatch loss gradient (loop.EpochStats);
    `step` and `examples`: the optimizer steps and training examples by the epoch's end, from the run's start
    (scheduling.epoch_plan counts them: batch sizes change under a schedule, an SVAG step reads two batches). The row records the epoch's `lr` and `batch_size`
    (member.cfg: the epoch's configuration under a schedule, lrbs_tf.training.scheduling)."""
    if not math.isfinite(train_loss):  # a diverged model's test numbers are not measurements
        test_loss, test_accuracy = math.nan, math.nan
    norm_sq = weight_norm_sq(member.model.trainable_variables)
    row = {"epoch": epoch, "step": step,
           "examples_seen": examples,
           "train_loss": train_loss, "train_accuracy": train_accuracy,
           "test_loss": test_loss, "test_accuracy": test_accuracy, "weight_norm_sq": norm_sq,
           "effective_lr": member.cfg.lr / norm_sq if norm_sq > 0 else math.nan, "grad_norm_sq": grad_norm_sq,
           "seconds": seconds, "train_seconds": train_seconds,
           **{key: getattr(member.cfg, key) for key in runfolder.SCHEDULE_METRIC_KEYS}}
    runfolder.append_jsonl(member.run_dir / runfolder.METRICS, row, sync=False)  # synced with its checkpoint
    member.rows.append(row)
    member.writer.epoch(epoch, row, summary(member.rows))
    print(f"{label}epoch {epoch}/{member.cfg.epochs}  step {step}  train_loss {train_loss:.4f}  train_acc "
          f"{train_accuracy:.4f}  test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({seconds:.1f}s)",
          flush=True)
    return row


def is_diverged(row: dict) -> bool:
    """An epoch whose training loss, test loss or weight norm is not finite ends the run as diverged."""
    return not all(finite(row[key]) for key in ("train_loss", "test_loss", "weight_norm_sq"))


def checkpoint_due(cfg: TrainConfig, epoch: int, last: bool, seconds_since: float) -> bool:
    """Whether epoch `epoch` (1-based) is checkpointed: the run's last epoch (`last`), an epoch kept for good
    (--checkpoint_epochs), or --checkpoint_seconds since the last checkpoint (0: every epoch). The loop asks
    once per column, so the members of a column keep their checkpoints at the same epochs and resume as one.
    Skipping checkpoints costs nothing in exactness: a resume retrains from the last one to the same
    metrics, since an epoch's batches are a function of (seed, epoch) alone."""
    return last or epoch in kept_epochs(cfg) or seconds_since >= cfg.checkpoint_seconds


def kept_epochs(cfg: TrainConfig) -> frozenset[int]:
    """Epochs whose checkpoints are kept for good: --checkpoint_epochs and the --checkpoint_every /
    --checkpoint_geometric spacings (checkpoints.spaced_epochs, over --epochs)."""
    return frozenset(cfg.checkpoint_epochs) | checkpoints.spaced_epochs(cfg.epochs, cfg.checkpoint_every,
                                                                         cfg.checkpoint_geometric)


def _sync_metrics(member: Member) -> None:
    path = member.run_dir / runfolder.METRICS
    if path.exists():
        durable.fsync_file(path)


def save_checkpoint(member: Member, epoch: int) -> None:
    """Marks `epoch` (1-based) resumable. The metrics lines it covers are synced to disk first (appends
    only flush them), so a crash can never leave a checkpoint whose epochs the log lacks; lines after the
    last checkpoint are retrained on resume anyway (runfolder.trim_metrics drops them)."""
    _sync_metrics(member)
    member.epochs_done.assign(epoch)
    checkpoints.write(member.checkpoint, member.run_dir / runfolder.CKPT_DIR, epoch, member.cfg.checkpoints_to_keep,
                      kept_epochs(member.cfg))


def summary(rows: list[dict]) -> dict:
    """result.json's numbers from the epoch records."""
    scored = [r for r in rows if finite(r.get("test_accuracy"))]
    best = max(scored, key=lambda r: r["test_accuracy"]) if scored else None  # first epoch wins ties
    last = rows[-1] if rows else {}
    return {"epochs": len(rows), "steps": last.get("step"),
            "best_test_accuracy": best["test_accuracy"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_train_loss": last.get("train_loss"),
            "final_train_accuracy": last.get("train_accuracy"),
            "final_test_accuracy": last.get("test_accuracy")}


def budget_reason(member: Member) -> str:
    """Why a member that trained to the end of its budget ended: its --max_steps, or its --epochs."""
    last = member.rows[-1] if member.rows else {}
    steps = member.cfg.step_budget  # --max_steps in this run's optimizer steps (x svag for SVAG)
    return runfolder.STOP_STEPS if steps is not None and last.get("step") == steps else runfolder.STOP_EPOCHS


def finish(member: Member) -> None:
    """Writes the final model, then result.json (the run's 'finished' mark, so it comes last).

    model.keras is always a float32 model: after mixed-precision training it holds the trained (float32)
    weights in the float32 twin of the architecture, so readers such as bin/sharpness measure the float32
    function at the minimum found; config.json's mixed_precision says how it was trained."""
    model = member.model
    if member.cfg.mixed_precision != "off":
        twin = architecture(member.cfg, int(model.output_shape[-1]), tuple(model.input_shape[1:]))
        twin.set_weights(model.get_weights())
        model = twin
    _save_model(model, member.run_dir / runfolder.MODEL)
    result = {**summary(member.rows), "status": member.status, "stop_reason": member.stop_reason}
    if member.diverged_epoch is not None:
        result["diverged_epoch"] = member.diverged_epoch
    if member.stopped_early:
        result["stopped_early"] = True
    _sync_metrics(member)  # the log result.json summarises is on disk first
    runfolder.atomic_write_json(member.run_dir / runfolder.RESULT, result)
    print(f"{member.run_dir}: {member.status} after {result['epochs']} epochs ({result['steps']} steps; "
          f"{member.stop_reason}), best test accuracy "
          f"{result['best_test_accuracy']} (epoch {result['best_epoch']})", flush=True)


def fail(members: Sequence[Member], error: BaseException) -> list[Path]:
    """Records each member as failed (result.json with the error and traceback): a rerun retries it.

    Returns the run folders where the record itself could not be written (the disk that failed training
    is often full): they stay unfinished, which a rerun resumes the same way."""
    unrecorded = []
    for member in members:
        try:
            runfolder.atomic_write_json(member.run_dir / runfolder.RESULT, {
                **summary(member.rows), "status": runfolder.STATUS_FAILED,
                "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
        except OSError:
            unrecorded.append(member.run_dir)
    return unrecorded


def describe_error(error: BaseException) -> str:
    """One line saying what ended training; a storage fault (a full disk, as Python or TensorFlow reports
    it) is named as such, with what to do, since nothing about the run itself is wrong."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    storage = (isinstance(error, OSError) and error.errno in durable.STORAGE_FAULTS
               or isinstance(error, tf.errors.OpError) and "No space left on device" in text)
    if storage:
        return (f"a storage fault ({type(error).__name__}: {first}); free space (or fix the disk), then run "
                "the same command again: it resumes from the last checkpoint, or starts over if none was written")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _save_model(model: keras.Model, path: Path) -> None:
    """model.keras, written to a temporary name first so a reader never sees half a file, and synced before
    and after the rename so a crash cannot leave a renamed but empty one."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        durable.replace_durably(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # Keras' zip writer names no file: a full disk says which one
            raise durable.named(e, path) from None
        raise
