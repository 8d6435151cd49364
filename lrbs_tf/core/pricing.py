"""What one bin/sharpness measurement costs, in gradient passes over its examples: the price bin/sweep's ETA
gives the sharpness stage, and bin/sharpness's estimate printed before a long run. One source for both (sweep
and curvature may not import each other; docs/architecture.md). No TensorFlow."""

from __future__ import annotations

from typing import Sequence

HVP_PASSES = 2.0  # a Hessian-vector product costs about two gradient passes (1.8-2.7: benchmarks/curvature.md)


def measurement_passes(quantities: Sequence[str], top_k: int, max_hvps: int, max_probes: int, slq_steps: int,
                       slq_runs: int, eps_steps: int, noise_draws: int, adaptive_steps: int = 0,
                       adaptive_restarts: int = 0, adaptive_draws: int = 0) -> float:
    """The price of one bin/sharpness measurement, in gradient passes over its examples (a Hessian-vector
    product costs about two): Lanczos' iterations for the top eigenvalues, Hutchinson's probes for the trace,
    SLQ's steps, eps-sharpness' and adaptive sharpness' ascent steps (x restarts), the average sharpnesses'
    noisy losses, a pass for the gradient noise.
    Caps, not expectations: Lanczos and Hutchinson stop once converged, so the price leans long until a
    measurement has ended and its measured duration takes over (sweep.workers.Progress)."""
    cost = {"eigenvalues": 2 * min(max_hvps, 20 + 10 * top_k), "trace": 2 * max_probes,
            "spectrum": 2 * slq_steps * slq_runs, "eps_sharpness": eps_steps, "avg_sharpness": noise_draws / 3,
            "grad_cov": 2, "noise_scale": 2, "adaptive_sharpness": adaptive_steps * adaptive_restarts,
            "adaptive_sharpness_linf": adaptive_steps * adaptive_restarts, "adaptive_sharpness_avg": adaptive_draws / 3}
    return float(sum(cost.get(q, 2) for q in quantities))
