"""Top Hessian eigenvalues from Hessian-vector products: Lanczos (ARPACK) and power iteration.

Both solvers work on the host in float64 and see H only through `matvec(v) -> H v` (flat float64 vectors
of length `dim`). The number of products each one used is returned: it is the cost, one HVP being roughly
two to three gradient evaluations over the example set (see benchmarks/curvature.md).

- Lanczos: `scipy.sparse.linalg.eigsh` on a LinearOperator with which='LA' (largest algebraic). The
  default which='LM' (largest magnitude) returns a large negative eigenvalue when the Hessian has one,
  which is not the top of the spectrum. ARPACK keeps its Krylov basis in float64 and stops when every
  wanted Ritz pair has residual ||H u - theta u|| <= tol |theta|.
- Power iteration converges to the eigenvalue of largest magnitude (it can be negative away from a
  minimum). It stops only when both the relative change of the Rayleigh quotient and the relative residual
  ||H v - lambda v|| / |lambda| are under `tol`: a change-only rule stops early when the eigengap is small
  and lambda creeps upwards slowly. More eigenvalues come from deflation H - sum_j lambda_j u_j u_j', which
  inherits the errors of the earlier pairs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from lrbs_tf.curvature.settings import EIG_METHODS

MatVec = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class EigenResult:
    """Top eigenpairs, eigenvalues in descending order (Hessian units: nats per example per parameter^2)."""
    eigenvalues: np.ndarray      # (k,) float64, descending
    eigenvectors: np.ndarray     # (dim, k) float64, unit columns
    num_hvps: int
    converged: bool
    method: str


def rademacher(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A vector of independent +-1 entries (float64)."""
    return rng.integers(0, 2, size=dim).astype(np.float64) * 2.0 - 1.0


class _Counted:
    def __init__(self, matvec: MatVec) -> None:
        self.matvec, self.count = matvec, 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.count += 1
        return np.asarray(self.matvec(np.asarray(v, np.float64).reshape(-1)), np.float64)


def dense_top_k(matvec: MatVec, dim: int, k: int) -> EigenResult:
    """Builds H column by column (dim HVPs), symmetrises it and diagonalises it: for tiny models only."""
    counted = _Counted(matvec)
    h = np.stack([counted(e) for e in np.eye(dim)], axis=1)
    vals, vecs = np.linalg.eigh(0.5 * (h + h.T))  # ascending
    order = np.argsort(vals)[::-1][:k]
    return EigenResult(vals[order], vecs[:, order], counted.count, True, "dense")


