"""He, Liu & Tao (2019) PAC-Bayes bounds on the generalisation gap of SGD's stationary distribution.

The posterior is Q = N(theta*, Sigma) with Sigma the OU stationary covariance (eq. 17,
Sigma A + A Sigma = (eta/S) C) and the prior P = N(theta*, I); McAllester's bound with
KL(Q || P) = 0.5 (tr Sigma - d - log det Sigma) gives, with probability >= 1 - delta over N training examples,

    R(Q) <= R^(Q) + sqrt((KL + log(1/delta) + log N + 2) / (2N - 1)).

- Theorem 1 (eq. 16): the same with tr Sigma = (eta/2S) tr(C A^-1), which holds for any symmetric A and
  Sigma solving eq. 17 (take the trace of eq. 17 times A^-1), written over 8N - 4.
- Theorem 2 (eq. 18), under Assumption 1 (Sigma A symmetric, i.e. C commutes with A): then
  Sigma = (eta/2S) C A^-1 and log det Sigma = d log(eta/2S) + log det(C A^-1), over 4N - 2.
- Assumption 2 (eq. 19): d > (eta/2S) tr(C A^-1) = tr Sigma. The derivative of eq. 18's numerator with
  respect to k = eta/S is tr(C A^-1)/2 - d/k = (tr Sigma - d)/k, so the bound falls as eta/S grows (rises
  with S/eta, the paper's Corollary 1) exactly while Assumption 2 holds; it flips at eta/S = 2d / tr(C A^-1).

The loss must lie in [0, 1] (0-1 error): a gap bound >= 1 is vacuous. For networks the d log(2S/eta) term
makes it vacuous by orders of magnitude; the functions report that rather than hide it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np

from lrbs_tf.theory import ou

NOISE_MODELS = ("proportional", "isotropic")  # the first is bin/bound's default
DEFAULT_DELTA = 0.05  # the bound holds with probability at least 1 - delta


@dataclasses.dataclass(frozen=True)
class Bound:
    """One evaluation of a bound. gap: the bound on R(Q) - R^(Q) (same units as a [0, 1] loss);
    numerator/denominator: the fraction under the square root as printed in the paper's equation."""
    gap: float
    numerator: float
    denominator: float
    trace_sigma: float
    logdet_sigma: float
    kl: float
    dim: int
    num_train: int
    delta: float
    assumption2: bool

    @property
    def vacuous(self) -> bool:
        return not self.gap < 1.0


def stable_logdet(m: np.ndarray) -> float:
    """log det of a symmetric positive definite matrix via Cholesky (no overflow of det at large d)."""
    m = np.asarray(m, dtype=np.float64)
    try:
        chol = np.linalg.cholesky(0.5 * (m + m.T))
    except np.linalg.LinAlgError:
        raise ValueError("matrix is not positive definite: log det undefined") from None
    return float(2.0 * np.sum(np.log(np.diag(chol))))


def kl_to_standard_normal(trace_sigma: float, logdet_sigma: float, dim: int) -> float:
    """KL(N(mu, Sigma) || N(mu, I)) = 0.5 (tr Sigma - d - log det Sigma), in nats."""
    return 0.5 * (trace_sigma - dim - logdet_sigma)


def mcallester_gap(kl: float, num_train: int, delta: float) -> float:
    """sqrt((KL + log(1/delta) + log N + 2) / (2N - 1)): the form both theorems instantiate."""
    _check(num_train, delta)
    return math.sqrt((kl + math.log(1.0 / delta) + math.log(num_train) + 2.0) / (2.0 * num_train - 1.0))


def _check(num_train: int, delta: float) -> None:
    if not num_train >= 1:
        raise ValueError(f"num_train={num_train} must be at least 1")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must lie in (0, 1)")


def assumption2(trace_cainv: float, dim: int, lr: float, batch_size: float) -> bool:
    """He et al. eq. 19: d > tr(C A^-1) lr / (2 S), i.e. d > tr Sigma."""
    return dim > trace_cainv * lr / (2.0 * batch_size)


