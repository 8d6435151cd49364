"""Momentum's effective learning rate: exact placement in runs.csv and the ratio analyses, and the
interchangeability test (analysis.momentum) against scipy and statsmodels, end to end through bin/correlate."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import DescrStatsW

from lrbs_tf.analysis import correlate, momentum
from lrbs_tf.runs import folder as rf
from tests.runfolders import write_run

pytestmark = pytest.mark.fast


def test_effective_lr_and_ratio_are_exact_on_the_decimals():
    assert rf.effective_lr(0.1, 0.0) == rf.effective_lr(0.01, 0.9) == rf.effective_lr(0.05, 0.5) == 0.1
    assert 0.01 / (1 - 0.9) != 0.1  # plain floats would split the pair
    assert rf.ratio(32, 0.1) == rf.ratio(32, 0.01, 0.9) == rf.ratio(32, 0.05, 0.5) == 320.0
    assert rf.ratio(48, 0.03, 0.0) == rf.ratio(48, 0.03) == 1600.0
    with pytest.raises(ValueError, match="momentum=1.0"):
        rf.effective_lr(0.1, 1.0)


def test_paired_and_welch_comparisons_match_scipy_and_statsmodels():
    rng = np.random.default_rng(0)
    ref = pd.Series(0.7 + 0.01 * rng.standard_normal(5), index=range(5))
    other = pd.Series(ref.to_numpy() + 0.004 + 0.003 * rng.standard_normal(5), index=range(5))
    c = momentum.compare(ref, other)
    assert c.method == momentum.PAIRED and c.n == 5
    assert c.p == pytest.approx(sps.ttest_rel(other, ref).pvalue, rel=1e-10)
    low, high = DescrStatsW((other - ref).to_numpy()).tconfint_mean(0.05)
    assert (c.ci_low, c.ci_high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    # No common seeds: Welch's t on the runs of each.
    odd = pd.Series(other.to_numpy()[:4], index=[11, 13, 15, 17])
    w = momentum.compare(ref, odd)
    assert w.method == momentum.WELCH and w.n == 9
    assert w.p == pytest.approx(sps.ttest_ind(odd, ref, equal_var=False).pvalue, rel=1e-10)
    # Too few runs: untestable, never a p.
    assert math.isnan(momentum.compare(ref.iloc[:1], odd).p)
    assert momentum.cell_p([0.02, 0.3]) == 0.04 and momentum.cell_p([math.nan, 0.3]) == 0.3
    np.testing.assert_allclose(momentum.holm([0.01, 0.04, math.nan, 0.03]), [0.03, 0.06, math.nan, 0.06])


def _study(root, shift: float):
    """BS 32 and 64 at (lr 0.1, mu 0) and (lr 0.01, mu 0.9), 4 seeds; momentum 0.9 adds `shift` to accuracy.
    (lr 0.02, mu 0) and (lr 0.1, mu 0.9) have one momentum at their effective LR; the latter shares its raw lr
    with (0.1, 0)."""
    rng = np.random.default_rng(1)
    for bs in (32, 64):
        for seed in range(4):
            s = 0.005 * rng.standard_normal()
            for lr, mu in ((0.1, 0.0), (0.01, 0.9), (0.02, 0.0), (0.1, 0.9)):
                acc = 0.8 - 0.0002 * bs + s + 0.002 * rng.standard_normal() + (shift if mu else 0.0)
                write_run(root, acc, batch_size=bs, lr=lr, momentum=mu, seed=seed)


def test_bin_correlate_places_momentum_runs_and_tests_interchangeability(tmp_path):
    _study(tmp_path / "runs", shift=0.03)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    assert a.momentum_placed and a.momentum.momenta == 2
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    m9 = runs[(runs["momentum"] == 0.9) & (runs["lr"] == 0.01)]
    assert len(m9) == 8 and (m9["effective_lr"] == 0.1).all()
    assert (m9["ratio"] == m9["batch_size"] / 0.01).all() and (m9["effective_lr_ratio"] == m9["batch_size"] * 10).all()
    # The ratio analyses see momentum's runs at their effective learning rate.
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert set(cells[cells["momentum"] == 0.9]["lr"]) == {0.1, 1.0}
    assert set(cells[cells["momentum"] == 0.9]["ratio"]) == {320.0, 640.0, 32.0, 64.0}
    table = pd.read_csv(tmp_path / "out" / momentum.FILE)
    assert len(table) == 4 and set(table["effective_lr"]) == {0.1}  # 0.02 and 1.0 have one momentum each
    compared = table[table["method"] == momentum.PAIRED]
    assert (compared["n_compared"] == 4).all() and (compared["lr"] == 0.01).all()
    assert compared["diff"].to_numpy() == pytest.approx([0.03, 0.03], abs=0.01)
    assert (compared["p_holm"] < 0.005).all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**2 of 2 tested cell(s) differ**" in report and "placed at their effective learning rate" in report

    # Pooled over momentum, runs of equal BS and effective LR share one cell (the placement).
    pooled = correlate.run(tmp_path / "runs", tmp_path / "pooled", figures=False, group_by=["weight_decay"])
    # Same BS, raw lr and seed at two momenta are two configurations, not a duplicate.
    assert not (pooled.runs["status"] == "duplicate").any()
    c = pooled.cells.set_index(["batch_size", "lr"])
    assert c.loc[(32, 0.1), "n_seeds"] == 8 and c.loc[(32, 0.02), "n_seeds"] == 4 == c.loc[(32, 1.0), "n_seeds"]


def test_no_difference_and_no_momentum(tmp_path):
    _study(tmp_path / "runs", shift=0.0)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    assert not (a.momentum.table["p_holm"] < 0.005).any()
    assert "No tested cell differs between momenta" in (tmp_path / "out" / "report.md").read_text()
    plain = tmp_path / "plain"
    for bs in (32, 64):
        for lr in (0.01, 0.1):
            write_run(plain, 0.8 - bs / 1e4 + lr, batch_size=bs, lr=lr)
    b = correlate.run(plain, tmp_path / "out2", figures=False)
    assert not (tmp_path / "out2" / momentum.FILE).exists()
    assert (b.runs["ratio"] == b.raw_runs["ratio"]).all() and (b.runs["lr"] == b.raw_runs["lr"]).all()
    assert "Every done run has momentum 0" in (tmp_path / "out2" / "report.md").read_text()
