"""Exact closed-form expected dynamics of the Noisy Quadratic Model, vectorised over (candidate, coordinate).

Zhang et al. 2019 (`../shared/papers/zhang2019_nqm_rebuttal.txt`; REFERENCES §4). Per coordinate i the loss is
0.5 h_i theta_i^2 and a mini-batch gradient is h_i theta_i + xi with Var xi = c_i / B. Every optimizer here
is a linear recursion z' = M z + n xi of a 1- or 2-dimensional state z per coordinate, so the second moment
P_t = E[z_t z_t'] has the exact closed form

    P_t = M^t (P_0 - P_inf) M^t' + P_inf,    P_inf = M P_inf M' + (c/B) n n'    (discrete Lyapunov),

and the expected loss at step t is 0.5 sum_i h_i e' P_t e (e reads the evaluated parameter out of z).
Nothing is simulated: `loss(t)` costs O(d) per candidate for any t, which is what makes a bisection on t
possible. Units: t in optimizer steps, losses in the units of 0.5 h theta^2.

For a 2x2 M, Cayley-Hamilton gives M^t = f_t M - det(M) f_{t-1} I with f_t = (mu1^t - mu2^t)/(mu1 - mu2);
`_PowerSum` evaluates f_t in real arithmetic without the cancellation that an eigendecomposition suffers
when mu1 ~ mu2 (critically damped coordinates), which is why it is used instead of numpy.linalg.eig.
"""

from __future__ import annotations

import numpy as np