def sign_flip_ratio(trace_cainv: float, dim: int) -> float:
    """The lr/S at which Theorem 2's bound stops falling with lr/S: 2 d / tr(C A^-1) (tr Sigma = d there)."""
    return 2.0 * dim / trace_cainv


def theorem1(a: np.ndarray, c: np.ndarray, lr: float, batch_size: float, num_train: int,
             delta: float = 0.05) -> Bound:
    """Eq. 16 with Sigma from eq. 17 (dense A, C of shape (d, d); any C, commuting or not)."""
    _check(num_train, delta)
    sigma = ou.continuous_stationary_covariance(a, c, lr, batch_size)
    d = sigma.shape[0]
    trace_cainv = float(np.trace(np.linalg.solve(np.asarray(a, np.float64), np.asarray(c, np.float64))))
    logdet = stable_logdet(sigma)
    num = (lr / batch_size * trace_cainv - 2.0 * logdet - 2.0 * d + 4.0 * math.log(1.0 / delta)
           + 4.0 * math.log(num_train) + 8.0)
    den = 8.0 * num_train - 4.0
    trace_sigma = 0.5 * lr / batch_size * trace_cainv
    return Bound(math.sqrt(num / den), num, den, trace_sigma, logdet, kl_to_standard_normal(trace_sigma, logdet, d),
                 d, num_train, delta, assumption2(trace_cainv, d, lr, batch_size))


def theorem2(trace_cainv: float, logdet_cainv: float, dim: int, lr: float, batch_size: float,
             num_train: int, delta: float = 0.05) -> Bound:
    """Eq. 18 from tr(C A^-1), log det(C A^-1) and d: O(1), so usable at any network size."""
    _check(num_train, delta)
    if not lr > 0 or not batch_size > 0:
        raise ValueError(f"lr={lr} and batch_size={batch_size} must be positive")
    k = lr / batch_size
    num = (0.5 * k * trace_cainv + dim * math.log(2.0 / k) - logdet_cainv - dim + 2.0 * math.log(1.0 / delta)
           + 2.0 * math.log(num_train) + 4.0)
    den = 4.0 * num_train - 2.0
    trace_sigma = 0.5 * k * trace_cainv
    logdet_sigma = dim * math.log(0.5 * k) + logdet_cainv
    return Bound(math.sqrt(num / den), num, den, trace_sigma, logdet_sigma,
                 kl_to_standard_normal(trace_sigma, logdet_sigma, dim), dim, num_train, delta,
                 assumption2(trace_cainv, dim, lr, batch_size))


COMMUTE_RTOL = 1e-8  # ||AC - CA||_F / (||A||_F ||C||_F) above which A and C are taken not to commute


def commutator_norm(a: np.ndarray, c: np.ndarray) -> float:
    """||AC - CA||_F / (||A||_F ||C||_F): 0 when A and C commute (Assumption 1), at most 2."""
    a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
    scale = np.linalg.norm(a) * np.linalg.norm(c)
    return float(np.linalg.norm(a @ c - c @ a) / scale) if scale > 0 else 0.0


def theorem2_dense(a: np.ndarray, c: np.ndarray, lr: float, batch_size: float, num_train: int,
                   delta: float = 0.05, allow_noncommuting: bool = False) -> Bound:
    """Eq. 18 from dense A and C. Eq. 18 takes Sigma = (lr / 2S) C A^-1, which is the stationary covariance
    only when C and A commute (Assumption 1); otherwise its log det is not Sigma's and the number is not
    He et al.'s bound (theorem1 takes any C). Raises ValueError, naming the relative commutator norm, when
    it exceeds COMMUTE_RTOL; with allow_noncommuting a RuntimeWarning naming it instead."""
    a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
    k = commutator_norm(a, c)
    if k > COMMUTE_RTOL:
        message = (f"C and A do not commute (||AC - CA||_F / (||A||_F ||C||_F) = {k:.3g} > {COMMUTE_RTOL:g}): "
                   "Theorem 2's Sigma = (lr/2S) C A^-1 is not the stationary covariance (Assumption 1); "
                   "theorem1 takes any C")
        if not allow_noncommuting:
            raise ValueError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return theorem2(float(np.trace(np.linalg.solve(a, c))), stable_logdet(c) - stable_logdet(a), a.shape[0],
                    lr, batch_size, num_train, delta)


