"""Hessian trace and Frobenius norm by Hutchinson's estimator with Rademacher probes.

For a probe v with independent +-1 entries, E[v v'] = I, so

    E[v' H v] = tr(H)        and        E[||H v||^2] = E[v' H'H v] = tr(H^2) = ||H||_F^2.

One HVP per probe gives both samples. The trace is the mean of v'Hv with standard error std/sqrt(m) (m
probes, ddof=1); the Frobenius norm is sqrt(mean ||Hv||^2), with the delta-method standard error
se(||H||_F^2) / (2 ||H||_F). Averaging ||Hv|| (without squaring) estimates something else: a known bug.

Probes are added until the trace's relative standard error is under `rtol` (after `min_probes`, so the
standard error itself is not a two-sample guess) or `max_probes` is reached. The Frobenius norm is not part
of the stopping rule: it comes for free from the same products, and its own standard error is reported.
The Rademacher variance of v'Hv is 2 (||H||_F^2 - sum_i H_ii^2), so a Hessian dominated by its diagonal
converges in a few probes and one with large off-diagonal mass needs many.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from lrbs_tf.curvature.eigen import rademacher

MatVec = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class TraceResult:
    trace: float                   # tr(H), nats per example per parameter^2, summed over parameters
    trace_stderr: float
    frobenius_norm: float          # ||H||_F
    frobenius_stderr: float
    num_probes: int                # = number of HVPs used
    converged: bool                # relative stderr of the trace reached rtol
    quad_samples: np.ndarray       # (m,) v'Hv per probe
    sq_norm_samples: np.ndarray    # (m,) ||Hv||^2 per probe


def _stderr(samples: np.ndarray) -> float:
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.inf


def hutchinson(matvec: MatVec, dim: int, rtol: float = 0.01, max_probes: int = 1000, min_probes: int = 10,
               seed: int = 0) -> TraceResult:
    """Trace and Frobenius norm of the symmetric operator `matvec` (flat float64 vectors of length dim).

    Stops when trace_stderr <= rtol * |trace| after at least min(min_probes, max_probes) probes, or at
    max_probes (converged=False).
    """
    if max_probes < 1:
        raise ValueError(f"max_probes={max_probes} must be >= 1")
    rng = np.random.default_rng(seed)
    quads: list[float] = []
    sqs: list[float] = []
    converged = False
    floor = min(min_probes, max_probes)
    while len(quads) < max_probes:
        v = rademacher(rng, dim)
        hv = np.asarray(matvec(v), np.float64)
        quads.append(float(v @ hv))
        sqs.append(float(hv @ hv))
        if len(quads) >= max(floor, 2):
            mean = abs(float(np.mean(quads)))
            if _stderr(np.asarray(quads)) <= rtol * mean:
                converged = True
                break
    q, s = np.asarray(quads), np.asarray(sqs)
    f2 = float(np.mean(s))
    fro = math.sqrt(max(f2, 0.0))
    f2_se = _stderr(s)
    fro_se = f2_se / (2.0 * fro) if fro > 0 else math.inf
    return TraceResult(float(np.mean(q)), _stderr(q), fro, fro_se, len(q), converged, q, s)
