"""Adaptive sharpness (Kwon et al., ICML 2021, ASAM; Andriushchenko et al., ICML 2023): the loss increase
under weight perturbations scaled elementwise by the weights themselves, d = u * |w| with u in a ball.

Dinh et al. (ICML 2017) showed that rescaling consecutive ReLU layers (W1, b1, W2) -> (a W1, a b1, W2 / a)
changes no prediction but moves lambda_max, the trace and epsilon-sharpness at will. In the normalised
coordinates u = d / |w| such a rescaling T (a positive diagonal) changes nothing: |T w| = T |w|, so the
perturbation T d of the rescaled weights is the image of d, L(T w + T d) = L(w + d), and the gradient in u,
grad L(w + d) * |w|, is the same too. Every random number here is drawn in u, so the measured numbers are
those of the function the network computes (to float rounding), whatever the scale of its layers.

- worst case, p = 2:   max { L(w + u |w|) - L(w) : ||u||_2 <= rho }, normalised-gradient ascent in u
  projected onto the ball;
- worst case, p = inf: the same over ||u||_inf <= rho, projected sign-gradient ascent (the box ascent of
  epsilon-sharpness, curvature.sharpness_measures.box_ascent, with the box rho |w|);
- average case:        E[L(w + d)] - L(w), d ~ N(0, rho^2 diag(w^2)), antithetic pairs
  (curvature.sharpness_measures.antithetic_increases).

Each worst case runs `restarts` ascents of `steps` gradients, each from a uniform random point of the ball
(seeded), and reports the largest loss seen at any iterate: a lower bound of the maximum. Losses are an
`Objective`'s (mean cross-entropy over the fixed example set, nats). Weights equal to zero are never
perturbed (|w| = 0); a weight decay term in the objective is not rescaling-invariant, and neither is the
result then.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lrbs_tf.curvature.hvp import Objective
from lrbs_tf.curvature.sharpness_measures import antithetic_increases, box_ascent

NORMS = ("2", "inf")


@dataclasses.dataclass
class AdaptiveSharpness:
    sharpness: float        # f(w + d*) - f(w), nats: the largest increase found, a lower bound of the max
    loss: float             # f(w), nats
    perturbed_loss: float   # f(w + d*), nats
    rho: float
    p: str                  # "2" or "inf"
    steps: int              # gradients per restart
    restarts: int
    num_gradients: int


def worst_case(objective: Objective, rho: float, p: str = "2", steps: int = 20, restarts: int = 1,
               seed: int = 0) -> AdaptiveSharpness:
    """Worst-case adaptive sharpness over ||d / |w|||_p <= rho (p "2" or "inf"), by projected ascent.

    p = 2: u <- P(u + a_t rho g_u / ||g_u||_2), g_u = grad f(w + u |w|) * |w| (the gradient in u), P the
    projection onto the ball, a_t = 2 (1 - t / steps) at step t = 0, 1, ...: long steps first (on the
    sphere a step of 2 rho is most of a power-iteration step toward the top curvature direction), shorter
    ones to settle. p = inf: sign steps in the box (box_ascent, a fixed 2.5 / steps of the box). Starts: uniform in the ball (p = 2: a Gaussian direction, radius rho U^(1/dim)) or box.
    Cost: restarts x (steps gradients + 1 loss) + 1 loss.
    """
    if p not in NORMS:
        raise ValueError(f"p={p!r}; valid: {', '.join(NORMS)}")
    if rho <= 0 or steps < 1 or restarts < 1:
        raise ValueError(f"adaptive sharpness needs rho > 0, steps >= 1 and restarts >= 1, got rho={rho}, "
                         f"steps={steps}, restarts={restarts}")
    scale = np.abs(objective.theta)
    f0 = objective.loss()
    rng = np.random.default_rng(seed)
    best = f0
    for _ in range(restarts):
        if p == "inf":
            start = rng.uniform(-rho, rho, size=scale.shape)
            best = max(best, box_ascent(objective, rho * scale, steps, start * scale, f0))
        else:
            z = rng.standard_normal(scale.shape)
            start = rho * rng.uniform() ** (1.0 / z.size) * z / np.linalg.norm(z)
            best = max(best, _ball_ascent(objective, scale, rho, steps, start, f0))
    return AdaptiveSharpness(float(best - f0), float(f0), float(best), float(rho), p, steps, restarts,
                             steps * restarts)


def _ball_ascent(objective: Objective, scale: np.ndarray, rho: float, steps: int, u: np.ndarray,
                 f0: float) -> float:
    """The largest loss seen by normalised-gradient ascent in u over ||u||_2 <= rho, d = u * scale."""
    theta = objective.theta
    best = f0
    for t in range(steps):
        f, g = objective.loss_and_gradient(theta + u * scale)
        best = max(best, f) if math.isfinite(f) else best
        gu = g * scale
        norm = float(np.linalg.norm(gu))
        if norm > 0 and math.isfinite(norm):
            u = u + 2.0 * (1.0 - t / steps) * rho * gu / norm
        length = float(np.linalg.norm(u))
        if length > rho:
            u = u * (rho / length)
    f_last = objective.loss(theta + u * scale)
    if math.isfinite(f_last):
        best = max(best, f_last)
    return float(best)


@dataclasses.dataclass
class AdaptiveAverage:
    mean_increase: float    # mean over draws of (f(w + d) + f(w - d)) / 2 - f(w), nats
    stderr: float           # its standard error over the draws
    loss: float             # f(w), nats
    rho: float
    draws: int


def average_case(objective: Objective, rho: float, draws: int = 10, seed: int = 0) -> AdaptiveAverage:
    """Average-case adaptive sharpness E[f(w + d)] - f(w), d = rho |w| z, z ~ N(0, I) (antithetic pairs,
    as curvature.sharpness_measures.average_sharpness, whose noise is sigma (|w| + 1) instead).
    Cost: 2 draws + 1 losses."""
    if rho <= 0 or draws < 2:
        raise ValueError(f"adaptive average sharpness needs rho > 0 and draws >= 2, got rho={rho}, draws={draws}")
    f0 = objective.loss()
    inc = antithetic_increases(objective, rho * np.abs(objective.theta), draws, np.random.default_rng(seed), f0)
    return AdaptiveAverage(float(inc.mean()), float(inc.std(ddof=1) / math.sqrt(draws)), float(f0), float(rho),
                           draws)
