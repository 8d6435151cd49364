"""The cell-level tests (lrbs_tf.analysis.cell_tests) against statsmodels / scipy references, and their edge cases."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm

from lrbs_tf.analysis import cell_tests as ct

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

BS, LR = (32, 64, 128), (0.025, 0.05, 0.1)


def _long(y_fn, seeds=3, rng=None):
    rows = []
    for s in range(seeds):
        for b in BS:
            for l in LR:
                rows.append({"bs": b, "lr": l, "seed": s, "y": y_fn(b, l, s)})
    return pd.DataFrame(rows)


def test_equal_ratio_f_is_the_nested_anova_of_statsmodels():
    rng = np.random.default_rng(0)
    col = {(s, b): rng.normal(0, 0.6) for s in range(3) for b in BS}
    d = _long(lambda b, l, s: 0.01 * math.log(b) + col[(s, b)] + rng.normal(), rng=rng)
    grid = ct.complete_grid(d["bs"], d["lr"], d["seed"], d["y"])
    r = ct.equal_ratio_f(grid)
    d["cell"] = d["bs"].astype(str) + "_" + d["lr"].astype(str)
    d["ratio"] = (d["bs"] / d["lr"]).round(6).astype(str)
    d["seed"] = d["seed"].astype(str)
    with pytest.warns(Warning):  # the dummy coding is over-parameterised; df are counted by rank
        full = smf.ols("y ~ C(cell) + C(ratio):C(seed)", d).fit()
    restricted = smf.ols("y ~ C(ratio) + C(ratio):C(seed)", d).fit()
    table = anova_lm(restricted, full)
    assert r.df1 == 4 and r.df2 == 8  # 9 cells, 5 distinct ratios; 3 seeds
    assert table["df_diff"].iloc[1] == pytest.approx(r.df1)
    assert full.df_resid == pytest.approx(r.df2)
    assert r.statistic == pytest.approx(table["F"].iloc[1], rel=1e-9)
    assert r.p == pytest.approx(table["Pr(>F)"].iloc[1], rel=1e-9)


def test_equal_ratio_f_ignores_whatever_a_seed_or_its_columns_share_with_a_ratio_law():
    # A ratio-only law plus a shift per seed: the within-ratio contrasts are pure noise, the same F as noise alone.
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(3, 3, 3))
    law = _long(lambda b, l, s: -0.03 * math.log(b / l) ** 2 + 5.0 * s + noise[s, BS.index(b), LR.index(l)])
    plain = _long(lambda b, l, s: noise[s, BS.index(b), LR.index(l)])
    f = [ct.equal_ratio_f(ct.complete_grid(d["bs"], d["lr"], d["seed"], d["y"])).statistic for d in (law, plain)]
    assert f[0] == pytest.approx(f[1], rel=1e-9)


def test_complete_grid_drops_cells_missing_a_seed_and_ratio_primary_falls_back():
    d = _long(lambda b, l, s: math.log(b) + 0.1 * s + 0.01 * (b * l) % 3)
    d = d[~((d["bs"] == 128) & (d["lr"] == 0.1) & (d["seed"] == 2))]  # one diverged run
    grid = ct.complete_grid(d["bs"], d["lr"], d["seed"], d["y"])
    assert grid.y.shape == (8, 3) and grid.n_cells_dropped == 1
    one_seed = d[d["seed"] == 0]
    r = ct.ratio_primary(one_seed["bs"], one_seed["lr"], one_seed["seed"], one_seed["y"])
    assert r.p_ratio_method == "cr2_column" and r.primary_seeds == 1


def test_cr2_with_one_observation_per_cluster_is_hc2_of_statsmodels():
    rng = np.random.default_rng(2)
    x = np.column_stack([np.ones(12), rng.normal(size=12), rng.normal(size=12)])
    y = x @ [1.0, 0.5, -0.2] + rng.normal(size=12) * (1 + np.abs(x[:, 1]))
    c = np.array([0.0, 1.0, 0.0])
    est, se, df, p = ct.cr2_contrast(y, x, np.arange(12), c)
    ref = sm.OLS(y, x).fit(cov_type="HC2")
    assert est == pytest.approx(ref.params[1], rel=1e-10)
    assert se == pytest.approx(ref.bse[1], rel=1e-9)
    assert 1 < df < 12 - 3 + 1e-9  # Bell-McCaffrey df: at most the OLS df with homoscedastic weights


def test_cr2_bell_mccaffrey_df_of_a_balanced_two_group_comparison_is_welch_like():
    # One regressor constant within clusters, clusters of equal size: BM df = G - 2 for a balanced difference.
    g = np.repeat(np.arange(6), 4)
    x = np.column_stack([np.ones(24), (g >= 3).astype(float)])
    y = np.random.default_rng(3).normal(size=24) + np.repeat(np.random.default_rng(4).normal(size=6), 4)
    _, se, df, _ = ct.cr2_contrast(y, x, g, np.array([0.0, 1.0]))
    means = pd.Series(y).groupby(g).mean().to_numpy()
    ref = sps.ttest_ind(means[3:], means[:3])  # equal groups: pooled = Welch; CR2 on cluster means is exact
    assert df == pytest.approx(4.0, rel=1e-9)
    assert se == pytest.approx(abs((means[3:].mean() - means[:3].mean()) / ref.statistic), rel=1e-9)


def test_seed_t_is_scipys_one_sample_t_on_the_per_seed_coefficient():
    rng = np.random.default_rng(5)
    bs, lr = np.array([32., 48, 64, 96, 32, 48, 64, 96]), np.array([.03, .05, .07, .11, .05, .07, .11, .13])
    y = rng.normal(size=(8, 4))
    grid = ct.Grid(y, bs, lr, bs / lr, ("0", "1", "2", "3"), 0)
    r = ct.seed_t(grid)
    x, c = ct.quadratic_ratio_design(bs, lr)
    per_seed = [c @ np.linalg.lstsq(x, y[:, k], rcond=None)[0] for k in range(4)]
    assert r.p == pytest.approx(sps.ttest_1samp(per_seed, 0).pvalue, rel=1e-10)
    assert r.df1 == 3


def test_ratio_primary_chooses_equal_ratio_f_with_seeds_and_shared_ratios():
    d = _long(lambda b, l, s: np.random.default_rng(s * 1000 + b + int(l * 1000)).normal())
    r = ct.ratio_primary(d["bs"], d["lr"], d["seed"], d["y"])
    assert r.p_ratio_method == "equal_ratio_f" and (r.primary_df1, r.primary_df2) == (4, 8)


def test_a_batch_size_law_is_found_and_untestable_designs_say_why():
    d = _long(lambda b, l, s: math.log2(b) + np.random.default_rng(s * 7 + b).normal(0, 0.3))
    assert ct.ratio_primary(d["bs"], d["lr"], d["seed"], d["y"]).p_ratio < 1e-4
    two = d[d["bs"] < 128]
    r = ct.ratio_primary(two["bs"], two["lr"], two["seed"].map(lambda s: 0), two["y"])
    assert math.isnan(r.p_ratio) and "2 batch sizes < 3" in r.primary_reason


# --- Table 3's one-seed primary: Spearman with its p from permutations within batch-size columns ---------------

def _brute_force_p(x, y, column):
    """Independent reference: every within-column arrangement of y, Spearman's rho from scipy.spearmanr on
    each, and scipy.stats.permutation_test's two-sided rule (exact: no +1)."""
    import itertools

    x, y, column = (np.asarray(v, dtype=float) for v in (x, y, column))
    blocks = [np.flatnonzero(column == c) for c in np.unique(column)]
    observed = sps.spearmanr(x, y).statistic
    null = []
    for arrangement in itertools.product(*(itertools.permutations(b) for b in blocks)):
        yy = y.copy()
        for b, perm in zip(blocks, arrangement):
            yy[b] = y[list(perm)]
        null.append(sps.spearmanr(x, yy).statistic)
    null = np.array(null)
    tol = 1e-12
    return min(1.0, 2 * min((null <= observed + tol).mean(), (null >= observed - tol).mean())), len(null)


