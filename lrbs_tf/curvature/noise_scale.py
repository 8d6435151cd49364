"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) and its standard error,
from per-example gradients summarised per group of examples. Numpy only.

Notation: n examples with per-example gradients g_i, mean g_bar, deviations d_i = g_i - g_bar. Treating the
n examples as an i.i.d. sample of the training set (the noise model docs/theory.md states),

    tr Sigma ~ S = sum_i |d_i|^2 / (n - 1)                  (unbiased)
    |G|^2    ~ U = |g_bar|^2 - S / n                          (unbiased: E |g_bar|^2 = |G|^2 + tr Sigma / n)
    B_simple = S / U                                         (examples)

U is McCandlish et al.'s two-batch estimator (their appendix A.1) with batches of 1 and n. It is
(1 / (n (n - 1))) sum_{i != j} g_i . g_j, which can be negative when |G|^2 is small against tr Sigma / n:
then B_simple is not resolved by n examples (of order n or larger) and is reported as undefined.

**Standard error: delete-a-group jackknife** over K groups of consecutive examples (Busing, Meijer & van der
Leeden 1999, for unequal group sizes). Why not the delta method: its first-order term sees only the
variance 4 G' Sigma G / n of |g_bar|^2 and misses 2 tr(Sigma^2) / n^2, which dominates exactly where B_simple
is large (|G|^2 of order tr Sigma / n, late in training), so it would call a noise-dominated estimate
precise. Why not a bootstrap over examples: a resample's |g_bar*|^2 needs every g_i . g_j (an n x n Gram
matrix of d-dimensional gradients) or the gradients themselves. Deleting group k needs only three numbers
per group, accumulated in the per-example pass:

    q_k = sum_{i in k} |d_i|^2,   p_k = g_bar . D_k,   r_k = |D_k|^2,   D_k = sum_{i in k} d_i.

Without group k (n_R = n - n_k examples; sum_{i not in k} d_i = -D_k):
|g_bar_R|^2 = |g_bar|^2 - 2 p_k / n_R + r_k / n_R^2 and S_R = (Q - q_k - r_k / n_R) / (n_R - 1), Q = sum q_k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

GROUPS = 32  # jackknife groups in inference mode (batch-mode BN: one group per batch of the run's size)


@dataclasses.dataclass(frozen=True)
class NoiseScale:
    """B_simple (examples) with its jackknife standard error, and the two estimates it is the ratio of."""
    b_simple: float          # S / U; NaN when U <= 0 (not resolved)
    stderr: float            # jackknife; inf when some group's deletion leaves U <= 0
    grad_sq: float           # U, the unbiased |G|^2, (nats per parameter unit)^2
    grad_sq_stderr: float    # its jackknife standard error
    cov_trace: float         # S, the unbiased tr Sigma = n / (n - 1) x grad_cov_trace
    num_examples: int
    groups: int
    resolved: bool           # U > 2 x its standard error: |G| is told apart from the noise
    note: str = ""

    def fields(self) -> dict:
        """The noise_scale keys of sharpness.json."""
        return {"noise_scale": None if math.isnan(self.b_simple) else self.b_simple,
                "noise_scale_stderr": self.stderr, "noise_scale_grad_sq": self.grad_sq,
                "noise_scale_grad_sq_stderr": self.grad_sq_stderr, "noise_scale_cov_trace": self.cov_trace,
                "noise_scale_groups": self.groups, "noise_scale_resolved": self.resolved,
                "noise_scale_note": self.note}


def _estimate(gbar_sq: np.ndarray, q: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = q / (n - 1.0)
    u = gbar_sq - s / n
    return s, u


def jackknife_se(theta: float, theta_del: np.ndarray, sizes: np.ndarray) -> float:
    """Delete-a-group jackknife standard error with group sizes `sizes` (Busing et al. 1999): pseudo-values
    h_k theta - (h_k - 1) theta_(k) with h_k = n / n_k; for equal groups the usual
    sqrt((K - 1) / K sum (theta_(k) - mean)^2)."""
    n = float(sizes.sum())
    h = n / sizes
    k = len(sizes)
    pseudo = h * theta - (h - 1.0) * theta_del
    theta_j = k * theta - float(np.sum((1.0 - sizes / n) * theta_del))
    return float(math.sqrt(np.sum((pseudo - theta_j) ** 2 / (h - 1.0)) / k))


def from_groups(gbar_sq: float, sizes: Sequence[int], q: Sequence[float], p: Sequence[float],
                r: Sequence[float]) -> NoiseScale:
    """B_simple from |g_bar|^2 and each group's (n_k, q_k, p_k, r_k) (module docstring)."""
    sizes, q, p, r = (np.asarray(a, dtype=np.float64) for a in (sizes, q, p, r))
    n, groups = int(sizes.sum()), len(sizes)
    if n < 2:
        raise ValueError(f"B_simple needs at least 2 examples, got {n}")
    s, u = _estimate(np.float64(gbar_sq), q.sum(), np.float64(n))
    s, u = float(s), float(u)
    notes = []
    b = s / u if u > 0 else math.nan
    if groups < 2:
        se = se_u = math.nan
        notes.append("one group: no jackknife standard error")
    else:
        n_r = n - sizes
        gbar_sq_r = gbar_sq - 2.0 * p / n_r + r / n_r ** 2
        s_r, u_r = _estimate(gbar_sq_r, q.sum() - q - r / n_r, n_r)
        se_u = jackknife_se(u, u_r, sizes)
        se = jackknife_se(b, s_r / u_r, sizes) if u > 0 and np.all(u_r > 0) else math.inf
    resolved = bool(u > 0 and math.isfinite(se_u) and u > 2.0 * se_u)
    if u <= 0:
        notes.append(f"the unbiased |G|^2 is {u:.3g} <= 0: the mean gradient is not resolved from the noise by "
                     f"{n} examples (B_simple of order {n} or more), so B_simple is undefined")
    elif not resolved:
        notes.append(f"|G|^2 = {u:.3g} is within 2 standard errors ({se_u:.3g}) of 0: B_simple is dominated by "
                     "noise, as near a minimum where G -> 0 (measure earlier in training: bin/sharpness --epoch)")
    return NoiseScale(b, se, u, se_u, s, n, groups, resolved, "; ".join(notes))
