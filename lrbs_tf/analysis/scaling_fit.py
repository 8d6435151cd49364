"""McCandlish et al.'s (2018) model of steps to result, S(B) = S_min (1 + B_crit / B), fitted to measured steps.

Below the critical batch size B_crit doubling the batch halves the steps (perfect scaling); above it the
steps saturate at S_min, the steps of full-batch training. Equivalently (S/S_min - 1)(E/E_min - 1) = 1 with
E = B S examples and E_min = S_min B_crit, the examples needed at small batch.

The fit is least squares on log steps (the steps span orders of magnitude and their scatter, from tuning
the learning rate on a grid, is relative): minimise sum_i (log S_i - u - log(1 + e^v / B_i))^2 over
u = log S_min and v = log B_crit with scipy.optimize.least_squares, started from the best point of a scan
over v (for a fixed v the best u is the mean residual, so the scan is exact and cheap).

The interval is the profile-likelihood (F-based) region of nonlinear least squares (Bates & Watts 1988,
sec. 6.1): the parameter values whose residual sum of squares, minimised over the other parameter, is at
most RSS_min (1 + F(level; 1, n - 2) / (n - 2)). It is exact for a linear model, follows the curvature of
this one, and is open-ended where the data do not bound the parameter: when the steps still fall as 1/B at
the largest batch measured, no upper end for B_crit is found and b_crit_high is inf (and s_min_low 0).
A Wald interval from the Jacobian would be finite and wrong there. Numpy and scipy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import optimize, stats as sps

from lrbs_tf.core.text import plural

LEVEL = 0.95            # the intervals' coverage
SPAN = math.log(1e4)    # v is searched from B_lo / 1e4 to B_hi * 1e4: beyond, the data cannot tell
SCAN_POINTS = 4001      # grid over v for the start and the interval ends (spacing ~0.6%)


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """S_min (optimizer steps) and B_crit (examples per step) with their LEVEL intervals.

    NaN where not identified (note says why); an interval end the data do not bound is 0 or inf.
    residual_sd: the root mean square log residual (n - 2 degrees of freedom): 0.1 is ~10% scatter.
    """
    s_min: float
    b_crit: float
    s_min_low: float
    s_min_high: float
    b_crit_low: float
    b_crit_high: float
    e_min: float            # S_min B_crit: examples needed at small batch, determined even when B_crit is not
    n_points: int
    dof: int
    residual_sd: float
    converged: bool
    note: str = ""

    def as_dict(self) -> dict:
        return {"s_min": self.s_min, "b_crit": self.b_crit, "s_min_low": self.s_min_low,
                "s_min_high": self.s_min_high, "b_crit_low": self.b_crit_low, "b_crit_high": self.b_crit_high,
                "e_min": self.e_min, "n_batch_sizes": self.n_points, "dof": self.dof,
                "residual_sd_log": self.residual_sd, "converged": self.converged, "note": self.note}


def predict(batch_size: np.ndarray | float, s_min: float, b_crit: float) -> np.ndarray:
    """S(B) = S_min (1 + B_crit / B), steps."""
    return s_min * (1.0 + b_crit / np.asarray(batch_size, dtype=float))


def _residuals0(v: np.ndarray, log_b: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """(len(v), n): log S_i - log(1 + e^v / B_i), the residuals before the best u is taken out."""
    return log_s[None, :] - np.logaddexp(0.0, v[:, None] - log_b[None, :])


def _profile(v: np.ndarray, log_b: np.ndarray, log_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each v: the best u (the mean residual) and the residual sum of squares there."""
    r = _residuals0(np.atleast_1d(v), log_b, log_s)
    u = r.mean(axis=1)
    return u, ((r - u[:, None]) ** 2).sum(axis=1)


def _empty(n: int, note: str) -> ScalingFit:
    nan = math.nan
    return ScalingFit(nan, nan, nan, nan, nan, nan, nan, n, max(n - 2, 0), nan, False, note)


def _least_squares(log_b: np.ndarray, log_s: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float, bool]:
    """(u, v, success): scipy least squares from the best point of the scan over v."""
    grid = np.linspace(*bounds, SCAN_POINTS)
    u_grid, rss = _profile(grid, log_b, log_s)
    i = int(np.argmin(rss))

    def residuals(p):
        return log_s - p[0] - np.logaddexp(0.0, p[1] - log_b)

    res = optimize.least_squares(residuals, [u_grid[i], grid[i]], bounds=([-np.inf, bounds[0]], [np.inf, bounds[1]]),
                                 method="trf", x_scale=1.0, xtol=1e-12, ftol=1e-12, gtol=1e-12)
    u, v = float(res.x[0]), float(res.x[1])
    if _profile(np.array([v]), log_b, log_s)[1][0] > rss[i]:  # never worse than the scan
        u, v = float(u_grid[i]), float(grid[i])
    return u, v, bool(res.success)


def _edge(f, inside: float, outside: float) -> float:
    """The root of f between a point inside the region (f <= 0) and the next scan point outside (f > 0)."""
    return float(optimize.brentq(f, inside, outside, xtol=1e-10)) if f(inside) < 0 else inside


