"""Sharpness measures that are not spectra: Keskar's epsilon-sharpness, average sharpness under Gaussian
weight noise, and the trace of the per-example gradient covariance tr(C) with the gradient noise scale
B_simple from the same per-example gradients (curvature.noise_scale).

Losses are those of an `Objective` (mean cross-entropy over the fixed example set, in nats, plus the weight
decay term when the objective includes it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from lrbs_tf.curvature import noise_scale
from lrbs_tf.curvature.hvp import LossesFn, Objective, ParamLayout, concat_flat
from lrbs_tf.curvature.noise_scale import GROUPS, NoiseScale


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
    best = box_ascent(objective, bound, steps, rng.uniform(-1.0, 1.0, size=theta.shape) * bound, f0)
    return EpsSharpness(float(100.0 * (best - f0) / (1.0 + f0)), float(f0), float(best), eps, steps, steps)


def box_ascent(objective: Objective, bound: np.ndarray, steps: int, delta: np.ndarray, f0: float) -> float:
    """The largest loss seen by projected sign-gradient ascent over the box |delta_i| <= bound_i, started at
    `delta` (inside the box): delta <- clip(delta + a * bound * sign(grad f), -bound, bound), a = 2.5 / steps,
    the start (and f0, the loss at delta = 0) and the final point included. Non-finite losses are skipped.
    Cost: `steps` gradients plus 1 loss. eps-sharpness and adaptive sharpness (curvature.adaptive) share it."""
    theta = objective.theta
    step = 2.5 / steps
    best = f0
    for _ in range(steps):
        f, g = objective.loss_and_gradient(theta + delta)
        best = max(best, f) if math.isfinite(f) else best
        delta = np.clip(delta + step * bound * np.sign(g), -bound, bound)
    f_last = objective.loss(theta + delta)
    if math.isfinite(f_last):
        best = max(best, f_last)
    return float(best)


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
    f0 = objective.loss()
    inc = antithetic_increases(objective, sigma * (np.abs(objective.theta) + 1.0), draws,
                               np.random.default_rng(seed), f0)
    return AverageSharpness(float(inc.mean()), float(inc.std(ddof=1) / math.sqrt(draws)), float(f0), sigma, draws)


def antithetic_increases(objective: Objective, scale: np.ndarray, draws: int, rng: np.random.Generator,
                         f0: float) -> np.ndarray:
    """`draws` antithetic loss increases (f(w + delta) + f(w - delta)) / 2 - f0, delta = scale * z with z
    standard normal (drawn from `rng` in order). Cost: 2 draws losses. Average sharpness and adaptive
    average sharpness (curvature.adaptive) share it."""
    theta = objective.theta
    inc = []
    for _ in range(draws):
        delta = scale * rng.standard_normal(theta.shape)
        inc.append(0.5 * (objective.loss(theta + delta) + objective.loss(theta - delta)) - f0)
    return np.asarray(inc)


def _deviation_stats_fn(losses_fn: LossesFn, layout: ParamLayout, x0: tf.Tensor, jacobian: bool):
    """A traced function of a chunk of examples: per example |d_i|^2 and g_bar . d_i, and |sum_i d_i|^2,
    where d_i = g_i - g_bar and g_i is example i's gradient (the chunk's summary for tr C and B_simple).

    jacobian False: g_i is the gradient of example i's loss computed alone (vectorized_map), for losses that
    do not depend on the rest of the chunk. True: the rows of the Jacobian of the chunk's per-example losses
    (batch-mode BN, where each loss depends on the chunk's statistics and g_i is differentiated through them),
    so the rows average to exactly the chunk's gradient."""
    param_specs = [tf.TensorSpec(s, tf.float32) for s in layout.shapes]

    @tf.function(input_signature=[param_specs, tf.TensorSpec((layout.dim,), tf.float32),
                                  tf.TensorSpec((None,) + tuple(x0.shape[1:]), x0.dtype),
                                  tf.TensorSpec((None,), tf.int32)])
    def deviation_stats(params, gbar, x, y):
        if jacobian:
            with tf.GradientTape() as tape:
                tape.watch(params)
                losses = tf.cast(losses_fn(params, x, y), tf.float32)
            jac = tape.jacobian(losses, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            g = tf.concat([tf.reshape(j, [tf.shape(x)[0], -1]) for j in jac], axis=1)
        else:
            def one(example):
                xi, yi = example
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    loss = tf.reduce_sum(losses_fn(params, xi[None], yi[None]))
                return concat_flat(tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO))
            g = tf.vectorized_map(one, (x, y), fallback_to_while_loop=True)
        d = g - gbar[None, :]
        return (tf.reduce_sum(tf.square(d), axis=1), tf.linalg.matvec(d, gbar),
                tf.reduce_sum(tf.square(tf.reduce_sum(d, axis=0))))

    return deviation_stats


@dataclasses.dataclass
class GradCov:
    trace: float            # tr(C) = mean_i ||g_i - g_bar||^2, (nats per parameter)^2
    grad_norm: float        # ||g_bar||, the full-batch gradient norm over the same examples
    num_examples: int
    noise: NoiseScale | None = None  # B_simple from the same per-example gradients


def _groups(batches: Sequence[tuple[tf.Tensor, tf.Tensor]], size: int | None):
    """The per-example pass's chunks: each batch cut into the fewest pieces of at most `size` examples, of
    sizes differing by at most one (None: whole batches)."""
    for x, y in batches:
        m = int(x.shape[0])
        pieces = 1 if size is None else math.ceil(m / size)
        bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(m), pieces)])
        for i, j in zip(bounds[:-1], bounds[1:]):
            yield x[i:j], tf.cast(y[i:j], tf.int32)


