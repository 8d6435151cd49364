"""The step functions of a learning-rate column: one SGD step of every member, and their evaluation.

A column's members share every batch. An *engine* computes their steps: `GraphEngine` runs the K Keras models
side by side in one graph (every architecture, any strategy); `stacked.StackedColumn` holds K MLPs as (K, ...)
weights. Both offer `train_step(x, y)` (per-member float64 loss sums, int64 hit counts and float64 squared
norms of the loss gradient, weight decay left out), `evaluate(x, y)` (loss sums and hit counts)
and `unstack()` (the member models hold the state that is recorded and checkpointed), so the code around
them is written once. `make_step_functions` wraps an engine in the tf.functions the loop calls: many steps
per call, so Python is not in the step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, Sequence

import keras
import tensorflow as tf

from lrbs_tf.runs.config import svag_coefficients
from lrbs_tf.training import stacked
from lrbs_tf.training.distribute import is_multi_worker

if TYPE_CHECKING:
    from lrbs_tf.training.members import Member

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def forward_backward(member: "Member", replicas: int, x: tf.Tensor, y: tf.Tensor):
    """One member's gradients on this replica's batch (x, y): (grads, loss_grads, loss_sum, hits).

    `grads` are what the optimizer applies, `loss_grads` the loss's alone, without weight decay (the same
    tensors when there is none); the batch loss sum is float64. The loss is the sum over the replica's
    examples / the global batch size (the optimizer's all-reduce sums replicas). Weight decay is PyTorch's
    coupled L2, grad += wd * w, split over the replicas whose gradients are summed; under float16 loss
    scaling the loss and the decay are both in scaled units.
    """
    tvars = member.model.trainable_variables
    scaled = isinstance(member.optimizer, keras.optimizers.LossScaleOptimizer)
    with tf.GradientTape() as tape:
        logits = tf.cast(member.model(x, training=True), tf.float32)  # mixed precision: loss in float32
        per_example = LOSS(y, logits)
        loss = tf.reduce_sum(per_example) / member.cfg.batch_size
        if scaled:
            loss = member.optimizer.scale_loss(loss)
    grads = loss_grads = tape.gradient(loss, tvars)
    if member.cfg.weight_decay:
        decay = member.cfg.weight_decay / replicas
        if scaled:
            decay = decay * member.optimizer.dynamic_scale
        grads = [g + decay * v for g, v in zip(grads, tvars)]
    hits = tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y)
    return grads, loss_grads, tf.reduce_sum(tf.cast(per_example, tf.float64)), tf.reduce_sum(tf.cast(hits, tf.int64))


def svag_forward_backward(member: "Member", replicas: int, x1: tf.Tensor, y1: tf.Tensor, x2: tf.Tensor,
                          y2: tf.Tensor):
    """SVAG's gradient (Li, Malladi & Arora 2021) on two independent batches (x1, y1), (x2, y2) of the batch
    size: r1 g1 + r2 g2 with (r1, r2) = runs.config.svag_coefficients(svag), whose mean is the gradient and
    whose noise covariance is svag times one batch's. Returns forward_backward's tuple, with the loss sums and
    hits of both batches (2 x batch_size examples). Weight decay enters once, since r1 + r2 = 1."""
    r1, r2 = svag_coefficients(member.cfg.svag)
    grads1, loss_grads1, loss1, hits1 = forward_backward(member, replicas, x1, y1)
    grads2, loss_grads2, loss2, hits2 = forward_backward(member, replicas, x2, y2)
    grads = [r1 * a + r2 * b for a, b in zip(grads1, grads2)]
    loss_grads = [r1 * a + r2 * b for a, b in zip(loss_grads1, loss_grads2)] if member.cfg.weight_decay else grads
    return grads, loss_grads, loss1 + loss2, hits1 + hits2


def grad_norm_sq(loss_grads: Sequence[tf.Tensor], replicas: int, optimizer: keras.optimizers.Optimizer) -> tf.Tensor:
    """The squared L2 norm (float64 scalar) of the global batch's loss gradient over all trainable weights,
    from this replica's part of it (forward_backward's `loss_grads`, weight decay left out).

    The replicas' parts add up to the batch's gradient, so over several replicas they are all-reduced first
    (an all-reduce of the model's size per step, beside the optimizer's own: the decay-free sum is not
    otherwise at hand); every replica then holds the same value. Under float16 loss scaling the gradients
    are in scaled units and the scale is divided out. Float64, so the sum over weights adds no rounding.
    """
    if replicas > 1:
        loss_grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, list(loss_grads))
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in loss_grads])
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scale = tf.cast(optimizer.dynamic_scale, tf.float64)
        total = total / (scale * scale)
    return total


class GraphEngine:
    """The K member models side by side in one graph: each member's arithmetic is what it would be alone."""

    def __init__(self, members: Sequence["Member"], replicas: int, jit_compile: bool) -> None:
        self.members, self.replicas = list(members), replicas
        # A column's members share svag (it is part of every run's identity but the learning rate).
        gradients = forward_backward if self.members[0].cfg.svag == 1 else svag_forward_backward
        self.steps = [functools.partial(gradients, m, replicas) for m in self.members]
        if jit_compile and replicas > 1:
            # Across replicas the optimizer's all-reduce stays outside XLA: compile each forward/backward.
            self.steps = [tf.function(f, jit_compile=True) for f in self.steps]

    def train_step(self, *batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One SGD step of every member on `batch` (x, y; SVAG: x1, y1, x2, y2): per-member loss sums (float64),
        hits (int64) and squared loss gradient norms (float64, grad_norm_sq; SVAG: of the combined gradient)."""
        losses, hits, norms = [], [], []
        for member, step in zip(self.members, self.steps):
            grads, loss_grads, loss_sum, correct = step(*batch)
            norms.append(grad_norm_sq(loss_grads, self.replicas, member.optimizer))  # the scale this step used
            member.optimizer.apply_gradients(zip(grads, member.model.trainable_variables))
            losses.append(loss_sum)
            hits.append(correct)
        return tf.stack(losses), tf.stack(hits), tf.stack(norms)

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        losses, hits = [], []
        for member in self.members:
            logits = tf.cast(member.model(x, training=False), tf.float32)
            losses.append(tf.reduce_sum(tf.cast(LOSS(y, logits), tf.float64)))
            hits.append(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.int64)))
        return tf.stack(losses), tf.stack(hits)

    def unstack(self) -> None:
        """Nothing to copy: the member models are the state."""


def choose_engine(members: Sequence["Member"], replicas: int, jit_compile: bool):
    """The stacked engine when --column_engine=stacked asks for it and there is a column to stack (config.validate
    has checked that it can apply); the graph engine otherwise, 'auto' included (the faster one on CPU, and
    the only one measured; BENCHMARKS.md)."""
    cfg = members[0].cfg
    if cfg.column_engine == "stacked" and len(members) > 1:
        return stacked.StackedColumn([m.model for m in members], [m.optimizer for m in members],
                                     [m.cfg.step_lr for m in members], cfg.momentum, cfg.weight_decay, cfg.batch_size,
                                     svag=cfg.svag)
    return GraphEngine(members, replicas, jit_compile)


def train_chunk(strategy: tf.distribute.Strategy, replica_step: Callable, iterator, num_steps: tf.Tensor,
                alive: tf.Tensor, *sums: tf.Tensor):
    """Up to `num_steps` steps of every member (traced inside a tf.function by make_step_functions).

    `replica_step(x, y)` gives per-member batch loss sums, hits and squared loss gradient norms. A member's
    sums stop at its first non-finite batch loss (that batch included), as its run alone would stop there;
    the chunk ends once no member is `alive`. Returns the per-member sums (float64 loss sums, int64 hits,
    int64 steps counted, float64 sum of squared gradient norms, int64 steps whose gradient norm is finite)
    and the updated `alive`. A step whose gradient is not finite (a float16 loss-scale overflow, which the optimizer
    skips) is left out of the norm's mean. `sums` continue the epoch's sums so far (zeros when not given):
    the float64 additions are then the same, in the same order, however the epoch is cut into calls, so the
    metrics do not depend on --steps_per_call.
    """
    k = alive.shape[0]
    loss_sum, correct, steps, grad_sq, grad_steps = sums or zero_sums(k)
    for _ in tf.range(num_steps):
        if not tf.reduce_any(alive):
            break
        batch_loss, batch_correct, batch_grad_sq = strategy.run(replica_step, args=next(iterator))
        batch_loss = strategy.reduce(tf.distribute.ReduceOp.SUM, batch_loss, axis=None)
        batch_correct = strategy.reduce(tf.distribute.ReduceOp.SUM, batch_correct, axis=None)
        batch_grad_sq = strategy.experimental_local_results(batch_grad_sq)[0]  # all-reduced: equal on every replica
        loss_sum += tf.where(alive, batch_loss, 0.0)
        correct += tf.where(alive, batch_correct, tf.zeros_like(batch_correct))
        steps += tf.cast(alive, tf.int64)
        normed = tf.logical_and(alive, tf.math.is_finite(batch_grad_sq))
        grad_sq += tf.where(normed, batch_grad_sq, 0.0)
        grad_steps += tf.cast(normed, tf.int64)
        alive = tf.logical_and(alive, tf.math.is_finite(batch_loss))
    return loss_sum, correct, steps, grad_sq, grad_steps, alive


def zero_sums(k: int) -> tuple[tf.Tensor, ...]:
    """train_chunk's sums before an epoch's first step, for `k` members."""
    return (tf.zeros([k], tf.float64), tf.zeros([k], tf.int64), tf.zeros([k], tf.int64), tf.zeros([k], tf.float64),
            tf.zeros([k], tf.int64))


def eval_batch(strategy: tf.distribute.Strategy, evaluate: Callable, x: tf.Tensor, y: tf.Tensor):
    """Per-member loss sums and hits on one test batch, summed over replicas. Under several workers every
    worker evaluates the whole test set on its own copy: no collectives."""
    if is_multi_worker(strategy):
        return evaluate(x, y)
    loss_sum, correct = strategy.run(evaluate, args=(x, y))
    return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))


@dataclasses.dataclass
class StepFunctions:
    """The tf.functions stepping and evaluating exactly `engine`'s members (rebuilt when the column changes)."""
    engine: object
    train_steps: Callable   # (iterator, num_steps int32, alive bool[K], *sums) -> (*sums updated, alive)
    eval_step: Callable     # (x, y) -> (loss_sum float64[K], correct int64[K])


def make_step_functions(strategy: tf.distribute.Strategy, members: Sequence["Member"]) -> StepFunctions:
    cfg = members[0].cfg
    replicas = strategy.num_replicas_in_sync
    engine = choose_engine(members, replicas, cfg.jit_compile)
    replica_step = engine.train_step
    if cfg.jit_compile and replicas == 1:
        # One device: XLA compiles the whole step (forward, backward and the SGD update), as Model.fit does.
        replica_step = tf.function(replica_step, jit_compile=True)
    return StepFunctions(engine, tf.function(functools.partial(train_chunk, strategy, replica_step)),
                         tf.function(functools.partial(eval_batch, strategy, engine.evaluate)))
