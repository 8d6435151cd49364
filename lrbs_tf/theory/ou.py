"""SGD near a minimum as an Ornstein-Uhlenbeck process: stationary covariances, loss and stability.

Notation (REFERENCES §4): loss 0.5 theta' A theta (A: Hessian, symmetric positive definite, shape (d, d));
C: covariance of one example's gradient (d, d); S: batch size; eta: learning rate. SGD is
theta_{k+1} = theta_k - eta (A theta_k + xi_k) with Cov xi_k = C / S (i.i.d. sampling with replacement;
without replacement from N examples the noise is smaller by (N - S)/(N - 1), ignored here as in the papers).

- Continuous time (He et al. 2019 eq. 17; the SDE of Jastrzebski et al. 2018 eq. 5-6):
  Sigma A + A Sigma = (eta/S) C.
- Exact discrete time: Sigma = (I - eta A) Sigma (I - eta A)' + eta^2 C / S. In A's eigenbasis (h_j) the two
  differ entry by entry by the factor (h_j + h_k)/(h_j + h_k - eta h_j h_k), i.e. by 1/(1 - eta h/2) on the
  diagonal of a mode: the continuous solution is only good for small eta * lambda_max, and SGD diverges at
  eta * lambda_max >= 2.
- Expected stationary loss 0.5 tr(A Sigma): (eta/4S) tr C in continuous time, which with C = A is
  Jastrzebski eq. 7, (eta/4S) tr A; exactly sum_i eta c_i / (2S (2 - eta h_i)) in discrete time when C
  commutes with A (c_i: C's eigenvalues in A's eigenbasis).

Shapes: matrices (d, d) float64; spectra (d,) float64. Units: eta in the units of the update
theta -= eta * gradient; Sigma in squared parameter units; losses in the units of the loss.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _spd(a: np.ndarray, name: str) -> np.ndarray:
    """a as a symmetric float64 (d, d) matrix, or ValueError naming `name`."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(a).max(initial=0.0)))):
        raise ValueError(f"{name} is not symmetric")
    return 0.5 * (a + a.T)


