"""lrbs_tf.analysis.stats against scipy and statsmodels, and against hand-computed values."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from lrbs_tf.analysis import stats

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlate_equals_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = 0.3 * x + rng.normal(size=40)
    c = stats.correlate(x, y)
    sp, pe, ke = sps.spearmanr(x, y), sps.pearsonr(x, y), sps.kendalltau(x, y)
    assert c.n == 40 and c.reason == "" and c.spearman_p_method == "t"
    assert c.spearman_rho == sp.statistic and c.spearman_p == sp.pvalue
    assert c.pearson_r == pe.statistic and c.pearson_p == pe.pvalue
    assert c.kendall_tau == ke.statistic and c.kendall_p == ke.pvalue


def test_ties_use_average_ranks():
    x = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 5.0, 6.0, 7.0])
    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])
    np.testing.assert_array_equal(stats.average_ranks(x), [1, 2.5, 2.5, 4, 6, 6, 6, 8, 9, 10])
    c = stats.correlate(x, y)
    # Spearman's rho with ties is Pearson's r of the average ranks.
    expected = np.corrcoef(stats.average_ranks(x), stats.average_ranks(y))[0, 1]
    assert c.spearman_rho == pytest.approx(expected, abs=1e-15)
    assert c.spearman_rho == sps.spearmanr(x, y).statistic
    assert c.kendall_tau == sps.kendalltau(x, y).statistic  # tau-b, tie-corrected
    assert stats.kendall_tau_b(x, y) == pytest.approx(c.kendall_tau, abs=1e-15)


def test_small_n_spearman_p_is_exact():
    # A perfect monotone relation among 4 points: scipy's t approximation says p = 0, the exact two-sided
    # probability of |rho| = 1 under H0 is 2 / 4! = 1/12.
    x = np.arange(4.0)
    assert sps.spearmanr(x, -x).pvalue == 0.0
    c = stats.correlate(x, -x)
    assert c.spearman_rho == -1.0 and c.spearman_p_method == "exact"
    assert c.spearman_p == pytest.approx(1 / 12, rel=1e-12)
    assert stats.correlate(np.arange(5.0), np.arange(5.0)).spearman_p == pytest.approx(2 / 120, rel=1e-12)
    # Against brute-force enumeration of all 7! pairings on random data (rho of ranks, vectorised).
    rng = np.random.default_rng(3)
    x, y = rng.random(7), rng.random(7)
    rho = sps.spearmanr(x, y).statistic
    rx = sps.rankdata(x)[np.array(list(itertools.permutations(range(7))))]
    rhos = np.array([np.corrcoef(r, sps.rankdata(y))[0, 1] for r in rx[:1]])  # check the formula once
    assert rhos[0] == pytest.approx(rho)
    ry = sps.rankdata(y) - 4.0
    rhos = ((rx - 4.0) * ry).sum(1) / np.sqrt(((rx - 4.0) ** 2).sum(1) * (ry ** 2).sum())
    greater, less = np.mean(rhos >= rho - 1e-12), np.mean(rhos <= rho + 1e-12)
    assert stats.correlate(x, y).spearman_p == pytest.approx(min(1.0, 2 * min(greater, less)), rel=1e-9)
    assert stats.correlate(rng.random(9), rng.random(9)).spearman_p_method == "t"


def test_too_few_and_constant_are_reasons_not_nan():
    c = stats.correlate([1.0, 2.0], [3.0, 1.0], "batch_size", "best_test_accuracy")
    assert c.reason == "n=2 < 3" and c.n == 2 and math.isnan(c.spearman_rho) and math.isnan(c.kendall_p)
    c = stats.correlate([64, 64, 64, 64], [0.1, 0.2, 0.3, 0.4], "batch_size", "best_test_accuracy")
    assert c.reason == "batch_size is constant (64 for all 4)" and math.isnan(c.pearson_r)
    c = stats.correlate([1, 2, 3], [0.5, 0.5, 0.5], "lr", "best_test_accuracy")
    assert c.reason == "best_test_accuracy is constant (0.5 for all 3)"


def test_non_finite_pairs_are_dropped_and_counted():
    x = [1.0, 2.0, 3.0, 4.0, math.nan, 6.0]
    y = [2.0, 1.0, math.inf, 3.0, 5.0, 7.0]
    c = stats.correlate(x, y)
    assert c.n == 4 and c.n_missing == 2
    assert c.pearson_r == sps.pearsonr([1, 2, 4, 6], [2, 1, 3, 7]).statistic


def test_adjusted_pvalues_equal_statsmodels_and_skip_nan():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.05, size=25)
    for method, sm in (("holm", "holm"), ("bh", "fdr_bh")):
        np.testing.assert_array_equal(stats.adjust_pvalues(p, method), multipletests(p, method=sm)[1])
    # NaN (untestable) entries stay NaN and do not enlarge the family: Holm over 2 tests, not 3.
    adj = stats.adjust_pvalues([0.01, math.nan, 0.04], "holm")
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="unknown adjustment"):
        stats.adjust_pvalues([0.1], "bonferroni")


def test_granulated_kendall_by_hand():
    # Measure BS/LR on 3 batch sizes x 2 learning rates. At lr=0.1 accuracy falls as BS (so the ratio) grows:
    # tau -1; at lr=0.2 it rises: +1; psi_batch_size = 0. At each BS the ratio falls with LR while accuracy
    # rises: tau -1, psi_lr = -1. Psi = -0.5.
    acc = {(16, 0.1): 0.9, (32, 0.1): 0.8, (64, 0.1): 0.7, (16, 0.2): 0.91, (32, 0.2): 0.92, (64, 0.2): 0.93}
    rows = [{"batch_size": b, "lr": l, "acc": a, "ratio": b / l} for (b, l), a in acc.items()]
    r = stats.granulated_kendall(rows, "ratio", "acc", ["batch_size", "lr"])
    assert r.per_hyperparameter == {"batch_size": 0.0, "lr": -1.0} and r.psi == -0.5
    assert r.subgroups_used == {"batch_size": 2, "lr": 3} and r.reason == ""
    # Against scipy on the subgroups, with a measure that is not the hyperparameter itself.
    rng = np.random.default_rng(0)
    rows = [{"batch_size": b, "lr": l, "m": rng.random(), "acc": rng.random()}
            for b in (16, 32, 64, 128) for l in (0.01, 0.02, 0.05) for _ in range(2)]
    r = stats.granulated_kendall(rows, "m", "acc", ["batch_size", "lr"])
    by_lr = [sps.kendalltau([q["m"] for q in rows if q["lr"] == l], [q["acc"] for q in rows if q["lr"] == l])
             .statistic for l in (0.01, 0.02, 0.05)]
    by_bs = [sps.kendalltau([q["m"] for q in rows if q["batch_size"] == b],
                            [q["acc"] for q in rows if q["batch_size"] == b]).statistic for b in (16, 32, 64, 128)]
    assert r.per_hyperparameter["batch_size"] == pytest.approx(np.mean(by_lr), abs=1e-12)
    assert r.per_hyperparameter["lr"] == pytest.approx(np.mean(by_bs), abs=1e-12)
    assert r.psi == pytest.approx((np.mean(by_lr) + np.mean(by_bs)) / 2, abs=1e-12)


def test_granulated_kendall_skips_undefined_subgroups():
    rows = [{"batch_size": 16, "lr": 0.1, "m": 1.0, "acc": 0.5},
            {"batch_size": 32, "lr": 0.1, "m": 2.0, "acc": 0.4},
            {"batch_size": 16, "lr": 0.2, "m": 3.0, "acc": 0.6}]  # lr=0.2 has a single batch size
    r = stats.granulated_kendall(rows, "m", "acc", ["batch_size", "lr"])
    assert r.per_hyperparameter["batch_size"] == -1.0 and r.subgroups_skipped["batch_size"] == 1
    assert r.per_hyperparameter["lr"] == 1.0 and r.subgroups_skipped["lr"] == 1  # bs=32 has one lr
    assert r.psi == 0.0
    r = stats.granulated_kendall(rows[:1], "m", "acc", ["batch_size", "lr"])
    assert math.isnan(r.psi) and "no subgroup with a defined tau" in r.reason


def test_smallest_attainable_spearman_p_is_that_of_a_perfect_order():
    # n = 5, no ties: exact, 2/5! = 1/60 whatever the observed order; n = 5 can never pass alpha = 0.005.
    c = stats.correlate([1, 2, 3, 4, 5], [0.3, 0.1, 0.5, 0.2, 0.4])
    assert c.spearman_p_method == "exact" and c.spearman_min_p == pytest.approx(2 / 120, rel=1e-12)
    # Ties in y raise the floor: the best arrangement of (1, 1, 2, 3, 4) has rho < 1, and its exact p is the
    # share of the 5! pairings at least as extreme, counted here by brute force.
    y = np.array([1.0, 1.0, 2.0, 3.0, 4.0])
    x = np.arange(5.0)
    rhos = np.array([sps.spearmanr(x, y[list(p)]).statistic for p in itertools.permutations(range(5))])
    best = sps.spearmanr(x, y).statistic
    assert stats.correlate(x, y[::-1]).spearman_min_p == pytest.approx(np.mean(np.abs(rhos) >= best - 1e-12))
    # Large n: the t approximation of the perfectly ordered arrangement.
    x = np.arange(20.0)
    c = stats.correlate(x, np.random.default_rng(1).random(20))
    assert c.spearman_p_method == "t" and c.spearman_min_p == sps.spearmanr(x, x).pvalue


def test_rank_only_drops_pearson_and_keeps_the_rank_statistics():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], [0.5, 0.4, -1.0, 0.3, 0.35, 0.2, -1.0, 0.1, 0.0]
    c = stats.correlate(x, y, rank_only=True)
    assert math.isnan(c.pearson_r) and math.isnan(c.pearson_p) and c.reason == ""
    assert c.spearman_rho == sps.spearmanr(x, y).statistic and c.kendall_tau == sps.kendalltau(x, y).statistic
