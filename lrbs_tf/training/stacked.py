"""Stacked execution of a learning-rate column: K copies of an MLP as weights with a leading K axis.

The generic column (lrbs_tf.training.loop) runs K separate models in one graph: correct for every architecture, but
at small batch sizes each of the K models' tiny ops pays its own dispatch. For chains of Dense / BatchNorm /
ReLU / Flatten layers (the `mlp` architecture) this engine instead holds each weight as one (K, ...) variable
and runs every layer for all K members at once (one batched matmul per layer), which is what makes a column
of 20 learning rates much cheaper than 20 runs.

Each member's arithmetic is the same as its Keras model's (the same TF ops per slice: matmul + bias,
tf.nn.moments and tf.nn.batch_normalization for BN, Keras SGD's update formulas), so members equal their
separate runs to float tolerance. The member models stay the source of truth for checkpoints and saving:
`unstack()` copies the stacked state back into them (weights, BN moving statistics, SGD momentum, step
count), and a new engine is built from them whenever the column changes.

Convolutions are not stacked: TensorFlow's CPU kernels cannot batch different filters per member (grouped
convolutions are GPU/XLA-only, and tf.vectorized_map falls back to a while-loop for a per-member filter).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from lrbs_tf.runs.config import svag_coefficients

_LAYERS = (keras.layers.InputLayer, keras.layers.Dense, keras.layers.BatchNormalization, keras.layers.ReLU,
           keras.layers.Flatten)


def supports(model: keras.Model) -> bool:
    """True for a single-input chain of Dense (linear activation) / BatchNorm / ReLU / Flatten layers."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    for layer in model.layers:
        if not isinstance(layer, _LAYERS):
            return False
        if isinstance(layer, keras.layers.Dense) and layer.activation is not keras.activations.linear:
            return False
        # The engine normalises the channel (last) axis; Keras 3 stores BatchNormalization.axis as an int.
        if isinstance(layer, keras.layers.BatchNormalization) and layer.axis not in (-1, len(layer.input.shape) - 1):
            return False
    previous = model.inputs[0]
    for layer in model.layers[1:]:  # a chain: every layer consumes the previous layer's output
        if layer.input is not previous:
            return False
        previous = layer.output
    return True