def _check_rates(lr: float, batch_size: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr={lr} must be positive")
    if not batch_size > 0:
        raise ValueError(f"batch_size={batch_size} must be positive")


def stability_limit(lambda_max: float) -> float:
    """The learning rate at which SGD on the quadratic diverges: 2 / lambda_max (stable iff eta < it)."""
    if not lambda_max > 0:
        raise ValueError(f"lambda_max={lambda_max} must be positive")
    return 2.0 / float(lambda_max)


def stability_ratio(lambda_max: float, lr: float) -> float:
    """lr / stability_limit(lambda_max) = lambda_max lr / 2: plain SGD (and GD) on the quadratic diverges
    along the top eigenvector above 1 (Cohen et al. 2021 find full-batch GD hovering at 1, the edge of
    stability). Momentum mu moves the limit to 2 (1 + mu) / lr; this ratio is the plain-SGD one."""
    return float(lambda_max) * float(lr) / 2.0


def _eigh_positive(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, v = np.linalg.eigh(a)
    if h[0] <= 0:
        raise ValueError(f"A must be positive definite; its smallest eigenvalue is {h[0]:.3g}")
    return h, v


def continuous_stationary_covariance(a: np.ndarray, c: np.ndarray, lr: float, batch_size: float) -> np.ndarray:
    """Sigma with Sigma A + A Sigma = (lr/S) C (He et al. eq. 17), by scipy's Bartels-Stewart solver. (d, d)."""
    a, c = _spd(a, "A"), _spd(c, "C")
    _check_rates(lr, batch_size)
    _eigh_positive(a)
    sigma = scipy.linalg.solve_continuous_lyapunov(a, (lr / batch_size) * c)
    return 0.5 * (sigma + sigma.T)


def discrete_stationary_covariance(a: np.ndarray, c: np.ndarray, lr: float, batch_size: float) -> np.ndarray:
    """Sigma = (I - lr A) Sigma (I - lr A)' + lr^2 C/S, the exact stationary covariance of SGD. (d, d).

    ValueError when lr * lambda_max >= 2 (no stationary distribution: SGD diverges).
    """
    a, c = _spd(a, "A"), _spd(c, "C")
    _check_rates(lr, batch_size)
    h, _ = _eigh_positive(a)
    if lr * h[-1] >= 2.0:
        raise ValueError(f"lr * lambda_max = {lr * h[-1]:.4g} >= 2: SGD diverges, there is no stationary covariance")
    m = np.eye(a.shape[0]) - lr * a
    sigma = scipy.linalg.solve_discrete_lyapunov(m, (lr * lr / batch_size) * c)
    return 0.5 * (sigma + sigma.T)


def eigenbasis_stationary_covariance(a: np.ndarray, c: np.ndarray, lr: float, batch_size: float,
                                     discrete: bool = True) -> np.ndarray:
    """Either stationary covariance in closed form through A's eigenbasis, for any symmetric C. (d, d).

    With A = V diag(h) V' and C~ = V' C V, both Lyapunov equations decouple entry by entry:
    continuous Sigma~_jk = (lr/S) C~_jk / (h_j + h_k); discrete Sigma~_jk = (lr/S) C~_jk / (h_j + h_k - lr h_j h_k).
    """
    a, c = _spd(a, "A"), _spd(c, "C")
    _check_rates(lr, batch_size)
    h, v = _eigh_positive(a)
    if discrete and lr * h[-1] >= 2.0:
        raise ValueError(f"lr * lambda_max = {lr * h[-1]:.4g} >= 2: SGD diverges, there is no stationary covariance")
    ct = v.T @ c @ v
    denom = h[:, None] + h[None, :]
    if discrete:
        denom = denom - lr * h[:, None] * h[None, :]
    sigma = v @ ((lr / batch_size) * ct / denom) @ v.T
    return 0.5 * (sigma + sigma.T)


def stationary_variances(h: np.ndarray, c: np.ndarray, lr: float, batch_size: float,
                         discrete: bool = True) -> np.ndarray:
    """Diagonal of Sigma in A's eigenbasis when C commutes with A (c: C's eigenvalues there). (d,).

    continuous: lr c / (2 S h); discrete: lr c / (S h (2 - lr h)). Cost O(d): usable at any d.
    """
    h, c = np.asarray(h, dtype=np.float64), np.asarray(c, dtype=np.float64)
    _check_rates(lr, batch_size)
    if np.any(h <= 0):
        raise ValueError(f"curvatures must be positive; smallest is {h.min():.3g}")
    if discrete:
        if lr * h.max() >= 2.0:
            raise ValueError(f"lr * lambda_max = {lr * h.max():.4g} >= 2: SGD diverges")
        return lr * c / (batch_size * h * (2.0 - lr * h))
    return lr * c / (2.0 * batch_size * h)


def expected_stationary_loss(h: np.ndarray, c: np.ndarray, lr: float, batch_size: float,
                             discrete: bool = True) -> float:
    """E[0.5 theta' A theta] under the stationary distribution, C commuting with A.

    continuous: (lr/4S) sum c (= (lr/4S) tr A for C = A, Jastrzebski et al. eq. 7; in fact (lr/4S) tr C for
    any C, see `dense_stationary_loss`); discrete: sum_i lr c_i / (2S (2 - lr h_i)).
    """
    h = np.asarray(h, dtype=np.float64)
    return float(0.5 * np.sum(h * stationary_variances(h, c, lr, batch_size, discrete)))


def dense_stationary_loss(a: np.ndarray, sigma: np.ndarray) -> float:
    """0.5 tr(A Sigma): the expected loss under N(0, Sigma). Continuous-time Sigma gives (lr/4S) tr C
    exactly (the trace of eq. 17 is 2 tr(A Sigma) = (lr/S) tr C)."""
    return float(0.5 * np.sum(np.asarray(a) * np.asarray(sigma)))


def discrete_over_continuous(h: np.ndarray, lr: float) -> np.ndarray:
    """Per-mode ratio of the discrete to the continuous stationary variance: 1 / (1 - lr h / 2). (d,)."""
    h = np.asarray(h, dtype=np.float64)
    return 1.0 / (1.0 - 0.5 * lr * h)