def grad_cov_trace(losses_fn: LossesFn, params: Sequence, batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                   max_floats: int = 2 ** 26, traces: dict | None = None, jacobian: bool = False,
                   groups: int = GROUPS) -> GradCov:
    """Trace of the per-example gradient covariance C = (1/N) sum_i (g_i - g_bar)(g_i - g_bar)' over the set,
    and the noise scale B_simple from the same gradients (curvature.noise_scale).

    jacobian False: g_i is the gradient of example i's loss alone, so `losses_fn` must make each example's
    loss independent of the rest of its batch (BN in inference mode); the examples are cut into about
    `groups` chunks of consecutive examples (at most max_floats / d each, so a chunk's gradients fit in
    memory), the jackknife's groups. jacobian True (batch-mode BN): each batch is one chunk, never split,
    since its statistics are part of every g_i (memory: batch x d floats), and one jackknife group.
    g_bar is the objective's gradient over all batches (in batch mode the size-weighted mean of the
    batches' gradients, which the Jacobian rows average to). Weight decay adds the same w*theta to every g_i
    and cancels. Subtracting g_bar before squaring avoids the cancellation in mean ||g_i||^2 - ||g_bar||^2
    when the mean gradient dominates. Cost: 1 gradient + one per-example pass (convolutions' per-example
    filter gradients run as a loop inside vectorized_map). traces: see hvp.Objective.
    """
    layout = ParamLayout(tuple(tuple(int(d) for d in p.shape) for p in params))
    params = [tf.constant(np.asarray(p), dtype=tf.float32) for p in params]
    traces = {} if traces is None else traces
    obj = Objective(losses_fn, params, batches, traces=traces)
    _, gbar = obj.loss_and_gradient()
    x0 = batches[0][0]
    key = ("deviation_stats", losses_fn, layout.shapes, tuple(x0.shape[1:]), x0.dtype, jacobian)
    if key not in traces:
        traces[key] = _deviation_stats_fn(losses_fn, layout, x0, jacobian)
    stats = traces[key]
    size = None if jacobian else max(1, min(max_floats // max(layout.dim, 1), math.ceil(obj.num_examples / groups)))
    gbar32 = tf.constant(gbar, tf.float32)
    sizes, q, p, r = [], [], [], []
    for x, y in _groups(batches, size):
        sq, dots, sum_sq = stats(params, gbar32, x, y)
        sizes.append(int(x.shape[0]))
        q.append(float(tf.reduce_sum(tf.cast(sq, tf.float64))))
        p.append(float(tf.reduce_sum(tf.cast(dots, tf.float64))))
        r.append(float(sum_sq))
    gbar_sq = float(gbar @ gbar)
    noise = noise_scale.from_groups(gbar_sq, sizes, q, p, r) if obj.num_examples > 1 else None
    return GradCov(sum(q) / obj.num_examples, math.sqrt(gbar_sq), obj.num_examples, noise)
