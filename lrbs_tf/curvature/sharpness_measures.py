"""Sharpness measures that are not spectra: Keskar's epsilon-sharpness, average sharpness under Gaussian
weight noise, and the trace of the per-example gradient covariance tr(C).

Losses are those of an `Objective` (mean cross-entropy over the fixed example set, in nats, plus the weight
decay term when the objective includes it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from lrbs_tf.curvature.hvp import LossesFn, Objective, ParamLayout, concat_flat


@dataclasses.dataclass
class EpsSharpness:
    sharpness: float        # 100 (f(w + delta*) - f(w)) / (1 + f(w)), percent; a lower bound of the max
    loss: float             # f(w), nats
    perturbed_loss: float   # f(w + delta*), nats: the largest loss found in the box
    eps: float
    steps: int              # gradient evaluations of the ascent
    num_gradients: int


def eps_sharpness(objective: Objective, eps: float = 1e-3, steps: int = 20, seed: int = 0) -> EpsSharpness:
    """Keskar et al. (2017) epsilon-sharpness over the box |delta_i| <= eps (|w_i| + 1), full space (A = I).

    Keskar et al. maximise with L-BFGS-B; here the optimiser is projected sign-gradient ascent (the PGD of
    adversarial training) scaled per coordinate to the box: delta <- clip(delta + a * b * sign(grad f),
    -b, b) with b = eps (|w| + 1) and a = 2.5 / steps (so the ascent can cross the box more than once).
    It starts from a uniform random point in the box (seeded). The largest loss seen at any iterate,
    the start and the final point included, is reported: the maximum is not computable, so this is a lower
    bound of the true epsilon-sharpness, and more steps can only raise it.

    Cost: `steps` gradients plus 2 losses over the example set.
    """
    if eps <= 0 or steps < 1:
        raise ValueError(f"eps-sharpness needs eps > 0 and steps >= 1, got eps={eps}, steps={steps}")
    theta = objective.theta
    f0 = objective.loss()
    bound = eps * (np.abs(theta) + 1.0)
    rng = np.random.default_rng(seed)
    delta = rng.uniform(-1.0, 1.0, size=theta.shape) * bound
    step = 2.5 / steps
    best = f0
    for _ in range(steps):
        f, g = objective.loss_and_gradient(theta + delta)
        best = max(best, f) if math.isfinite(f) else best
        delta = np.clip(delta + step * bound * np.sign(g), -bound, bound)
    f_last = objective.loss(theta + delta)
    if math.isfinite(f_last):
        best = max(best, f_last)
    return EpsSharpness(float(100.0 * (best - f0) / (1.0 + f0)), float(f0), float(best), eps, steps, steps)


@dataclasses.dataclass
class AverageSharpness:
    mean_increase: float    # mean over draws of f(w + delta) - f(w), nats
    stderr: float           # standard error of that mean over draws
    loss: float             # f(w), nats
    sigma: float
    draws: int


def average_sharpness(objective: Objective, sigma: float = 1e-2, draws: int = 10, seed: int = 0
                      ) -> AverageSharpness:
    """Mean loss increase E[f(w + delta)] - f(w) under Gaussian weight noise delta_i ~ N(0, (sigma (|w_i|+1))^2).

    The noise is scaled like Keskar's box (relative to each weight, with a floor of 1 for weights near 0)
    so that eps and sigma are in the same units and runs with different weight norms compare fairly.
    Each draw is an antithetic pair, (f(w + delta) + f(w - delta)) / 2 - f(w): the noise is symmetric, so
    the expectation is unchanged, but the first-order term grad f . delta, which is zero-mean yet dominates
    the variance away from a stationary point, cancels exactly. What remains is about delta' H delta / 2.
    The standard error is over the `draws` pairs. Cost: 2 draws + 1 losses over the example set.
    """
    if sigma <= 0 or draws < 2:
        raise ValueError(f"average sharpness needs sigma > 0 and draws >= 2, got sigma={sigma}, draws={draws}")
    theta = objective.theta
    f0 = objective.loss()
    scale = sigma * (np.abs(theta) + 1.0)
    rng = np.random.default_rng(seed)
    inc = []
    for _ in range(draws):
        delta = scale * rng.standard_normal(theta.shape)
        inc.append(0.5 * (objective.loss(theta + delta) + objective.loss(theta - delta)) - f0)
    inc = np.asarray(inc)
    return AverageSharpness(float(inc.mean()), float(inc.std(ddof=1) / math.sqrt(draws)), float(f0), sigma, draws)


def _sq_distances_fn(losses_fn: LossesFn, layout: ParamLayout, x0: tf.Tensor):
    """A traced function: ||g_i - g_bar||^2 for every example i of a batch (per-example gradients)."""
    param_specs = [tf.TensorSpec(s, tf.float32) for s in layout.shapes]

    @tf.function(input_signature=[param_specs, tf.TensorSpec((layout.dim,), tf.float32),
                                  tf.TensorSpec((None,) + tuple(x0.shape[1:]), x0.dtype),
                                  tf.TensorSpec((None,), tf.int32)])
    def sq_distances(params, gbar, x, y):
        def one(example):
            xi, yi = example
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = tf.reduce_sum(losses_fn(params, xi[None], yi[None]))
            g = concat_flat(tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO))
            return tf.reduce_sum(tf.square(g - gbar))
        return tf.vectorized_map(one, (x, y), fallback_to_while_loop=True)

    return sq_distances


@dataclasses.dataclass
class GradCov:
    trace: float            # tr(C) = mean_i ||g_i - g_bar||^2, (nats per parameter)^2
    grad_norm: float        # ||g_bar||, the full-batch gradient norm over the same examples
    num_examples: int


def grad_cov_trace(losses_fn: LossesFn, params: Sequence, batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                   max_floats: int = 2 ** 26, traces: dict | None = None) -> GradCov:
    """Trace of the per-example gradient covariance C = (1/N) sum_i (g_i - g_bar)(g_i - g_bar)' over the set.

    g_i is the gradient of example i's loss alone, so `losses_fn` must make each example's loss independent
    of the rest of its batch (BN in inference mode). Weight decay adds the same w*theta to every g_i and
    cancels. Two passes: g_bar first, then per-example gradients (tf.vectorized_map, chunks of at most
    max_floats / d examples so a chunk's gradients fit in memory) and their squared distances to g_bar,
    summed in float64. Subtracting g_bar before squaring avoids the cancellation in
    mean ||g_i||^2 - ||g_bar||^2 when the mean gradient dominates. Cost: about 1 + (per-example pass)
    gradients; convolutions' per-example filter gradients run as a loop inside vectorized_map.
    traces: see hvp.Objective (one trace per losses_fn and shapes, shared by later calls).
    """
    layout = ParamLayout(tuple(tuple(int(d) for d in p.shape) for p in params))
    params = [tf.constant(np.asarray(p), dtype=tf.float32) for p in params]
    traces = {} if traces is None else traces
    obj = Objective(losses_fn, params, batches, traces=traces)
    _, gbar = obj.loss_and_gradient()
    x0 = batches[0][0]
    key = ("sq_distances", losses_fn, layout.shapes, tuple(x0.shape[1:]), x0.dtype)
    if key not in traces:
        traces[key] = _sq_distances_fn(losses_fn, layout, x0)
    sq_distances = traces[key]
    chunk = max(1, max_floats // max(layout.dim, 1))
    gbar32 = tf.constant(gbar, tf.float32)
    total = 0.0
    for x, y in batches:
        for i in range(0, int(x.shape[0]), chunk):
            d2 = sq_distances(params, gbar32, x[i:i + chunk], tf.cast(y[i:i + chunk], tf.int32))
            total += float(tf.reduce_sum(tf.cast(d2, tf.float64)))
    return GradCov(total / obj.num_examples, float(np.linalg.norm(gbar)), obj.num_examples)
