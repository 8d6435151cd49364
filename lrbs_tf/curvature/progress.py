"""bin/sharpness's word during a long measurement: the estimated cost of a run before it is spent, when it is
large, and a progress line every PROGRESS_SECONDS while an estimator runs (issue 23: a Hutchinson trace ran
over 10 minutes per run without a line of output). Cheap runs print neither. No TensorFlow.

The estimate is the run's price in gradient passes (core.pricing.measurement_passes, bin/sweep's price too)
times the measured seconds of one pass, taken from this architecture's earlier products in this process (a
run measured after another) or from the run's own first products (the very first product, which traces the
functions, is left out). Prices are caps: Lanczos and Hutchinson stop sooner once converged.
"""

from __future__ import annotations

import time
from typing import Callable

from lrbs_tf.core.pricing import HVP_PASSES, measurement_passes
from lrbs_tf.curvature.settings import Settings

PROGRESS_SECONDS = 20.0    # at most three progress lines a minute
LARGE_COST_SECONDS = 60.0  # a run estimated to take longer is announced with its estimate
PASS_SECONDS = "seconds per gradient pass"  # the key under which a traces dict keeps the measured pass time
PASSES = {"hvp": HVP_PASSES, "gvp": HVP_PASSES, "gradient": 1.0, "loss": 0.5}  # a product's cost in passes
UNITS = {"hvp": "HVPs", "gvp": "Gauss-Newton products", "gradient": "gradients", "loss": "losses"}


def run_passes(settings: Settings) -> float:
    """The price of measuring one run with `settings`, in gradient passes (core.pricing)."""
    return measurement_passes(settings.quantities, settings.top_k, settings.max_hvps, settings.max_probes,
                              settings.slq_steps, settings.slq_runs, settings.eps_steps, settings.noise_draws,
                              settings.adaptive_steps, settings.adaptive_restarts, settings.adaptive_draws)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Meter:
    """Counts the products an estimator computes, prints a progress line at most every `every` seconds, and
    announces the run's estimated cost once it is known, when it is at least `large` seconds.

    memo: a dict kept per architecture across runs (the measurement's traces), where the measured seconds of
    one gradient pass are kept, so the next run's estimate is printed before its first product.
    """

    def __init__(self, passes: float, log: Callable[[str], None] = print, memo: dict | None = None,
                 every: float | None = None, large: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.passes, self.log, self.clock = passes, log, clock
        self.memo = {} if memo is None else memo
        self.every = PROGRESS_SECONDS if every is None else every
        self.large = LARGE_COST_SECONDS if large is None else large
        self.announced = False
        self.name, self.kind, self.cap, self.count = "", "hvp", 0, 0
        self.start = self.last = self._previous = clock()
        self.timed_passes, self.timed_seconds, self.first = 0.0, 0.0, True
        if PASS_SECONDS in self.memo:
            self._announce(self.memo[PASS_SECONDS], "measured on an earlier run of this architecture")

    def _announce(self, pass_seconds: float, how: str) -> None:
        if self.announced:
            return
        self.announced = True
        estimate = self.passes * pass_seconds
        if estimate >= self.large:
            self.log(f"estimated cost of this run: up to {_duration(estimate)} ({self.passes:.0f} gradient passes "
                     f"at most, {pass_seconds:.3g} s each, {how}; converged estimators stop sooner)")

    def begin(self, name: str, kind: str, cap: int) -> None:
        """A new estimator: `name` computes at most `cap` products of `kind` (a PASSES key)."""
        self.name, self.kind, self.cap, self.count = name, kind, cap, 0
        self.start = self.last = self._previous = self.clock()
        self.first = True  # its first product may trace a function of its own

    def tick(self, kind: str | None = None) -> None:
        """One product of `kind` (default: the current estimator's) has just been computed."""
        now = self.clock()
        self.count += 1
        if self.first:  # the first product traces the functions: not a measure of the cost
            self.first = False
        else:
            self.timed_passes += PASSES[kind or self.kind]
            self.timed_seconds += now - self._previous
            if self.timed_passes >= 2 * HVP_PASSES:
                self.memo[PASS_SECONDS] = self.timed_seconds / self.timed_passes
                self._announce(self.memo[PASS_SECONDS], "measured on this run's first products")
        self._previous = now
        if now - self.last >= self.every:
            self.last = now
            self.log(f"  {self.name}: {self.count} {UNITS[kind or self.kind]} of at most {self.cap}, "
                     f"{_duration(now - self.start)} so far")

    def wrap(self, fn: Callable, kind: str | None = None) -> Callable:
        """`fn`, ticking after each call."""
        def counted(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.tick(kind)
            return out
        return counted

    def objective(self, obj) -> "_Ticking":
        """`obj` (hvp.Objective) whose losses and gradients tick (eps- and average sharpness)."""
        return _Ticking(obj, self)


class _Ticking:
    """An Objective whose loss and loss_and_gradient calls tick a Meter; everything else is the Objective's."""

    def __init__(self, obj, meter: Meter) -> None:
        self._obj = obj
        self.loss = meter.wrap(obj.loss, "loss")
        self.loss_and_gradient = meter.wrap(obj.loss_and_gradient, "gradient")
        self.hvp = meter.wrap(obj.hvp, "hvp")

    def __getattr__(self, name: str):
        return getattr(self._obj, name)