def _v_interval(v_hat: float, grid: np.ndarray, rss: np.ndarray, threshold: float, log_b: np.ndarray,
                log_s: np.ndarray) -> tuple[float, float]:
    """{v : RSS(v) <= threshold} around v_hat: from v_hat outwards to the first scan point outside, refined
    by root finding; -inf / +inf where the scan never leaves the region."""
    def f(v):
        return float(_profile(np.array([v]), log_b, log_s)[1][0]) - threshold

    above = np.nonzero((grid > v_hat) & (rss > threshold))[0]
    below = np.nonzero((grid < v_hat) & (rss > threshold))[0]
    hi = math.inf
    if above.size:
        j = int(above[0])
        hi = _edge(f, max(float(grid[j - 1]), v_hat), float(grid[j]))
    lo = -math.inf
    if below.size:
        j = int(below[-1])
        lo = _edge(f, min(float(grid[j + 1]), v_hat), float(grid[j]))
    return lo, hi


def _u_interval(grid: np.ndarray, u_grid: np.ndarray, rss: np.ndarray, threshold: float, n: int
                ) -> tuple[float, float]:
    """The projection on u of {(u, v): RSS <= threshold}: since RSS(u, v) = RSS(v) + n (u - u(v))^2, the
    u allowed at v are u(v) +- sqrt((threshold - RSS(v)) / n). As v grows without bound u(v) falls like -v
    (perfect scaling: S_min -> 0 as B_crit -> inf), so a region reaching the top of the scan leaves u
    unbounded below; as v falls u(v) tends to the mean log steps, so the upper end is always finite."""
    where = np.nonzero(rss <= threshold)[0]
    if not where.size:  # a zero-residual fit: the threshold is 0 and rounding leaves every scan point above it
        return math.nan, math.nan
    half = np.sqrt(np.maximum(threshold - rss[where], 0.0) / n)
    lo = -math.inf if where[-1] == len(grid) - 1 else float(np.min(u_grid[where] - half))
    return lo, float(np.max(u_grid[where] + half))


def fit_scaling(batch_sizes: Sequence[float], steps: Sequence[float], level: float = LEVEL) -> ScalingFit:
    """Fits S(B) = S_min (1 + B_crit / B) to the minimum steps measured at each batch size.

    batch_sizes, steps: one point per batch size (examples per step; optimizer steps), finite and > 0.
    Returns the fit with its profile-likelihood intervals at `level`; with 2 batch sizes the fit is exact
    and has no interval, with fewer none is made.
    """
    b, s = np.asarray(batch_sizes, dtype=float), np.asarray(steps, dtype=float)
    keep = np.isfinite(b) & np.isfinite(s) & (b > 0) & (s > 0)
    b, s = b[keep], s[keep]
    n = len(np.unique(b))
    if n < 2:
        return _empty(n, f"needs at least 2 batch sizes with a result, has {n}")
    log_b, log_s = np.log(b), np.log(s)
    bounds = (float(log_b.min()) - SPAN, float(log_b.max()) + SPAN)
    u, v, success = _least_squares(log_b, log_s, bounds)
    rss_min = float(np.sum((log_s - u - np.logaddexp(0.0, v - log_b)) ** 2))
    dof = len(s) - 2
    grid = np.sort(np.append(np.linspace(*bounds, SCAN_POINTS), v))  # v itself: the region is never empty
    u_grid, rss = _profile(grid, log_b, log_s)
    notes = []
    exact = rss_min <= 1e-20 * max(1.0, float(np.sum(log_s ** 2)))
    if dof > 0 and exact:
        v_lo, v_hi, u_lo, u_hi = v, v, u, u
        notes.append("zero residual: the steps follow S(B) exactly, so the interval is degenerate (the estimate "
                     "itself: no scatter to measure a width from)")
    elif dof > 0:
        threshold = rss_min * (1.0 + sps.f.ppf(level, 1, dof) / dof)
        v_lo, v_hi = _v_interval(v, grid, rss, threshold, log_b, log_s)
        u_lo, u_hi = _u_interval(grid, u_grid, rss, threshold, len(s))
        if dof < 3:
            notes.append(f"only {plural(len(s), 'batch size')} ({plural(dof, 'degree')} of freedom): the interval "
                         "is wide")
    else:
        v_lo = v_hi = u_lo = u_hi = math.nan
        notes.append("2 batch sizes: the curve passes through both, no interval")
    s_min, b_crit, e_min = math.exp(u), math.exp(v), math.exp(u + v)
    at_bound = min(v - bounds[0], bounds[1] - v) < 1e-3
    if at_bound and v > 0.5 * (bounds[0] + bounds[1]):
        notes.append(f"steps still fall as 1/B up to B={b.max():g}: B_crit is above the measured batch sizes, "
                     "not identified (E_min = S_min B_crit is)")
        s_min = b_crit = math.nan
    elif at_bound:
        notes.append(f"steps do not fall with the batch size from B={b.min():g}: B_crit is below the measured "
                     "batch sizes, not identified")
        b_crit = math.nan
    elif not b.min() <= b_crit <= b.max():
        notes.append(f"B_crit={b_crit:.3g} lies outside the measured batch sizes {b.min():g}..{b.max():g}: "
                     "an extrapolation")
    if dof > 0 and not exact and not (math.isfinite(v_lo) and math.isfinite(v_hi)):
        notes.append(f"the {level:.0%} interval of B_crit is unbounded "
                     + ("above and below" if not (math.isfinite(v_lo) or math.isfinite(v_hi))
                        else "above" if not math.isfinite(v_hi) else "below"))
    if not success:
        notes.append("scipy least_squares did not report convergence (the scan's best point is used)")
    rmse = math.sqrt(rss_min / dof) if dof > 0 else math.nan
    return ScalingFit(s_min, b_crit, math.exp(u_lo), math.exp(u_hi), math.exp(v_lo), math.exp(v_hi), e_min,
                      len(s), dof, rmse, success and not at_bound, "; ".join(notes))