def lanczos_top_k(matvec: MatVec, dim: int, k: int, tol: float = 1e-4, max_hvps: int = 1000,
                  seed: int = 0) -> EigenResult:
    """The k largest (algebraic) eigenvalues by implicitly restarted Lanczos (ARPACK via scipy eigsh).

    Args:
      tol: ARPACK's relative residual bound ||H u - theta u|| <= tol |theta| for each wanted pair.
      max_hvps: budget, enforced in whole ARPACK restarts (each costs up to ncv - k products), so the count
        may exceed it by less than one restart. When it runs out, the pairs that did converge are returned
        with converged=False.
      seed: fixes the Rademacher start vector.

    When dim <= 2k + 2 ARPACK has no room for a Krylov space; H is then built densely from dim products.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k={k} must be between 1 and the number of parameters {dim}")
    if dim <= 2 * k + 2:
        return dense_top_k(matvec, dim, k)
    counted = _Counted(matvec)
    op = LinearOperator((dim, dim), matvec=counted, dtype=np.float64)
    v0 = rademacher(np.random.default_rng(seed), dim) / math.sqrt(dim)
    # Krylov space size: ARPACK spends ncv products before its first convergence test. scipy's default,
    # max(2k + 1, 20), made lambda_max alone cost 21 products even when 5 suffice; 10 for k = 1 halved
    # that on a trained mlp, while k = 5 needed the 20 (benchmarks/curvature.md).
    ncv = min(dim, max(4 * k, 10))
    maxiter = max(1, math.ceil(max_hvps / max(1, ncv - k)))
    converged = True
    try:
        vals, vecs = eigsh(op, k=k, which="LA", v0=v0, ncv=ncv, tol=tol, maxiter=maxiter)
    except ArpackNoConvergence as e:
        vals, vecs, converged = e.eigenvalues, e.eigenvectors, False
    order = np.argsort(vals)[::-1]
    return EigenResult(np.asarray(vals)[order], np.asarray(vecs)[:, order], counted.count, converged,
                       "lanczos")


@dataclasses.dataclass
class PowerResult:
    eigenvalue: float        # the Rayleigh quotient at the last iterate
    eigenvector: np.ndarray  # (dim,) unit vector
    num_hvps: int
    converged: bool
    history: list[float]     # Rayleigh quotient after each product


def power_iteration(matvec: MatVec, dim: int, tol: float = 1e-4, max_hvps: int = 1000, seed: int = 0
                    ) -> PowerResult:
    """Eigenvalue of largest magnitude of the symmetric operator `matvec`, with the two-part stopping rule.

    Stops when |lambda_t - lambda_{t-1}| / |lambda_t| < tol and ||H v_t - lambda_t v_t|| / |lambda_t| < tol
    (v_t unit, lambda_t = v_t' H v_t), or after max_hvps products (converged=False).
    """
    if max_hvps < 2:
        raise ValueError(f"max_hvps={max_hvps}: power iteration needs at least 2 products")
    rng = np.random.default_rng(seed)
    v = rademacher(rng, dim) / math.sqrt(dim)
    hv = np.asarray(matvec(v), np.float64)
    lam = float(v @ hv)
    history, used = [lam], 1
    while used < max_hvps:
        norm = float(np.linalg.norm(hv))
        if norm == 0.0:  # v is in the null space; H v = 0 for this start means lambda 0 is all we can say
            return PowerResult(0.0, v, used, True, history)
        v = hv / norm
        hv = np.asarray(matvec(v), np.float64)
        used += 1
        new = float(v @ hv)
        history.append(new)
        scale = abs(new) if new != 0.0 else 1.0
        change = abs(new - lam) / scale
        residual = float(np.linalg.norm(hv - new * v)) / scale
        lam = new
        if change < tol and residual < tol:
            return PowerResult(lam, v, used, True, history)
    return PowerResult(lam, v, used, False, history)


def power_top_k(matvec: MatVec, dim: int, k: int, tol: float = 1e-4, max_hvps: int = 1000, seed: int = 0
                ) -> EigenResult:
    """k eigenvalues by power iteration with deflation; `max_hvps` is shared by the k runs.

    The eigenvalues are those of largest magnitude (sorted descending on return), which are the top of the
    spectrum only when no negative eigenvalue is larger in magnitude.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k={k} must be between 1 and the number of parameters {dim}")
    vals: list[float] = []
    vecs: list[np.ndarray] = []
    used, converged = 0, True
    for j in range(k):
        def deflated(v: np.ndarray) -> np.ndarray:
            out = np.asarray(matvec(v), np.float64)
            for lam, u in zip(vals, vecs):
                out = out - lam * float(u @ v) * u
            return out
        budget = max(2, (max_hvps - used) // (k - j))
        res = power_iteration(deflated, dim, tol=tol, max_hvps=budget, seed=seed + 7919 * j)
        used += res.num_hvps
        converged = converged and res.converged
        vals.append(res.eigenvalue)
        vecs.append(res.eigenvector)
    order = np.argsort(vals)[::-1]
    return EigenResult(np.asarray(vals)[order], np.stack(vecs, axis=1)[:, order], used, converged, "power")


def top_k(matvec: MatVec, dim: int, k: int, method: str = "lanczos", tol: float = 1e-4, max_hvps: int = 1000,
          seed: int = 0) -> EigenResult:
    """Dispatches to `lanczos_top_k` or `power_top_k` (see EIG_METHODS)."""
    if method == "lanczos":
        return lanczos_top_k(matvec, dim, k, tol=tol, max_hvps=max_hvps, seed=seed)
    if method == "power":
        return power_top_k(matvec, dim, k, tol=tol, max_hvps=max_hvps, seed=seed)
    raise ValueError(f"eig_method={method!r}; valid: {', '.join(EIG_METHODS)}")
