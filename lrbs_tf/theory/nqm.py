"""The Noisy Quadratic Model (Zhang et al. 2019): steps to a target loss vs batch size, per optimizer.

Per coordinate i (the Hessian's eigenbasis; the rebuttal notes this is without loss of generality for
rotation-invariant optimizers): curvature h_i, per-example gradient noise variance c_i, batch size B.

    sgd               theta' = theta - a (h theta + xi),                 Var xi = c/B
    precond           theta' = theta - a h^-p (h theta + xi)             (P = H^-p)
    momentum          v' = beta v - a (h theta + xi), theta' = theta + v'  (heavy ball)
    precond_momentum  momentum on the preconditioned gradient h^-p (h theta + xi)
    ema               sgd, evaluated at theta~' = gamma theta~ + (1 - gamma) theta'   (theta~_0 = theta_0)

The expected loss 0.5 sum_i h_i E[theta_i^2] has an exact closed form at any step t (`nqm_dynamics`).
`sweep` finds, for every batch size, the learning rate (and momentum or EMA decay, over a grid) that
reaches `target_loss` in the fewest steps (`nqm_tune`); `critical_batch_size` reads off where perfect
scaling ends. Default problem (the paper's): h_i = 1/i, d = 10^4, C = H, E[theta_0^2] = 1,
target loss 0.01, B = 2^2 ... 2^21.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from lrbs_tf.theory.nqm_dynamics import PairDynamics, ScalarDynamics, dense_first_crossing, first_crossing
from lrbs_tf.theory.nqm_tune import Tuned, tune_grid, tune_local

OPTIMIZERS = ("sgd", "momentum", "precond", "precond_momentum", "ema")
DEFAULT_BATCH_SIZES = tuple(2 ** k for k in range(2, 22))
DEFAULT_MOMENTA = (0.0, 0.5, 0.9, 0.95, 0.99, 0.995, 0.999)  # bin/nqm's --momenta default
DEFAULT_EMA_DECAYS = (0.0, 0.5, 0.9, 0.99, 0.999)  # bin/nqm's --ema_decays default
# bin/nqm's other defaults (lrbs_tf.cli.flags reads them here).
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "precond")
DEFAULT_PRECOND_POWER = 0.5    # p in P = H^-p
DEFAULT_DIM = 10_000           # coordinates d of h_i = 1/i
DEFAULT_TARGET_LOSS = 0.01     # units of 0.5 sum_i h_i theta_i^2
DEFAULT_LR_PER_DECADE = 4      # learning rates per decade of the search grid
DEFAULT_MAX_STEPS = 10 ** 9    # settings needing more steps never reach the target
VERIFY_BELOW = 20_000  # crossings up to this many steps are checked step by step when the loss may oscillate


@dataclasses.dataclass(frozen=True)
class NQMProblem:
    """curvatures h (d,) > 0, noise c (d,) >= 0 (per-example gradient variance per coordinate),
    init_second_moment E[theta_0^2] (d,), target_loss in the units of 0.5 sum h theta^2."""
    curvatures: np.ndarray
    noise: np.ndarray
    init_second_moment: np.ndarray
    target_loss: float

    @property
    def dim(self) -> int:
        return int(self.curvatures.shape[0])

    @property
    def initial_loss(self) -> float:
        return float(0.5 * np.sum(self.curvatures * self.init_second_moment))


def default_problem(dim: int = 10_000, target_loss: float = 0.01) -> NQMProblem:
    """h_i = 1/i (i = 1..dim), C = H, theta_0 ~ N(0, I): the NQM paper's problem."""
    h = 1.0 / np.arange(1, dim + 1, dtype=np.float64)
    return NQMProblem(h, h.copy(), np.ones(dim), float(target_loss))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """name in OPTIMIZERS; precond_power p of P = H^-p (0 for the unpreconditioned ones)."""
    name: str
    precond_power: float = 0.0

    @property
    def second(self) -> str | None:
        """The second hyperparameter tuned over a grid: 'momentum', 'ema_decay' or None."""
        return {"momentum": "momentum", "precond_momentum": "momentum", "ema": "ema_decay"}.get(self.name)


