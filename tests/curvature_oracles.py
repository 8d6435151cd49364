"""Independent references for the curvature tests: dense Hessians in float64, built without lrbs_tf.curvature.

- `Quadratic`: 0.5 theta' Q theta with a chosen spectrum (Q = U diag(spec) U', U a seeded random rotation).
- `softmax_regression_hessian`: the closed form (1/N) sum_i kron(xt_i xt_i', diag p_i - p_i p_i') for a Keras
  Dense(C) on inputs x (xt = [x, 1]; kernel (F, C) then bias (C,), flattened row-major).
- `mlp_dense_hessian`: a Dense/BN/ReLU MLP's loss rewritten in float64 TensorFlow ops (BN in inference mode),
  differentiated twice with nested GradientTapes (`tape.jacobian`): no ForwardAccumulator, no Keras call.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class Quadratic:
    """f(theta) = 0.5 theta' Q theta over params with `shapes` (flattened and concatenated in order)."""

    def __init__(self, spectrum, shapes=((5, 4), (20,)), seed: int = 0):
        spectrum = np.asarray(spectrum, np.float64)
        self.dim = len(spectrum)
        assert self.dim == sum(int(np.prod(s)) for s in shapes)
        rng = np.random.default_rng(seed)
        u, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        self.q = (u * spectrum) @ u.T
        self.q = 0.5 * (self.q + self.q.T)
        self.spectrum = np.sort(spectrum)[::-1]
        self.shapes = shapes
        q32 = tf.constant(self.q, tf.float32)

        def losses_fn(params, x, y):
            theta = tf.concat([tf.reshape(p, [-1]) for p in params], axis=0)
            value = 0.5 * tf.reduce_sum(theta * tf.linalg.matvec(q32, theta))
            return tf.fill(tf.shape(y), value)  # every "example" has the same loss: the batch mean is f

        self.losses_fn = losses_fn
        self.batches = [(tf.zeros((1, 1)), tf.zeros((1,), tf.int32))]

    def params(self, theta: np.ndarray) -> list[np.ndarray]:
        out, i = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(theta[i:i + n].reshape(s).astype(np.float32))
            i += n
        return out

    def loss(self, theta: np.ndarray) -> float:
        return 0.5 * float(theta @ self.q @ theta)


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_regression_hessian(kernel: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dense Hessian (d x d, d = (F + 1) C) of the mean cross-entropy of softmax(x W + b), in float64."""
    x = np.asarray(x, np.float64)
    p = _softmax64(x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64))
    xt = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    h = np.zeros((xt.shape[1] * p.shape[1],) * 2)
    for xi, pi in zip(xt, p):
        h += np.kron(np.outer(xi, xi), np.diag(pi) - np.outer(pi, pi))
    return h / len(x)


def softmax_regression_per_example_grads(kernel: np.ndarray, bias: np.ndarray, x: np.ndarray,
                                         y: np.ndarray) -> np.ndarray:
    """(N, d) per-example gradients kron(xt_i, p_i - e_{y_i}) in the same flat layout, float64."""
    x = np.asarray(x, np.float64)
    p = _softmax64(x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64))
    p[np.arange(len(y)), y] -= 1.0
    xt = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return np.stack([np.kron(xi, ri) for xi, ri in zip(xt, p)])


def mlp_weights(model) -> list[np.ndarray]:
    return [np.asarray(v.value, np.float64) for v in model.trainable_variables]


def mlp_losses64(model, weights: list, x: np.ndarray, y: np.ndarray, batch_stats: bool = False):
    """Per-example cross-entropy (N,) of a Flatten/Dense/BatchNormalization/ReLU model, in float64 tf ops.

    `weights` are in `model.trainable_variables` order; BN uses its moving statistics (inference mode), or
    with batch_stats the mean and (biased) variance of these N examples, as Keras does in training mode.
    """
    logp = tf.nn.log_softmax(mlp_logits64(model, weights, x, batch_stats), axis=-1)
    return -tf.gather(logp, tf.constant(y), axis=1, batch_dims=1)


def mlp_logits64(model, weights: list, x: np.ndarray, batch_stats: bool = False):
    """The logits (N, C) of the model of `mlp_losses64`, in float64 tf ops."""
    import keras

    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    h = tf.constant(np.asarray(x, np.float64))
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Flatten):
            h = tf.reshape(h, [tf.shape(h)[0], -1])
        elif isinstance(layer, keras.layers.Dense):
            h = h @ weights[index[id(layer.kernel)]] + weights[index[id(layer.bias)]]
        elif isinstance(layer, keras.layers.BatchNormalization):
            mean = np.asarray(layer.moving_mean.value, np.float64)
            var = np.asarray(layer.moving_variance.value, np.float64)
            if batch_stats:
                mean, var = tf.reduce_mean(h, axis=0), tf.math.reduce_variance(h, axis=0)
            # tf.sqrt, not np.sqrt: np.sqrt would turn a batch variance into a constant and drop its gradient.
            h = (weights[index[id(layer.gamma)]] * (h - mean) / tf.sqrt(var + layer.epsilon)
                 + weights[index[id(layer.beta)]])
        elif isinstance(layer, keras.layers.ReLU):
            h = tf.nn.relu(h)
        else:
            raise TypeError(f"oracle has no float64 version of {type(layer).__name__}")
    return h


def mlp_dense_hessian(model, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(loss, gradient (d,), Hessian (d, d)) of the model's mean cross-entropy, float64, from nested tapes."""
    weights = mlp_weights(model)
    shapes = [w.shape for w in weights]
    sizes = [w.size for w in weights]
    theta = tf.Variable(np.concatenate([w.ravel() for w in weights]))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            parts = [tf.reshape(p, s) for p, s in zip(tf.split(theta, sizes), shapes)]
            loss = tf.reduce_mean(mlp_losses64(model, parts, x, y))
        grad = inner.gradient(loss, theta)
    hess = outer.jacobian(grad, theta)
    return float(loss), grad.numpy(), hess.numpy()


def mlp_per_example_grads(model, x: np.ndarray, y: np.ndarray, batch_stats: bool = False) -> np.ndarray:
    """(N, d) per-example gradients, float64: the jacobian of the per-example losses (with batch_stats, of
    the losses normalised with these N examples' BN statistics, differentiated through them)."""
    ws = [tf.Variable(w) for w in mlp_weights(model)]
    with tf.GradientTape() as tape:
        losses = mlp_losses64(model, ws, x, y, batch_stats)
    jac = tape.jacobian(losses, ws)
    return np.concatenate([j.numpy().reshape(len(x), -1) for j in jac], axis=1)


def mlp_dense_ggn(model, x: np.ndarray, batch_stats: bool = False) -> np.ndarray:
    """The Gauss-Newton matrix (1/N) sum_i J_i' (diag p_i - p_i p_i') J_i (d, d) of the model's mean
    cross-entropy on x, float64: J_i from the dense Jacobian of the logits (with batch_stats, differentiated
    through these N examples' BN statistics)."""
    ws = [tf.Variable(w) for w in mlp_weights(model)]
    with tf.GradientTape() as tape:
        logits = mlp_logits64(model, ws, x, batch_stats)
    jac = np.concatenate([j.numpy().reshape(logits.shape[0], logits.shape[1], -1)
                          for j in tape.jacobian(logits, ws)], axis=2)  # (N, C, d)
    p = _softmax64(logits.numpy())
    g = np.zeros((jac.shape[2],) * 2)
    for ji, pi in zip(jac, p):
        g += ji.T @ (np.diag(pi) - np.outer(pi, pi)) @ ji
    return g / len(x)