def theorem2_slope(trace_cainv: float, dim: int, ratio: float, gap: float, num_train: int) -> float:
    """d(gap)/d(lr/S) of eq. 18 at lr/S = ratio: (tr C A^-1 / 2 - d / ratio) / ((4N - 2) 2 gap)."""
    return (0.5 * trace_cainv - dim / ratio) / ((4.0 * num_train - 2.0) * 2.0 * gap)


def sweep_ratio(trace_cainv: float, logdet_cainv: float, dim: int, ratios: Sequence[float], num_train: int,
                delta: float = 0.05) -> dict[str, np.ndarray]:
    """Theorem 2 over lr/S values (batch size 1 and lr = ratio): arrays of ratio, trace_sigma, gap,
    slope (d gap / d(lr/S)), assumption2 and vacuous, each of shape (len(ratios),)."""
    rows = [theorem2(trace_cainv, logdet_cainv, dim, float(r), 1.0, num_train, delta) for r in ratios]
    gaps = np.array([b.gap for b in rows])
    return {"ratio": np.asarray(ratios, dtype=np.float64),
            "trace_sigma": np.array([b.trace_sigma for b in rows]),
            "gap": gaps,
            "slope": np.array([theorem2_slope(trace_cainv, dim, float(r), g, num_train)
                               for r, g in zip(ratios, gaps)]),
            "assumption2": np.array([b.assumption2 for b in rows]),
            "vacuous": np.array([b.vacuous for b in rows])}


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """tr(C A^-1) and log det(C A^-1) of a surrogate (A, C) built from a partial spectrum and traces."""
    trace_cainv: float
    logdet_cainv: float
    dim: int
    noise_model: str
    bulk_eigenvalue: float  # the value given to A's d - k unmeasured eigenvalues


def surrogate(top_eigenvalues: Sequence[float], trace_a: float, trace_c: float, dim: int,
              noise_model: str = "proportional") -> Surrogate:
    """A commuting surrogate for (A, C) from what bin/sharpness measures.

    A: the k measured top eigenvalues, and (tr A - their sum) / (d - k) for each of the other d - k.
    C: 'proportional' C = (tr C / tr A) A (gradient noise shaped like the curvature, the assumption
    C ~ H of Jastrzebski et al.): tr(C A^-1) = d tr C / tr A, log det(C A^-1) = d log(tr C / tr A), which
    needs only the traces; 'isotropic' C = (tr C / d) I: tr(C A^-1) = (tr C / d) sum 1/h_i and
    log det(C A^-1) = d log(tr C / d) - sum log h_i, which depends on the bulk value. Both make C commute
    with A (Assumption 1). ValueError when the surrogate A is not positive definite (negative measured
    eigenvalues, or a trace at most the top eigenvalues' sum), which is common away from a minimum.
    """
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise_model={noise_model!r}; known: {', '.join(NOISE_MODELS)}")
    top = np.asarray(list(top_eigenvalues), dtype=np.float64)
    k = top.size
    if not dim > k:
        raise ValueError(f"dim={dim} must exceed the {k} measured eigenvalues")
    if k and top.min() <= 0:
        raise ValueError(f"measured Hessian eigenvalues include {top.min():.4g} <= 0: not a minimum")
    if not trace_a > 0 or not trace_c > 0:
        raise ValueError(f"tr A={trace_a} and tr C={trace_c} must be positive")
    bulk = (trace_a - float(top.sum())) / (dim - k)
    if not bulk > 0:
        raise ValueError(f"tr A={trace_a:.4g} is at most the sum of the top {k} eigenvalues "
                         f"({top.sum():.4g}): the remaining {dim - k} cannot be positive")
    if noise_model == "proportional":
        ratio = trace_c / trace_a
        return Surrogate(dim * ratio, dim * math.log(ratio), dim, noise_model, bulk)
    per = trace_c / dim
    inv_sum = float(np.sum(1.0 / top)) + (dim - k) / bulk
    log_sum = float(np.sum(np.log(top))) + (dim - k) * math.log(bulk)
    return Surrogate(per * inv_sum, dim * math.log(per) - log_sum, dim, noise_model, bulk)