class StackedColumn:
    """K same-architecture models trained on the same batches, with per-member learning rates."""

    def __init__(self, models: list[keras.Model], optimizers: list[keras.optimizers.Optimizer],
                 lrs: list[float], momentum: float, weight_decay: float, batch_size: int, svag: int = 1):
        """`lrs`: the rates each step applies (SVAG: lr / svag); `svag`: SVAG's l, shared by the column."""
        self.models, self.optimizers = models, optimizers
        self.svag_weights = svag_coefficients(svag) if svag > 1 else None
        self.k = len(models)
        self.momentum, self.weight_decay, self.batch_size = momentum, weight_decay, batch_size
        self.lrs = tf.constant(lrs, tf.float32)
        stack = lambda vs, name: tf.Variable(np.stack([v.numpy() for v in vs]), name=name)  # noqa: E731
        self.trainable = [stack([m.trainable_variables[j] for m in models], f"w{j}")
                          for j in range(len(models[0].trainable_variables))]
        self.moving = [stack([m.non_trainable_variables[j] for m in models], f"s{j}")
                       for j in range(len(models[0].non_trainable_variables))]
        self.velocity = ([stack([o.momentums[j] for o in optimizers], f"v{j}")
                          for j in range(len(self.trainable))] if momentum else [])
        self.steps = tf.Variable(0, dtype=tf.int64)
        # Where each layer's weights live in the stacked lists (Keras orders variables layer by layer).
        t_ids = {id(v): j for j, v in enumerate(models[0].trainable_variables)}
        n_ids = {id(v): j for j, v in enumerate(models[0].non_trainable_variables)}
        self.plan = []
        for layer in models[0].layers:
            if isinstance(layer, keras.layers.Dense):
                self.plan.append(("dense", t_ids[id(layer.kernel)], t_ids[id(layer.bias)]))
            elif isinstance(layer, keras.layers.BatchNormalization):
                self.plan.append(("bn", t_ids[id(layer.gamma)], t_ids[id(layer.beta)],
                                  n_ids[id(layer.moving_mean)], n_ids[id(layer.moving_variance)],
                                  layer.momentum, layer.epsilon))
            elif isinstance(layer, keras.layers.ReLU):
                self.plan.append(("relu",))
            elif isinstance(layer, keras.layers.Flatten):
                self.plan.append(("flatten",))

    def _expand(self, v: tf.Tensor, ndim: int) -> tf.Tensor:
        """(K, F) -> (K, 1, ..., 1, F) to broadcast over the batch (and spatial) axes of an ndim activation."""
        return tf.reshape(v, [self.k] + [1] * (ndim - 2) + [v.shape[-1]])

    def forward(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """x: (B, ...) shared by all members -> logits (K, B, classes)."""
        h = tf.broadcast_to(x[None], [self.k, *([tf.shape(x)[i] for i in range(x.shape.rank)])])
        for step in self.plan:
            kind = step[0]
            if kind == "flatten":
                h = tf.reshape(h, [self.k, tf.shape(h)[1], int(np.prod(h.shape[2:]))])
            elif kind == "dense":
                h = tf.matmul(h, self.trainable[step[1]]) + self.trainable[step[2]][:, None, :]
            elif kind == "relu":
                h = tf.nn.relu(h)
            else:
                _, gamma, beta, mean_id, var_id, momentum, epsilon = step
                axes = list(range(1, h.shape.rank - 1))
                if training:
                    mean, variance = tf.nn.moments(h, axes)  # Keras' BatchNormalization._moments
                    moving_mean, moving_var = self.moving[mean_id], self.moving[var_id]
                    moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
                    moving_var.assign(moving_var * momentum + variance * (1.0 - momentum))
                else:
                    mean, variance = self.moving[mean_id], self.moving[var_id]
                nd = h.shape.rank
                h = tf.nn.batch_normalization(h, self._expand(mean, nd), self._expand(variance, nd),
                                              self._expand(self.trainable[beta], nd),
                                              self._expand(self.trainable[gamma], nd), epsilon)
        return h

    def _scores(self, logits: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        labels = tf.broadcast_to(y[None], [self.k, tf.shape(y)[0]])
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # (K, B)
        hits = tf.equal(tf.argmax(logits, -1, output_type=y.dtype), labels)
        return per_example, tf.reduce_sum(tf.cast(hits, tf.int64), axis=1)

    def _gradients(self, x: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        """Every member's loss gradient on batch (x, y), its loss sum (float64) and hits."""
        with tf.GradientTape() as tape:
            per_example, correct = self._scores(self.forward(x, training=True), y)
            # Members are independent, so the gradient of the sum gives each slice its own loss's gradient.
            loss = tf.reduce_sum(per_example) / self.batch_size
        return tape.gradient(loss, self.trainable), tf.reduce_sum(tf.cast(per_example, tf.float64), axis=1), correct

    def train_step(self, x: tf.Tensor, y: tf.Tensor, *second: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One SGD step of every member on batch (x, y) (SVAG: and the second batch `second`, combined as
        lrbs_tf.training.steps.svag_forward_backward does); returns per-member loss sums (float64), hits and
        squared L2 norms of the loss gradient (float64, weight decay left out: lrbs_tf.training.steps.grad_norm_sq)."""
        grads, loss_sum, correct = self._gradients(x, y)
        if self.svag_weights is not None:
            r1, r2 = self.svag_weights
            grads2, loss_sum2, correct2 = self._gradients(*second)
            grads = [r1 * a + r2 * b for a, b in zip(grads, grads2)]
            loss_sum, correct = loss_sum + loss_sum2, correct + correct2
        norms = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64)), axis=list(range(1, g.shape.rank)))
                          for g in grads])
        for w, g, j in zip(self.trainable, grads, range(len(grads))):
            if self.weight_decay:
                g = g + self.weight_decay * w
            lr = tf.reshape(self.lrs, [self.k] + [1] * (w.shape.rank - 1))
            if self.momentum:  # Keras SGD: m = m * momentum - g * lr; w += m
                m = self.velocity[j]
                m.assign(m * self.momentum - g * lr)
                w.assign_add(m)
            else:  # Keras SGD: w -= g * lr
                w.assign_sub(g * lr)
        self.steps.assign_add(1)
        return loss_sum, correct, norms

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        per_example, correct = self._scores(self.forward(x, training=False), y)
        return tf.reduce_sum(tf.cast(per_example, tf.float64), axis=1), correct

    def unstack(self) -> None:
        """Copies the stacked state back into the member models and optimizers."""
        trainable = [v.numpy() for v in self.trainable]
        moving = [v.numpy() for v in self.moving]
        velocity = [v.numpy() for v in self.velocity]
        steps = int(self.steps.numpy())
        for i, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            for v, s in zip(model.trainable_variables, trainable):
                v.assign(s[i])
            for v, s in zip(model.non_trainable_variables, moving):
                v.assign(s[i])
            for v, s in zip(optimizer.momentums if self.momentum else [], velocity):
                v.assign(s[i])
            optimizer.iterations.assign_add(steps)
        self.steps.assign(0)