def optimizer_spec(name: str, precond_power: float = 0.5) -> OptimizerSpec:
    """The spec of a named optimizer; precond_power only applies to precond and precond_momentum."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown NQM optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if not 0.0 <= precond_power <= 1.0:
        raise ValueError(f"precond_power={precond_power} is outside [0, 1]")
    return OptimizerSpec(name, precond_power if name.startswith("precond") else 0.0)


def lr_stability_limit(problem: NQMProblem, spec: OptimizerSpec, second: float = 0.0) -> float:
    """The largest stable learning rate (exclusive): a h_max^(1-p) < 2, or < 2 (1 + beta) with momentum."""
    x_per_lr = float(np.max(problem.curvatures ** (1.0 - spec.precond_power)))
    factor = 1.0 + second if spec.second == "momentum" else 1.0
    return 2.0 * factor / x_per_lr


def build_dynamics(problem: NQMProblem, spec: OptimizerSpec, lrs: np.ndarray, batch_size: float,
                   seconds: np.ndarray | None = None,
                   powers: tuple[np.ndarray, np.ndarray] | None = None) -> ScalarDynamics | PairDynamics:
    """The closed-form dynamics of K candidates: lrs (K,) and seconds (K,) (momentum or EMA decay).

    batch_size may be math.inf (no gradient noise). powers: (h^(1-p), h^-p), precomputed by callers that
    build many times (a float power per coordinate is a large part of the cost).
    """
    h, s0 = problem.curvatures, problem.init_second_moment
    h_x, h_amp = powers or (h ** (1.0 - spec.precond_power), h ** (-spec.precond_power))
    lrs = np.asarray(lrs, dtype=np.float64)[:, None]
    x = lrs * h_x                                          # (K, d) contraction per step
    amp = lrs * h_amp                                      # (K, d) multiplier of the noise xi
    noise_var = np.broadcast_to(problem.noise / batch_size, x.shape)
    weights = 0.5 * h
    if spec.second is None:
        return ScalarDynamics(x, amp * amp * noise_var, s0, weights)
    sec = np.broadcast_to(np.asarray(seconds, dtype=np.float64)[:, None], x.shape)
    q = amp * amp * noise_var  # variance injected per step
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.second == "momentum":
            # theta_{t+1} = (1 + beta - x) theta_t - beta theta_{t-1} - amp xi_t is an AR(2) process:
            # gamma0 = (1 + beta) q / ((1 - beta) x (2 (1 + beta) - x)), gamma1 = (1 + beta - x) gamma0/(1 + beta),
            # and v_t = theta_t - theta_{t-1} gives E[theta v] = gamma0 - gamma1, E[v^2] = 2 (gamma0 - gamma1).
            g0 = (1.0 + sec) * q / ((1.0 - sec) * x * (2.0 * (1.0 + sec) - x))
            cross = g0 * x / (1.0 + sec)  # gamma0 - gamma1
            zero = np.zeros_like(s0)
            return PairDynamics(1.0 - x, sec, -x, sec, (g0, cross, 2.0 * cross), np.stack([s0, zero, zero]),
                                0, weights)
        # EMA of an AR(1) theta (coefficient r = 1 - x, variance s): E[theta theta~] = s (1 - g)/(1 - g r),
        # E[theta~^2] = s (1 - g)(1 + g r)/((1 + g)(1 - g r)).
        r = 1.0 - x
        s_inf = q / (x * (2.0 - x))
        cross = s_inf * (1.0 - sec) / (1.0 - sec * r)
        ema = cross * (1.0 + sec * r) / (1.0 + sec)
        return PairDynamics(r, np.zeros_like(x), (1.0 - sec) * r, sec, (s_inf, cross, ema),
                            np.stack([s0, s0, s0]), 1, weights)


def second_moments(problem: NQMProblem, optimizer: str, lr: float, batch_size: float,
                   steps: Sequence[int], momentum: float = 0.0, ema_decay: float = 0.0,
                   precond_power: float = 0.5) -> np.ndarray:
    """Closed-form E[theta_i^2] (of the EMA for 'ema') after each of `steps` (T,); shape (T, d)."""
    spec = optimizer_spec(optimizer, precond_power)
    second = momentum if spec.second == "momentum" else ema_decay
    dyn = build_dynamics(problem, spec, np.array([lr]), batch_size, np.array([second]))
    steps = np.asarray(steps, dtype=np.int64)
    out = np.empty((steps.size, problem.dim))
    start = steps == 0
    out[start] = problem.init_second_moment
    if np.any(~start):
        out[~start] = dyn.second_moment(steps[~start], np.zeros(int(np.sum(~start)), dtype=np.int64))
    return out


def expected_loss(problem: NQMProblem, optimizer: str, lr: float, batch_size: float, steps: Sequence[int],
                  momentum: float = 0.0, ema_decay: float = 0.0, precond_power: float = 0.5) -> np.ndarray:
    """Closed-form expected loss 0.5 sum_i h_i E[theta_i^2] after each of `steps`; shape (T,)."""
    m2 = second_moments(problem, optimizer, lr, batch_size, steps, momentum, ema_decay, precond_power)
    return 0.5 * m2 @ problem.curvatures


def steps_to_target(problem: NQMProblem, optimizer: str, lr: float, batch_size: float,
                    momentum: float = 0.0, ema_decay: float = 0.0, precond_power: float = 0.5,
                    max_steps: int = 10 ** 9, verify_below: int = VERIFY_BELOW) -> float:
    """Steps until the expected loss first reaches problem.target_loss (inf if never within max_steps).

    Exact when the loss is non-increasing (checked) or the crossing is at most verify_below steps (every
    earlier step is then checked); otherwise the crossing found by bisection (see `first_crossing`).
    """
    spec = optimizer_spec(optimizer, precond_power)
    second = momentum if spec.second == "momentum" else ema_decay
    dyn = build_dynamics(problem, spec, np.array([lr]), batch_size, np.array([second]))
    return float(first_crossing(dyn, problem.target_loss, None, max_steps, verify_below)[0][0])


def _verified(problem: NQMProblem, spec: OptimizerSpec, r: Tuned, verify_below: int) -> Tuned:
    """r with its steps made the exact first crossing where they are at most verify_below, and flagged."""
    if not np.isfinite(r.steps):
        return r
    second = r.momentum if spec.second == "momentum" else r.ema_decay
    dyn = build_dynamics(problem, spec, np.array([r.lr]), r.batch_size, np.array([second]))
    if dyn.monotone[0]:
        return r
    if r.steps > verify_below:
        return dataclasses.replace(r, exact=False)
    first = dense_first_crossing(dyn, problem.target_loss, np.array([0]), np.array([int(r.steps) - 1]))[0]
    return dataclasses.replace(r, steps=float(min(r.steps, first)))


def _builder(problem: NQMProblem, spec: OptimizerSpec, batch_size: float):
    powers = (problem.curvatures ** (1.0 - spec.precond_power), problem.curvatures ** (-spec.precond_power))
    return lambda lrs, seconds: build_dynamics(problem, spec, lrs, batch_size, seconds, powers)


def _stationary(problem: NQMProblem, spec: OptimizerSpec, batch_size: float):
    return lambda lr, second: float(build_dynamics(problem, spec, np.array([lr]), batch_size,
                                                   np.array([second])).stationary_loss[0])


def base_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """The optimizer that `spec` reduces to at momentum / EMA decay 0 (itself when it has no second)."""
    if spec.second is None:
        return spec
    return OptimizerSpec("precond" if spec.name == "precond_momentum" else "sgd", spec.precond_power)


def sweep(problem: NQMProblem, spec: OptimizerSpec, batch_sizes: Sequence[float],
          seconds: Sequence[float] = (), base: Sequence[Tuned] | None = None, lr_per_decade: int = 4,
          max_steps: int = 10 ** 9, verify_below: int = VERIFY_BELOW) -> list[Tuned]:
    """The tuned steps to target for every batch size (ascending) and then for B = inf (no noise).

    seconds: the momentum or EMA-decay grid (ignored for sgd and precond). A larger batch only lowers the
    noise, which lowers E[theta^2] at every step for a fixed setting, so a batch size's best steps bound
    the next one's: that bound prunes the search, and the best setting seeds it. Momentum and EMA are
    seeded by their base optimizer (sgd or precond, `base`: its sweep over the same batch sizes, computed
    when None) at equal effective learning rate a / (1 - beta); with 0 in `seconds` the base optimizer's
    steps are reachable, so they bound the search too. The search ranks settings by the crossing its
    bisection finds; the winner's steps are then made exact (`_verified`) when at most verify_below.
    """
    sizes = [float(b) for b in sorted(set(float(b) for b in batch_sizes))] + [math.inf]
    if spec.second is None:
        seconds = [0.0]
    else:
        seconds = sorted(set(float(s) for s in seconds)) or [0.0]
        if not all(0.0 <= s < 1.0 for s in seconds):
            raise ValueError(f"{spec.second} values {seconds} must lie in [0, 1)")
        if base is None:
            base = sweep(problem, base_optimizer(spec), batch_sizes, lr_per_decade=lr_per_decade,
                         max_steps=max_steps, verify_below=verify_below)
        if len(base) != len(sizes):
            raise ValueError(f"base has {len(base)} results for {len(sizes)} batch sizes (with B = inf)")
    limits = {s: lr_stability_limit(problem, spec, s) for s in seconds}
    momentum = spec.second == "momentum"
    out: list[Tuned] = []
    prev: Tuned | None = None
    for i, b in enumerate(sizes):
        seeds, bounds = [], []
        ref = base[i] if spec.second is not None else None
        if ref is not None and np.isfinite(ref.steps):
            if 0.0 in limits:  # the base optimizer is the second value 0: its steps are reachable
                seeds.append((0.0, ref.lr))
                bounds.append(ref.steps)
            if prev is None or not np.isfinite(prev.steps):
                # Equal effective lr a / (1 - beta): where momentum and SGD agree at small batch sizes.
                seeds += [(s, ref.lr * (1.0 - s) if momentum else ref.lr) for s in seconds]
        if prev is not None and np.isfinite(prev.steps):
            grow = 2.0 if math.isinf(b) else b / prev.batch_size  # perfect scaling: the best lr grows with B
            p_sec = {"momentum": prev.momentum, "ema_decay": prev.ema_decay}.get(spec.second, 0.0)
            eff = prev.lr / (1.0 - p_sec) if momentum else prev.lr
            seeds += [(p_sec, prev.lr)] + [(s, eff * (1.0 - s) * grow if momentum else eff * grow) for s in seconds]
            bounds.append(prev.steps)
        build = _builder(problem, spec, b)
        if not seeds or spec.second == "ema_decay":
            # Nothing to start from; or EMA, whose steps-vs-lr curve has two basins (a small lr, or one at
            # the stability edge whose noise the average removes) that a local search can miss.
            search = tune_grid(build, problem.target_loss, limits, problem.dim, lr_per_decade=lr_per_decade,
                               max_steps=max_steps, upper=min(bounds) if bounds else None,
                               hint=seeds[0] if seeds else None)
        else:
            search = tune_local(build, problem.target_loss, limits, problem.dim, seeds,
                                ratio=10.0 ** (1.0 / lr_per_decade), upper=min(bounds) if bounds else None,
                                max_steps=max_steps)
        result = search.result(spec.name, b, spec.second, _stationary(problem, spec, b))
        if math.isinf(b) and not (not seeds or spec.second == "ema_decay"):
            # The noise-free floor sets the critical batch size: search the whole grid as well, pruned by
            # (and seeded with) the local optimum, so the floor does not depend on where the sweep came from.
            hint = (result.momentum if momentum else result.ema_decay if spec.second else 0.0, result.lr)
            found = np.isfinite(result.steps)
            wide = tune_grid(build, problem.target_loss, limits, problem.dim, lr_per_decade=lr_per_decade,
                             max_steps=max_steps, upper=result.steps if found else min(bounds, default=None),
                             hint=hint if found else None)
            result = wide.result(spec.name, b, spec.second, _stationary(problem, spec, b))
        prev = _verified(problem, spec, result, verify_below)
        out.append(prev)
    return out


def critical_batch_size(batch_sizes: Sequence[float], steps: Sequence[float], min_steps: float,
                        factor: float = 2.0) -> float | None:
    """The batch size at which the steps to target fall to factor * min_steps (min_steps: B = inf).

    In the two-regime model steps(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018), this is exactly
    B_crit for factor 2: below it steps halve when B doubles (perfect scaling), above it they saturate at
    S_min. Interpolated log-log between the two sweep points that bracket it; None when the sweep does not
    bracket it (already within the factor at the smallest batch, or not yet at the largest).
    """
    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    level = factor * min_steps
    hit = np.flatnonzero(np.isfinite(s) & (s <= level))
    if hit.size == 0 or hit[0] == 0 or not np.isfinite(s[hit[0] - 1]):
        return None
    j = hit[0]
    lb0, lb1, ls0, ls1 = np.log(b[j - 1]), np.log(b[j]), np.log(s[j - 1]), np.log(s[j])
    if ls1 == ls0:
        return float(b[j])
    return float(np.exp(lb0 + (np.log(level) - ls0) * (lb1 - lb0) / (ls1 - ls0)))