def bound_report(sharpness: dict, lr: float, batch_size: float, num_train: int, delta: float = 0.05,
                 noise_model: str = "proportional", num_ratios: int = 61) -> dict:
    """Theorem 2 for a run, from its sharpness.json record, with the surrogate (A, C) of `surrogate`.

    sharpness: needs num_params, trace, grad_cov_trace and top_eigenvalues (or lambda_max). Returns a
    JSON-ready dict: the bound and its terms at the run's (lr, batch_size), Assumption 2, the eta/S where
    the bound's slope flips and its (smallest) value there, the OU premises (lr * lambda_max < 2 and the
    discrete correction of the top mode), and a sweep over eta/S (lists).
    """
    missing = [k for k in ("num_params", "trace", "grad_cov_trace") if sharpness.get(k) is None]
    top = sharpness.get("top_eigenvalues") or ([sharpness["lambda_max"]] if sharpness.get("lambda_max") else [])
    if not top:
        missing.append("top_eigenvalues")
    if missing:
        raise ValueError(f"sharpness record lacks {', '.join(missing)} (run bin/sharpness with "
                         "--quantities=eigenvalues,trace,grad_cov)")
    dim = int(sharpness["num_params"])
    sur = surrogate(top, float(sharpness["trace"]), float(sharpness["grad_cov_trace"]), dim, noise_model)
    at_run = theorem2(sur.trace_cainv, sur.logdet_cainv, dim, lr, batch_size, num_train, delta)
    flip = sign_flip_ratio(sur.trace_cainv, dim)
    at_flip = theorem2(sur.trace_cainv, sur.logdet_cainv, dim, flip, 1.0, num_train, delta)
    k = lr / batch_size
    # The run's eta/S and the flip are on the grid: near the flip the bound is sharply peaked downwards.
    ratios = np.union1d(np.geomspace(min(k, flip) / 100.0, max(k, flip) * 100.0, num_ratios), [k, flip])
    sweep = sweep_ratio(sur.trace_cainv, sur.logdet_cainv, dim, ratios, num_train, delta)
    lam = float(max(top))
    return {
        "theorem": "He et al. 2019 Theorem 2 (eq. 18) on a commuting surrogate of (A, C)",
        "lr": lr, "batch_size": batch_size, "lr_over_batch_size": k, "num_train": num_train, "delta": delta,
        "num_params": dim, "noise_model": noise_model, "surrogate_bulk_eigenvalue": sur.bulk_eigenvalue,
        "num_measured_eigenvalues": len(top), "trace_cainv": sur.trace_cainv, "logdet_cainv": sur.logdet_cainv,
        "gap_bound": at_run.gap, "numerator": at_run.numerator, "denominator": at_run.denominator,
        "trace_sigma": at_run.trace_sigma, "logdet_sigma": at_run.logdet_sigma, "kl": at_run.kl,
        "vacuous": at_run.vacuous, "assumption2": at_run.assumption2,
        "flip_lr_over_batch_size": flip, "gap_bound_at_flip": at_flip.gap,
        "lr_times_lambda_max": lr * lam, "stable": lr * lam < 2.0,
        "top_mode_discrete_over_continuous": float(1.0 / (1.0 - 0.5 * lr * lam)) if lr * lam < 2.0 else None,
        "sweep": {key: value.tolist() for key, value in sweep.items()},
    }