class _PowerSum:
    """f_t = (mu1^t - mu2^t) / (mu1 - mu2) for the roots mu = m +- sqrt(disc) of x^2 - 2 m x + det.

    Per-element constants are computed once so that an evaluation of (f_t, f_{t-1}) at integer t >= 1
    costs about three transcendental functions per element. Exact limit t m^(t-1) at disc = 0.
    """

    def __init__(self, m: np.ndarray, disc: np.ndarray, det: np.ndarray):
        shape = np.shape(m)
        self.cplx = disc < 0
        self.real = ~self.cplx
        sq = np.sqrt(np.abs(disc))  # |mu1 - mu2| / 2
        am = np.abs(m)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            # Complex roots rho e^{+-i phi}, rho = sqrt(det), sin(phi) = sq / rho:
            # f_t = rho^(t-1) sin(t phi) / sin(phi), which tends to t rho^(t-1) as phi -> 0.
            self.phi = np.arctan2(sq, m, where=self.cplx, out=np.zeros(shape))
            # Real roots: big = |m| + sq, q = (|m| - sq)/big in [-1, 1], f_t = sign(m)^(t-1) big^(t-1)
            # (1 - q^t)/(1 - q). For q in (0, 1), 1 - q = 2 sq/big and q^t - 1 = expm1(t log1p(-(1 - q))) are
            # formed without cancellation, so the ratio tends to t (not 0/0) as sq -> 0.
            radius = np.sqrt(np.abs(det), where=self.cplx, out=am + sq)
            safe = np.where(radius > 0, radius, 1.0)
            gap = np.where(self.cplx, 1.0, np.where(radius > 0, 2.0 * sq / safe, 1.0))  # 1 - q
            q = 1.0 - gap
            self.deg = self.real & (sq == 0) & (radius > 0)  # a double root
            self.real &= ~self.deg
            pos = self.real & (q > 0)
            self.qneg = self.real & (q < 0)
            self.mneg = self.real & (m < 0)
            self.ell = np.log1p(-gap, where=pos, out=np.zeros(shape))
            np.log(np.abs(q), where=self.real & ~pos, out=self.ell)
            self.scale = np.where(self.cplx, safe / np.where(sq > 0, sq, 1.0), np.where(self.deg, 1.0, 1.0 / gap))
            self.radius = radius
            self.log_radius = np.log(np.maximum(radius, 1e-300))  # radius = 0 only for a nilpotent M
            self.inv_radius = 1.0 / np.maximum(radius, 1e-300)

    def _ratio(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """f_t / (sign(m)^(t-1) radius^(t-1)) for integer t (k,) >= 1; shape (k, d)."""
        tf = np.asarray(t, dtype=np.float64)[:, None]
        odd = (np.asarray(t) % 2 == 1)[:, None]
        cplx, real = self.cplx[rows], self.real[rows]
        e = np.expm1(tf * self.ell[rows], where=real, out=np.zeros(cplx.shape))  # q^t - 1 (|q|^t - 1 if q < 0)
        out = np.where(self.qneg[rows] & odd, 2.0 + e, -e)                     # 1 - q^t
        np.sin(tf * self.phi[rows], where=cplx, out=out)
        out *= self.scale[rows]
        return np.where(self.deg[rows], tf, out)

    def pair(self, t: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f_t, f_{t-1}) for integer t (k,) >= 1 at candidate rows (k,); shapes (k, d)."""
        t = np.asarray(t, dtype=np.int64)
        with np.errstate(under="ignore", over="ignore", invalid="ignore"):
            power = np.exp((t[:, None] - 1.0) * self.log_radius[rows])        # radius^(t-1)
            sign = np.where(self.mneg[rows] & (t % 2 == 0)[:, None], -1.0, 1.0)  # sign(m)^(t-1)
            f_t = sign * power * self._ratio(t, rows)
            f_tm1 = sign * power * self.inv_radius[rows] * self._ratio(np.maximum(t - 1, 1), rows)
            f_tm1 = np.where(self.mneg[rows], -f_tm1, f_tm1)                  # sign(m)^(t-2)
            f_tm1 = np.where((t > 1)[:, None], f_tm1, 0.0)                     # f_0 = 0
        return f_t, f_tm1


class ScalarDynamics:
    """s' = r s + q per coordinate (SGD and preconditioned SGD): s_t = r^t (s_0 - s_inf) + s_inf.

    x: (K, d) the contraction a h^(1-p); noise: (K, d) the per-step injected variance q = a^2 h^-2p c / B;
    s0: (d,) E[theta_0^2]; weights: (d,) 0.5 h_i. K candidates are evaluated at once.
    """

    def __init__(self, x: np.ndarray, noise: np.ndarray, s0: np.ndarray, weights: np.ndarray):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self.stable = np.all((x > 0) & (x < 2), axis=-1)  # |1 - x| < 1 for every coordinate
            self.log_r = 2.0 * np.log(np.abs(1.0 - x))
            s_inf = np.where(self.stable[:, None], noise / (x * (2.0 - x)), np.inf)
        self.weights = weights
        self.stationary_loss = np.where(self.stable, np.sum(weights * np.where(np.isfinite(s_inf), s_inf, 0.0),
                                                            axis=-1), np.inf)
        self.s_inf = np.where(np.isfinite(s_inf), s_inf, 0.0)
        self.excess = s0[None, :] - self.s_inf
        self.initial_loss = float(np.sum(weights * s0))
        # s0 >= s_inf in every coordinate makes every term, hence the loss, non-increasing in t.
        self.monotone = self.stable & np.all(self.excess >= 0, axis=-1)

    def second_moment(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """E[theta_t^2] per coordinate at integer steps t (k,) >= 1 for candidate rows (k,); shape (k, d)."""
        t = np.asarray(t, dtype=np.float64)[:, None]
        with np.errstate(under="ignore"):
            decay = np.exp(t * self.log_r[rows])
        return self.s_inf[rows] + decay * self.excess[rows]

    def loss(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Expected loss at integer steps t (k,) >= 1 for candidate rows (k,); shape (k,)."""
        return np.sum(self.weights * self.second_moment(t, rows), axis=-1)

    def stepper(self, rows: np.ndarray):
        """A function giving the expected loss of `rows` at t = 1, 2, 3, ... on successive calls, by the
        recursion (s_t - s_inf) = r (s_{t-1} - s_inf): a few multiplications per coordinate and step."""
        r = np.exp(self.log_r[rows])
        excess = self.excess[rows].copy()
        base = np.sum(self.weights * self.s_inf[rows], axis=-1)

        def step() -> np.ndarray:
            excess[...] *= r
            return base + excess @ self.weights
        return step


class PairDynamics:
    """z' = M z + n xi with a 2-dimensional state per coordinate (heavy-ball momentum, EMA of iterates).

    m00, m01, m10, m11: (K, d) entries of M; p_inf: the three (K, d) entries (P00, P01, P11) of the
    stationary second moment, P_inf = M P_inf M' + (c/B) n n' (closed forms in `nqm.build_dynamics`; only
    read where the recursion is stable); p0: (3, d) the initial (P00, P01, P11); readout: 0 or 1, the state
    component whose second moment enters the loss; weights: (d,) 0.5 h_i.
    """

    def __init__(self, m00, m01, m10, m11, p_inf, p0, readout: int, weights: np.ndarray):
        self.weights = weights
        m = 0.5 * (m00 + m11)
        self.det = m00 * m11 - m01 * m10
        self.power_sum = _PowerSum(m, m * m - self.det, self.det)
        self.stable = np.all(self.power_sum.radius < 1.0, axis=-1)  # spectral radius of M
        p_inf = [np.where(self.stable[:, None], p, 0.0) for p in p_inf]
        p0 = np.asarray(p0)
        self.d00, self.d01, self.d11 = (p0[j][None, :] - p_inf[j] for j in range(3))
        self.p_inf_out = p_inf[0 if readout == 0 else 2]
        # q_t = e' M^t = f_t (e' M) - det f_{t-1} e'
        self.w0, self.w1 = (m00, m01) if readout == 0 else (m10, m11)
        self.readout = readout
        self.m_entries = (m00, m01, m10, m11)
        self.stationary_loss = np.where(self.stable, np.sum(weights * self.p_inf_out, axis=-1), np.inf)
        self.initial_loss = float(np.sum(weights * p0[0 if readout == 0 else 2]))
        self.monotone = np.zeros(self.stable.shape, dtype=bool)  # oscillating modes: no general guarantee

    def second_moment(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """E[(e' z_t)^2] per coordinate at integer steps t (k,) >= 1 for candidate rows (k,); shape (k, d)."""
        f_t, f_tm1 = self.power_sum.pair(t, rows)
        back = self.det[rows] * f_tm1
        q0 = f_t * self.w0[rows]
        q1 = f_t * self.w1[rows]
        if self.readout == 0:
            q0 -= back
        else:
            q1 -= back
        return (self.d00[rows] * q0 * q0 + 2.0 * self.d01[rows] * q0 * q1 + self.d11[rows] * q1 * q1
                + self.p_inf_out[rows])

    def loss(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Expected loss at integer steps t (k,) >= 1 for candidate rows (k,); shape (k,)."""
        return np.sum(self.weights * self.second_moment(t, rows), axis=-1)

    def stepper(self, rows: np.ndarray):
        """A function giving the expected loss of `rows` at t = 1, 2, 3, ... on successive calls, by the
        homogeneous recursion X_t = M X_{t-1} M' of X_t = P_t - P_inf: 15 operations per coordinate and step."""
        a, b, c, d = (m[rows] for m in self.m_entries)
        coef = (a * a, 2 * a * b, b * b, a * c, a * d + b * c, b * d, c * c, 2 * c * d, d * d)
        x = [self.d00[rows].copy(), self.d01[rows].copy(), self.d11[rows].copy()]
        base = np.sum(self.weights * self.p_inf_out[rows], axis=-1)
        out = 0 if self.readout == 0 else 2

        def step() -> np.ndarray:
            x[0], x[1], x[2] = (coef[0] * x[0] + coef[1] * x[1] + coef[2] * x[2],
                                coef[3] * x[0] + coef[4] * x[1] + coef[5] * x[2],
                                coef[6] * x[0] + coef[7] * x[1] + coef[8] * x[2])
            return base + x[out] @ self.weights
        return step


def dense_first_crossing(dyn, target: float, rows: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """For each of `rows`, the first integer t <= t_end (k,) with expected loss <= target, by stepping
    every t from 1 (exact whatever the shape of the loss curve; O(t_end d)); t_end + 1 where none is."""
    rows = np.asarray(rows, dtype=np.int64)
    t_end = np.asarray(t_end, dtype=np.int64)
    first = t_end + 1
    if rows.size == 0:
        return first
    step = dyn.stepper(rows)
    open_ = np.ones(rows.size, dtype=bool)
    for t in range(1, int(t_end.max()) + 1):
        hit = open_ & (step() <= target) & (t <= t_end)
        first[hit] = t
        open_ &= ~hit
        if not np.any(open_ & (t < t_end)):
            break
    return first


def first_crossing(dyn, target: float, upper: np.ndarray | None, max_steps: int, verify_below: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Steps until the expected loss first reaches `target`, for every candidate of `dyn`.

    upper: (K,) optional step counts at which some competitor already has loss <= target: a candidate
    whose loss is still above target there cannot beat it (for a non-increasing loss); it gets inf steps
    after one evaluation. Unstable candidates, candidates whose stationary loss is not below target and
    candidates that need more than max_steps also get inf.

    Returns (steps (K,) float, loss_at_upper (K,)): the loss of the discarded candidates at `upper` (a
    score to rank them by; nan for the others, inf for unstable or unreachable ones).

    The search brackets the crossing (doubling t, or [0, upper]) and shrinks the bracket with safeguarded
    regula falsi (Illinois) on log(L(t) - L_inf), falling back to bisection, to a t with L(t-1) > target >=
    L(t). For a non-increasing loss (`dyn.monotone`: SGD and preconditioned SGD started above their
    stationary variance) that is the first crossing exactly. Momentum and EMA moments may oscillate, and an
    earlier excursion below target between probed steps would be missed: for candidates that are not
    monotone and whose crossing is at most `verify_below` steps, every earlier step is checked
    (`dense_first_crossing`), which makes the result the exact first crossing.
    """
    k = dyn.stable.shape[0]
    steps = np.full(k, np.inf)
    score = np.full(k, np.nan)
    if dyn.initial_loss <= target:
        steps[:] = 0.0
        return steps, score
    feasible = dyn.stable & (dyn.stationary_loss < target)
    score[~feasible] = np.inf
    alive = np.flatnonzero(feasible)
    lo = np.zeros(k, dtype=np.int64)
    hi = np.ones(k, dtype=np.int64)
    loss_lo = np.full(k, dyn.initial_loss)
    loss_hi = np.full(k, np.nan)
    open_ = alive
    if upper is not None:
        cap = np.minimum(np.asarray(upper, dtype=np.float64), max_steps)
        finite = np.isfinite(cap)
        hi[finite] = np.maximum(cap[finite], 1).astype(np.int64)
        probe = alive[finite[alive]]
        if probe.size:
            loss_hi[probe] = dyn.loss(hi[probe], probe)
        reached = loss_hi[probe] <= target
        score[probe[~reached]] = loss_hi[probe[~reached]]
        open_ = alive[~finite[alive]]
        alive = np.union1d(probe[reached], open_)
    # Doubling for the candidates without a bracket yet.
    while open_.size:
        loss_hi[open_] = dyn.loss(hi[open_], open_)
        up = open_[loss_hi[open_] > target]
        lo[up], loss_lo[up] = hi[up], loss_hi[up]
        hi[up] *= 2
        over = up[hi[up] > max_steps]
        alive = np.setdiff1d(alive, over)
        open_ = np.setdiff1d(up, over)
    # Shrink [lo, hi] keeping L(lo) > target >= L(hi).
    l_inf = dyn.stationary_loss
    with np.errstate(divide="ignore", invalid="ignore"):
        y_target = np.log(target - l_inf)
    y_lo = np.log(np.maximum(loss_lo - l_inf, 1e-300)) - y_target
    y_hi = np.log(np.maximum(loss_hi - l_inf, 1e-300)) - y_target
    last_side = np.zeros(k, dtype=np.int8)   # which end moved last: +1 lo, -1 hi
    width_ref = (hi - lo).astype(np.float64)  # the width two moves ago: bisect unless it halved since
    age = np.zeros(k, dtype=np.int64)
    todo = alive[hi[alive] - lo[alive] > 1]
    while todo.size:
        w = hi[todo] - lo[todo]
        a, b = y_lo[todo], y_hi[todo]
        usable = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b <= 0) & (a > b)
        interp = lo[todo] + np.floor(np.where(usable, a / np.where(usable, a - b, 1.0), 0.5) * w)
        bisect = ~usable | ((age[todo] >= 2) & (w > 0.5 * width_ref[todo]))
        mid = np.where(bisect, lo[todo] + w // 2, np.clip(interp, lo[todo] + 1, hi[todo] - 1)).astype(np.int64)
        val = dyn.loss(mid, todo)
        below = val <= target
        yv = np.log(np.maximum(val - l_inf[todo], 1e-300)) - y_target[todo]
        side = np.where(below, -1, 1).astype(np.int8)
        # Illinois: when the same end moves twice in a row, halve the other end's weight.
        stale = side == last_side[todo]
        y_lo[todo] = np.where(~below, yv, np.where(stale, 0.5 * a, a))
        y_hi[todo] = np.where(below, yv, np.where(stale, 0.5 * b, b))
        hi[todo] = np.where(below, mid, hi[todo])
        lo[todo] = np.where(below, lo[todo], mid)
        last_side[todo] = side
        age[todo] += 1
        reset = (age[todo] >= 2) & ((hi[todo] - lo[todo]) <= 0.5 * width_ref[todo]) | bisect
        width_ref[todo[reset]] = (hi[todo] - lo[todo])[reset]
        age[todo[reset]] = 0
        todo = todo[hi[todo] - lo[todo] > 1]
    steps[alive] = hi[alive]
    check = alive[~dyn.monotone[alive] & (hi[alive] <= verify_below) & (hi[alive] > 1)]
    if check.size:
        steps[check] = np.minimum(steps[check], dense_first_crossing(dyn, target, check, hi[check] - 1))
    return steps, score
