"""What bin/sharpness measures and how: the quantities, the allowed values of every choice, the defaults.

The one source of these facts: `lrbs_tf.cli.flags` defines bin/sharpness's flags from `Settings`' defaults and
the lists here, the estimators (hvp, eigen, interpolate) check against the same lists, and sharpness.json
records the Settings verbatim. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lrbs_tf.core.errors import UsageError

# Each quantity's random stream (Lanczos/power start vectors, Rademacher probes, weight noise) is keyed by
# its name through this table, never by its position in a list: the ids are fixed forever, so adding,
# removing or reordering quantities never changes another one's numbers. A new quantity takes a new id.
# (grad_cov and noise_scale draw no random numbers today: their ids are reserved all the same.)
QUANTITY_STREAMS = {"eigenvalues": 0, "trace": 1, "spectrum": 2, "eps_sharpness": 3, "avg_sharpness": 4,
                    "grad_cov": 5, "noise_scale": 6, "batch_sharpness": 7, "ggn_eigenvalues": 8, "ggn_trace": 9,
                    "adaptive_sharpness": 10, "adaptive_sharpness_linf": 11, "adaptive_sharpness_avg": 12}
QUANTITIES = tuple(QUANTITY_STREAMS)     # --quantities: every valid name
# The default --quantities: those measured before issue 24. The curvature-over-training quantities are asked
# for by name, so a default measurement costs what it did and the sharpness.json files written before them
# stay current (sharpness_targets.is_current compares the recorded quantities).
DEFAULT_QUANTITIES = QUANTITIES[:7]
# Adaptive sharpness (curvature.adaptive; issue 25), asked for by name like the trajectory quantities.
ADAPTIVE_QUANTITIES = ("adaptive_sharpness", "adaptive_sharpness_linf", "adaptive_sharpness_avg")
# A trajectory's usual set (docs/curvature.md): cheap enough to run at every kept epoch.
TRAJECTORY_QUANTITIES = ("eigenvalues", "trace", "batch_sharpness", "ggn_eigenvalues", "ggn_trace")
EIG_METHODS = ("lanczos", "power")       # --eig_method
BN_MODES = ("inference", "batch")        # --bn_mode: BN's moving statistics, or each chunk's own
HVP_MODES = ("forward_over_reverse", "reverse_over_reverse")  # --hvp_mode
INTERP_BN_STATS = ("interpolate", "recompute")  # --interp_bn_stats: BN statistics along an interpolation line
DEFAULT_HVP_BATCH = 256  # examples per chunk when nothing else decides it (inference BN: speed/memory only)
INTERP_BATCH = 1000      # --interpolate's examples per chunk when --hvp_batch_size is 0 (speed/memory only)


@dataclasses.dataclass
class Settings:
    """What bin/sharpness measures and how; recorded verbatim in sharpness.json."""
    num_examples: int = 2048
    hvp_batch_size: int = 0
    top_k: int = 5
    eig_method: str = "lanczos"
    tol: float = 1e-4
    max_hvps: int = 1000
    hutchinson_rtol: float = 0.05
    max_probes: int = 300
    slq_steps: int = 80
    slq_runs: int = 2
    eps: float = 1e-3
    eps_steps: int = 20
    noise_sigma: float = 1e-2
    noise_draws: int = 10
    bn_mode: str = "inference"
    include_weight_decay: bool = False
    hvp_mode: str = "forward_over_reverse"
    quantities: tuple[str, ...] = DEFAULT_QUANTITIES
    seed: int = 0
    batch_sharpness_batches: int = 20   # minibatches averaged in batch_sharpness
    # Adaptive sharpness: radii in u = d / |w| (dimensionless). An l2 ball of radius rho holds a box of
    # half-width rho / sqrt(dim), so the l2 radius is the larger. Chosen on one MNIST-1D MLP run (training loss 0.07):
    # increases of 0.14, 0.32 and 0.015 nats, the order of the loss itself (docs/findings.md, issue 25).
    adaptive_rho: float = 0.5           # adaptive_sharpness: ||d / |w|||_2 <= rho
    adaptive_rho_linf: float = 0.01     # adaptive_sharpness_linf: |d_i| <= rho |w_i|
    adaptive_rho_avg: float = 0.05      # adaptive_sharpness_avg: d ~ N(0, rho^2 diag(w^2))
    adaptive_steps: int = 20            # gradients per ascent (worst cases)
    adaptive_restarts: int = 2          # ascents from random starts; the largest loss is kept
    adaptive_draws: int = 10            # antithetic pairs (average case)

    def validate(self) -> None:
        """Raises UsageError naming the offending values."""
        unknown = [q for q in self.quantities if q not in QUANTITIES]
        if unknown or not self.quantities:
            raise UsageError(f"--quantities={','.join(self.quantities)}: unknown {unknown or 'empty list'}; "
                             f"valid: {','.join(QUANTITIES)}")
        checks = [("num_examples", self.num_examples >= 0), ("hvp_batch_size", self.hvp_batch_size >= 0),
                  ("top_k", self.top_k >= 1), ("tol", 0 < self.tol < 1), ("max_hvps", self.max_hvps >= 2),
                  ("hutchinson_rtol", self.hutchinson_rtol > 0), ("max_probes", self.max_probes >= 2),
                  ("slq_steps", self.slq_steps >= 1), ("slq_runs", self.slq_runs >= 1), ("eps", self.eps > 0),
                  ("eps_steps", self.eps_steps >= 1), ("noise_sigma", self.noise_sigma > 0),
                  ("noise_draws", self.noise_draws >= 2),
                  ("batch_sharpness_batches", self.batch_sharpness_batches >= 2),
                  ("adaptive_rho", self.adaptive_rho > 0), ("adaptive_rho_linf", self.adaptive_rho_linf > 0),
                  ("adaptive_rho_avg", self.adaptive_rho_avg > 0), ("adaptive_steps", self.adaptive_steps >= 1),
                  ("adaptive_restarts", self.adaptive_restarts >= 1), ("adaptive_draws", self.adaptive_draws >= 2)]
        checks += [(f.name, math.isfinite(getattr(self, f.name))) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), float)]  # inf passes "> 0"
        bad = [f"--{name}={getattr(self, name)}" for name, ok in checks if not ok]
        if bad:
            raise UsageError(f"out of range: {', '.join(bad)} (counts >= 1, draws/probes >= 2, tolerances > 0)")
        for name, valid in (("bn_mode", BN_MODES), ("eig_method", EIG_METHODS), ("hvp_mode", HVP_MODES)):
            if getattr(self, name) not in valid:
                raise UsageError(f"--{name}={getattr(self, name)}; valid: {', '.join(valid)}")

    def seed_for(self, quantity: str) -> int:
        """The seed of `quantity`'s random stream: a function of --seed and the quantity's name only."""
        return int(np.random.SeedSequence([self.seed, QUANTITY_STREAMS[quantity]]).generate_state(1)[0])


DEFAULTS = dataclasses.asdict(Settings())
