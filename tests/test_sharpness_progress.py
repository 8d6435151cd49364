"""bin/sharpness's word during a long measurement (issue 23): the estimated cost of a run, printed when large,
and at most one progress line per PROGRESS_SECONDS while an estimator runs; nothing for a cheap run. The
Meter is checked with a fake clock; tests/test_sharpness_progress_tf.py runs it inside `measure` on a tiny
model."""

from __future__ import annotations

import pytest

from lrbs_tf.core.pricing import measurement_passes
from lrbs_tf.curvature import progress
from lrbs_tf.curvature.settings import Settings
from lrbs_tf.sweep import config as sweep_config

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _products(meter: progress.Meter, clock: Clock, n: int, seconds: float, kind: str = "hvp") -> None:
    fn = meter.wrap(lambda: None, kind)
    for _ in range(n):
        clock.now += seconds
        fn()


def test_a_long_estimator_prints_a_few_lines_a_minute_and_the_estimate_once():
    clock, lines = Clock(), []
    meter = progress.Meter(passes=600, log=lines.append, clock=clock)
    meter.begin("trace", "hvp", cap=300)
    _products(meter, clock, 100, 1.5)  # 150 s at 1.5 s per HVP: 0.75 s per gradient pass
    estimate = [line for line in lines if line.startswith("estimated cost")]
    assert estimate == ["estimated cost of this run: up to 7.5 min (600 gradient passes at most, 0.75 s each, "
                        "measured on this run's first products; converged estimators stop sooner)"]
    assert lines.index(estimate[0]) == 0  # after the third product: before the run's cost is spent
    ticks = [line for line in lines if line.startswith("  trace:")]
    assert len(ticks) == 7  # every 20 s over 150 s
    assert ticks[0] == "  trace: 14 HVPs of at most 300, 21 s so far"


def test_a_cheap_run_prints_nothing():
    clock, lines = Clock(), []
    meter = progress.Meter(passes=40, log=lines.append, clock=clock)
    meter.begin("eigenvalues", "hvp", cap=1000)
    _products(meter, clock, 20, 0.05)
    assert lines == []


def test_the_next_run_of_an_architecture_is_priced_before_its_first_product():
    clock, memo = Clock(), {}
    first = progress.Meter(passes=600, log=lambda _: None, memo=memo, clock=clock)
    first.begin("trace", "hvp", cap=300)
    _products(first, clock, 5, 2.0)
    lines = []
    progress.Meter(passes=600, log=lines.append, memo=memo, clock=clock)
    assert lines == ["estimated cost of this run: up to 10.0 min (600 gradient passes at most, 1 s each, measured "
                     "on an earlier run of this architecture; converged estimators stop sooner)"]


def test_the_first_product_of_each_estimator_is_not_timed():
    """It traces the estimator's function: 30 s of tracing must not price the run at 30 s per product."""
    clock, lines = Clock(), []
    meter = progress.Meter(passes=100, log=lines.append, clock=clock, large=1e9)
    meter.begin("eps_sharpness", "gradient", cap=20)
    _products(meter, clock, 1, 30.0, "gradient")
    _products(meter, clock, 4, 0.5, "gradient")
    assert meter.memo[progress.PASS_SECONDS] == pytest.approx(0.5)


def test_bin_sharpness_and_bin_sweep_price_a_measurement_alike():
    s = Settings(quantities=("eigenvalues", "trace", "spectrum"))
    assert progress.run_passes(s) == measurement_passes(s.quantities, s.top_k, s.max_hvps, s.max_probes, s.slq_steps,
                                                        s.slq_runs, s.eps_steps, s.noise_draws)
    assert sweep_config.measurement_passes is measurement_passes  # one source (core.pricing)
