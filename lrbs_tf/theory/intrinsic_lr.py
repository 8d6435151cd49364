"""The intrinsic learning rate (Li, Lyu & Arora 2020) of scale-invariant weights under weight decay.

A weight group w is scale-invariant when the loss depends on it only through w / ||w|| (a layer followed
by batch norm). Then its gradient g is orthogonal to w and ||g|| = ||g_unit|| / ||w||, where g_unit is
the gradient at the same direction with unit norm. Plain SGD with weight decay lambda (gradient + lambda w,
bin/train's --weight_decay) gives

    ||w_{t+1}||^2 = (1 - eta lambda)^2 ||w_t||^2 + eta^2 ||g_t||^2 = (1 - eta lambda)^2 ||w_t||^2
                    + eta^2 ||g_unit,t||^2 / ||w_t||^2,

so with G = E||g_unit||^2 the norm settles where ||w||^4 = eta G / (lambda (2 - eta lambda)), and the
effective learning rate of the direction, eta / ||w||^2 = sqrt(lambda_e (2 - lambda_e) / G), depends on
(eta, lambda) only through the intrinsic learning rate lambda_e = eta lambda. At equal lambda_e the norm
grows like eta (||w||^2 = eta sqrt(G / (lambda_e (2 - lambda_e)))). Linearising the recursion at the
equilibrium gives a relaxation factor 2 (1 - lambda_e)^2 - 1 ~ 1 - 4 lambda_e per step: O(1/lambda_e) steps.

Comparing with bin/train's metrics.jsonl: `weight_norm_sq` there is the squared norm of ALL trainable
weights (biases, BN scales and offsets and the classifier are not scale-invariant) and `effective_lr` is
lr / weight_norm_sq. The formulas hold per scale-invariant group (`equilibrium_total_norm_sq` sums groups);
for a whole network compare trends and ratios between runs (equal lr * weight_decay -> equal effective
LR, norms in proportion to lr), not absolute values. Heavy-ball momentum is not covered here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _check(lr: float, weight_decay: float) -> float:
    lam_e = lr * weight_decay
    if not lr > 0 or not weight_decay > 0:
        raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be positive (no equilibrium without "
                         "weight decay: the norm grows without bound)")
    if not lam_e < 1.0:
        raise ValueError(f"lr * weight_decay = {lam_e} must be below 1")
    return lam_e


def intrinsic_lr(lr: float, weight_decay: float) -> float:
    """lambda_e = lr * weight_decay (dimensionless, per step)."""
    return _check(lr, weight_decay)


def equilibrium_norm_sq(lr: float, weight_decay: float, unit_grad_norm_sq: float) -> float:
    """||w||^2 at equilibrium, sqrt(lr G / (lambda (2 - lr lambda))); G = E||g_unit||^2 (gradient at unit norm)."""
    lam_e = _check(lr, weight_decay)
    return math.sqrt(lr * unit_grad_norm_sq / (weight_decay * (2.0 - lam_e)))


def equilibrium_effective_lr(lr: float, weight_decay: float, unit_grad_norm_sq: float) -> float:
    """lr / ||w||^2 at equilibrium, sqrt(lambda_e (2 - lambda_e) / G): a function of lambda_e = lr * lambda."""
    lam_e = _check(lr, weight_decay)
    return math.sqrt(lam_e * (2.0 - lam_e) / unit_grad_norm_sq)


def equilibrium_total_norm_sq(lr: float, weight_decay: float, unit_grad_norms_sq: Sequence[float]) -> float:
    """Sum over scale-invariant groups of their equilibrium ||w_k||^2 (each group settles on its own)."""
    return float(sum(equilibrium_norm_sq(lr, weight_decay, g) for g in unit_grad_norms_sq))


def norm_sq_from_grad_norm_sq(lr: float, weight_decay: float, grad_norm_sq: float) -> float:
    """Equilibrium ||w||^2 from the mean squared gradient at the current scale, E||g||^2 = G / ||w||^2:
    ||w||^2 = lr E||g||^2 / (lambda (2 - lr lambda)) (the balance of the two terms of the recursion)."""
    lam_e = _check(lr, weight_decay)
    return lr * grad_norm_sq / (weight_decay * (2.0 - lam_e))


def implied_unit_grad_norm_sq(weight_norm_sq: float, lr: float, weight_decay: float) -> float:
    """G that makes `weight_norm_sq` an equilibrium: lambda (2 - lr lambda) ||w||^4 / lr."""
    lam_e = _check(lr, weight_decay)
    return weight_decay * (2.0 - lam_e) * weight_norm_sq ** 2 / lr


def relaxation_steps(lr: float, weight_decay: float) -> float:
    """Time constant (steps) of the norm's approach to equilibrium, linearised: -1 / log|2 (1 - lambda_e)^2 - 1|,
    about 1 / (4 lambda_e) for small lambda_e."""
    lam_e = _check(lr, weight_decay)
    return -1.0 / math.log(abs(2.0 * (1.0 - lam_e) ** 2 - 1.0))


def norm_sq_trajectory(initial_norm_sq: float, lr: float, weight_decay: float, unit_grad_norm_sq: float,
                       steps: int) -> np.ndarray:
    """The mean-field recursion n' = (1 - lr lambda)^2 n + lr^2 G / n from n_0; shape (steps + 1,).

    It neglects the fluctuation of ||w||^2 around its mean (E[1/n] ~ 1/E[n]), which is small when many
    directions share the noise.
    """
    _check(lr, weight_decay)
    out = np.empty(steps + 1)
    out[0] = initial_norm_sq
    a, b = (1.0 - lr * weight_decay) ** 2, lr * lr * unit_grad_norm_sq
    for t in range(steps):
        out[t + 1] = a * out[t] + b / out[t]
    return out
