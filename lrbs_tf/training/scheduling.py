"""A run's learning-rate and batch-size schedule (--schedule; lrbs_tf.runs.schedule) in the training loop.

Under a schedule each member carries the configuration in force in the current epoch
(`TrainConfig.at_epoch`: its lr and batch_size as the schedule has them then), so the step functions, the
stacked engine and the records read the epoch's values where they read `member.cfg`. A column's members
share the schedule (they differ only in lr), so a learning-rate factor multiplies every member's rate and a
batch-size change applies to their shared batches. Without a schedule nothing here runs: the constant-LR
protocol's arithmetic is untouched.

Momentum: Keras SGD keeps v = m v - lr g (w += v), PyTorch and TensorFlow's MomentumOptimizer (Smith et al.
2018) b = m b + g (w -= lr b); they agree while v = -lr b. When the learning rate changes from lr to lr',
v is multiplied by lr'/lr, so the runs stay the PyTorch recipe across the change (lrbs_tf.training.members.sgd).

Resume is exact: a checkpoint is written at an epoch's end, before the next epoch's change is applied, and
`begin` puts the members in the state of the epoch before the one they resume at, so `enter_epoch` applies
the same change (and the same velocity rescaling) an uninterrupted run applied there.
"""

from __future__ import annotations

from typing import Sequence

import keras

from lrbs_tf.runs.config import TrainConfig, svag_batches
from lrbs_tf.training.members import Member


def _sgd(member: Member) -> keras.optimizers.Optimizer:
    optimizer = member.optimizer
    return optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer


def _apply(member: Member, cfg: TrainConfig, rescale_velocity: bool) -> None:
    """Gives `member` the configuration `cfg` (one epoch's), setting its optimizer's learning rate and, when
    `rescale_velocity`, multiplying its momentum buffers by new lr / old lr."""
    optimizer = _sgd(member)
    if cfg.lr != member.cfg.lr:
        if rescale_velocity and cfg.momentum:
            ratio = cfg.lr / member.cfg.lr
            for v in optimizer.momentums:
                v.assign(v * ratio)
        optimizer.learning_rate = cfg.step_lr
    member.cfg = cfg


def begin(members: Sequence[Member], bases: dict[str, TrainConfig], start_epoch: int) -> None:
    """Before the loop's first epoch `start_epoch` (0-based): each member as it was at the end of the epoch
    before (a resumed run's checkpoint holds that state), with no velocity rescaling."""
    for member in members:
        _apply(member, bases[member.cfg.run_name].at_epoch(max(start_epoch - 1, 0)), rescale_velocity=False)


def enter_epoch(members: Sequence[Member], bases: dict[str, TrainConfig], epoch: int) -> bool:
    """Applies epoch `epoch`'s (0-based) learning rate and batch size to `members`; True when any changed
    (the step functions, traced for the old values, must then be rebuilt)."""
    changed = False
    for member in members:
        cfg = bases[member.cfg.run_name].at_epoch(epoch)
        changed |= (cfg.lr, cfg.batch_size) != (member.cfg.lr, member.cfg.batch_size)
        _apply(member, cfg, rescale_velocity=True)
    return changed


def epoch_plan(cfg: TrainConfig, num_train: int, epoch: int) -> tuple[int, int, int, int]:
    """Epoch `epoch` (0-based) of the run `cfg` (its identity, not an epoch's configuration): its batch size,
    its optimizer steps (what is left of --max_steps in a last partial epoch), and the optimizer steps and
    examples of the epochs before it. A constant run is the schedule without changes (its counts all equal);
    an SVAG step (svag > 1) reads svag_batches(svag) batches."""
    counts = cfg.epoch_step_counts(num_train)
    examples = sum(counts[e] * cfg.epoch_batch_size(e) for e in range(epoch)) * svag_batches(cfg.svag)
    return cfg.epoch_batch_size(epoch), cfg.epoch_steps(epoch, counts), sum(counts[:epoch]), examples