@pytest.mark.parametrize("cells", [
    [(b, l) for b in BS for l in LR],                                          # 3 x 3: 216 arrangements
    [(32, 0.025), (32, 0.05), (32, 0.1), (32, 0.2), (64, 0.05), (64, 0.1), (128, 0.1), (256, 0.4)],  # ragged
])
def test_column_permutation_is_the_brute_force_enumeration_of_within_column_arrangements(cells):
    rng = np.random.default_rng(3)
    bs = np.array([c[0] for c in cells], float)
    lr = np.array([c[1] for c in cells], float)
    shock = {b: rng.normal(0, 2) for b in set(bs)}
    y = np.array([shock[b] + rng.normal() for b in bs])
    y[1] = y[4]  # a tie across columns: average ranks
    r = ct.column_permutation(bs / lr, y, bs)
    p, count = _brute_force_p(bs / lr, y, bs)
    assert r.correlation.spearman_p_method == "column_permutation_exact" and r.n_permutations == count
    assert r.correlation.spearman_p == pytest.approx(p, abs=1e-12)
    assert r.correlation.spearman_rho == pytest.approx(sps.spearmanr(bs / lr, y).statistic, abs=1e-12)
    assert np.isnan(r.correlation.kendall_p)


def test_column_permutation_with_one_column_is_scipys_exact_spearman_permutation_test():
    rng = np.random.default_rng(5)
    x, y = np.array([1.0, 2, 3, 4, 5, 6]), rng.normal(size=6)
    ref = sps.permutation_test((y,), lambda v: sps.spearmanr(x, v).statistic, permutation_type="pairings",
                               n_resamples=np.inf, alternative="two-sided")
    r = ct.column_permutation(x, y, np.zeros(6)).correlation
    assert r.spearman_p == pytest.approx(ref.pvalue, abs=1e-12)
    assert r.spearman_min_p == pytest.approx(2 / 720)


def test_column_permutation_random_draws_agree_with_full_enumeration_and_are_deterministic():
    rng = np.random.default_rng(7)
    bs = np.repeat([32.0, 64.0, 128.0], [5, 5, 4])
    lr = np.concatenate([[0.02, 0.04, 0.06, 0.08, 0.1]] * 2 + [[0.02, 0.04, 0.06, 0.08]])
    y = -0.3 * np.log(bs / lr) + np.repeat(rng.normal(0, 1, 3), [5, 5, 4]) + rng.normal(size=14)
    r = ct.column_permutation(bs / lr, y, bs)
    assert r.correlation.spearman_p_method == "column_permutation_random" and r.n_permutations == 9999
    # Exact p over all 120 x 120 x 24 arrangements: Spearman is affine in sum(rank x * rank y), which is a sum
    # of one term per column.
    rx, ry = sps.rankdata(bs / lr), sps.rankdata(y)
    import itertools
    parts = []
    for b in (np.arange(0, 5), np.arange(5, 10), np.arange(10, 14)):
        perms = np.array(list(itertools.permutations(b)))
        parts.append((rx[b] * ry[perms]).sum(axis=1))
    null = (parts[0][:, None, None] + parts[1][None, :, None] + parts[2][None, None, :]).ravel()
    t = float((rx * ry).sum())
    exact = min(1.0, 2 * min((null <= t + 1e-9).mean(), (null >= t - 1e-9).mean()))
    assert abs(r.correlation.spearman_p - exact) < 4 * math.sqrt(exact * (1 - exact) / 9999) + 3 / 9999
    # Deterministic, and the order of the input changes nothing.
    order = rng.permutation(14)
    again = ct.column_permutation((bs / lr)[order], y[order], bs[order])
    assert again.correlation == r.correlation


def test_column_permutation_pearson_ignores_column_shocks_and_singletons_are_untestable():
    rng = np.random.default_rng(9)
    bs = np.repeat([32.0, 64.0, 128.0], 3)
    lr = np.tile([0.025, 0.05, 0.1], 3)
    y = rng.normal(size=9)
    shocked = y + np.repeat([5.0, -3.0, 11.0], 3)  # a shift per column: sum(x * y) moves by a constant
    a, b = (ct.column_permutation(bs / lr, v, bs).correlation for v in (y, shocked))
    assert a.pearson_p == pytest.approx(b.pearson_p, abs=1e-12)
    single = ct.column_permutation([1.0, 2, 3], [0.1, 0.3, 0.2], [1.0, 2, 3])
    assert "nothing to permute within a column" in single.correlation.reason
    assert np.isnan(single.correlation.spearman_p) and single.n_permutations == 0
    assert "n=2 < 3" == ct.column_permutation([1.0, 2], [0.1, 0.2], [1.0, 1]).correlation.reason
