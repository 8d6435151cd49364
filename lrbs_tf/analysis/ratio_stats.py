"""Does the ratio alone govern? Two statistics, each a thin layer over statsmodels or scipy.

Ratio sufficiency (`ratio_sufficiency`): ordinary least squares of a measure y on log(batch size) and
log(learning rate), y = a + b_bs log BS + b_lr log LR, with heteroscedasticity-robust (HC3) standard errors,
or errors clustered by (BS, LR) cell when seeds repeat a cell (`statsmodels` OLS, `cov_type='HC3'` /
`'cluster'`, `use_t=True`: t and F reference distributions with n - 3 or G - 1 degrees of freedom, G the
number of cells). If only BS/LR matters, y depends on log BS - log LR alone, so b_bs + b_lr = 0: `p_ratio`
is the Wald test of that restriction. Writing log LR = log BS - log(BS/LR) shows it is the same as asking
whether log BS adds anything to a straight line in log(BS/LR). `p_ratio_quadratic` asks the same question
after a quadratic term in log(BS/LR): a ratio-only law that is curved in log(BS/LR) can make the linear
test reject on a grid whose log BS and log LR values are skewed (the linear grids' log 1..20 are), and the
quadratic version does not. The R^2 of y on log(BS/LR) alone (`r2_ratio`) beside that of the two-variable
model (`r2_both`) says how much of the variation the ratio carries.

Equal-ratio invariance (`invariance_test`): Jastrzebski et al. (2018) predict that runs with the same BS/LR
end alike. The statistic is the mean absolute difference of y over pairs of runs in different (BS, LR) cells
with the same ratio, against the same mean over pairs whose ratios are neighbours (the next distinct ratio
below or above a shared one): statistic = MAD(neighbour pairs) - MAD(equal-ratio pairs). Its p-value is
one-sided (equal-ratio pairs more alike) under the null that the runs' values are exchangeable, from
`scipy.stats.permutation_test` permuting the values over the runs in any pair (exact when n! is at most
`n_resamples`, else `n_resamples` random permutations from a fixed seed, so the numbers reproduce).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import statsmodels.api as sm
from scipy import stats as sps

MIN_N = 5      # 3 coefficients: with 4 runs a single residual degree of freedom carries every error
MIN_CELLS = 5  # clustered errors: G - 1 degrees of freedom for 3 coefficients
CI_LEVEL = 0.95
N_RESAMPLES = 9_999
PERMUTATION_SEED = 0
PERMUTATION_BATCH = 1_000  # permutations evaluated at once: bounds memory at 1,000 x pairs floats


@dataclass(frozen=True)
class RatioFit:
    """The ratio-sufficiency test of one measure. Coefficients are in units of y per unit of natural log
    (y per factor e of BS or LR); `ci_*` are 95% intervals; `cov_type` is 'HC3' or 'cluster'; `df` the
    degrees of freedom of the t / F reference distribution. NaN numbers and a `reason` when untestable."""

    n: int
    n_cells: int
    cov_type: str
    df: float
    coef_log_batch_size: float
    coef_log_batch_size_ci_low: float
    coef_log_batch_size_ci_high: float
    coef_log_lr: float
    coef_log_lr_ci_low: float
    coef_log_lr_ci_high: float
    coef_sum: float
    coef_sum_ci_low: float
    coef_sum_ci_high: float
    p_ratio: float
    p_ratio_quadratic: float
    p_ratio_cell_means: float
    r2_ratio: float
    r2_both: float
    reason: str = ""
    quadratic_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _untestable(n: int, n_cells: int, cov_type: str, reason: str) -> RatioFit:
    nan = math.nan
    return RatioFit(n, n_cells, cov_type, nan, *([nan] * 14), reason=reason)


def _cells(batch_size: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """An integer code per run: runs of one (BS, LR) cell share it."""
    return np.unique(np.stack([batch_size, lr], axis=1), axis=0, return_inverse=True)[1].ravel()


def _fit(y: np.ndarray, X: np.ndarray, cells: np.ndarray, clustered: bool):
    model = sm.OLS(y, X)
    if clustered:
        return model.fit(cov_type="cluster", cov_kwds={"groups": cells}, use_t=True)
    return model.fit(cov_type="HC3", use_t=True)


def _design_reason(X: np.ndarray, what: str) -> str:
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return f"the design has rank {np.linalg.matrix_rank(X)} < {X.shape[1]}: {what}"
    return ""


def ratio_sufficiency(batch_size: Sequence[float], lr: Sequence[float], y: Sequence[float]) -> RatioFit:
    """OLS of y on log(batch_size) and log(lr), and the Wald test of coef sum = 0 (only BS/LR matters).

    batch_size: examples per step; lr: learning rate; y: the measure (a fraction for accuracy, log of a
    sharpness quantity), one entry per run; non-finite y are dropped. Errors are clustered by (BS, LR)
    cell when some cell holds more than one run (seeds), HC3 otherwise.
    """
    bs, lr, y = (np.asarray(v, dtype=float) for v in (batch_size, lr, y))
    keep = np.isfinite(y) & np.isfinite(bs) & np.isfinite(lr)
    bs, lr, y = bs[keep], lr[keep], y[keep]
    n = len(y)
    cells = _cells(bs, lr) if n else np.zeros(0, int)
    n_cells = int(len(np.unique(cells)))
    clustered = n_cells < n
    cov_type = "cluster" if clustered else "HC3"
    if n < MIN_N:
        return _untestable(n, n_cells, cov_type, f"n={n} < {MIN_N}")
    if np.all(y == y[0]):
        return _untestable(n, n_cells, cov_type, f"the measure is constant ({y[0]:.6g} for all {n})")
    if clustered and n_cells < MIN_CELLS:
        return _untestable(n, n_cells, cov_type, f"{n_cells} (BS, LR) cells < {MIN_CELLS} for clustered errors")
    log_bs, log_lr = np.log(bs), np.log(lr)
    X = np.column_stack([np.ones(n), log_bs, log_lr])
    reason = _design_reason(X, "batch size and learning rate do not vary independently over these runs")
    if reason:
        return _untestable(n, n_cells, cov_type, reason)
    if not clustered:
        leverage = np.einsum("ij,ji->i", X, np.linalg.pinv(X))
        if np.any(leverage > 1 - 1e-9):
            return _untestable(n, n_cells, cov_type, "a run has leverage 1, so its HC3 error is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' small-sample notes do not change the numbers
        both = _fit(y, X, cells, clustered)
        contrast = both.t_test(np.array([[0.0, 1.0, 1.0]]))
        wald = both.wald_test(np.array([[0.0, 1.0, 1.0]]), use_f=True, scalar=True)
        ratio_only = sm.OLS(y, np.column_stack([np.ones(n), log_bs - log_lr])).fit()
    ci = both.conf_int(1 - CI_LEVEL)
    sum_ci = contrast.conf_int(1 - CI_LEVEL)[0]
    p_quad, quad_reason = _quadratic_p(y, log_bs, log_bs - log_lr, cells, clustered)
    return RatioFit(n, n_cells, cov_type, float(both.df_resid_inference if clustered else both.df_resid),
                    float(both.params[1]), float(ci[1, 0]), float(ci[1, 1]),
                    float(both.params[2]), float(ci[2, 0]), float(ci[2, 1]),
                    float(contrast.effect[0]), float(sum_ci[0]), float(sum_ci[1]),
                    float(wald.pvalue), p_quad, _cell_means_p(y, X, cells) if clustered else math.nan,
                    float(ratio_only.rsquared), float(both.rsquared), quadratic_reason=quad_reason)


def _cell_means_p(y: np.ndarray, X: np.ndarray, cells: np.ndarray) -> float:
    """p_ratio on the cell means (one point per (BS, LR) cell, HC3): with few cells, clustered errors are
    too small (measured: 12.7% of p < 0.05 under a ratio-only law with 9 cells, docs/correlate.md), while
    this test kept its size (4.4%)."""
    codes, first = np.unique(cells, return_index=True)
    means = np.array([y[cells == c].mean() for c in codes])
    Xc = X[first]
    if np.any(np.einsum("ij,ji->i", Xc, np.linalg.pinv(Xc)) > 1 - 1e-9):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.OLS(means, Xc).fit(cov_type="HC3", use_t=True)
        return float(fit.wald_test(np.array([[0.0, 1.0, 1.0]]), use_f=True, scalar=True).pvalue)


def _quadratic_p(y: np.ndarray, log_bs: np.ndarray, log_ratio: np.ndarray, cells: np.ndarray,
                 clustered: bool) -> tuple[float, str]:
    """p of the log BS coefficient in y ~ log BS + log(BS/LR) + log(BS/LR)^2 (same errors as the linear fit)."""
    if len(np.unique(log_ratio)) < 3:
        return math.nan, "fewer than 3 distinct BS/LR values: no curvature to allow for"
    centred = log_ratio - log_ratio.mean()  # centring keeps the square from being collinear with the line
    X = np.column_stack([np.ones(len(y)), log_bs, centred, centred ** 2])
    reason = _design_reason(X, "log BS is a function of log(BS/LR) and its square over these runs")
    if reason or len(y) < MIN_N + 1:
        return math.nan, reason or f"n={len(y)} < {MIN_N + 1}"
    if not clustered and np.any(np.einsum("ij,ji->i", X, np.linalg.pinv(X)) > 1 - 1e-9):
        return math.nan, "a run has leverage 1, so its HC3 error is undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = _fit(y, X, cells, clustered)
        return float(fit.wald_test(np.array([[0.0, 1.0, 0.0, 0.0]]), use_f=True, scalar=True).pvalue), ""


@dataclass(frozen=True)
class Pairs:
    """Index pairs (i < j) into one group's runs: `equal` in different cells with the same BS/LR, `neighbour`
    at a shared ratio and the next distinct ratio below or above it, `same_cell` seeds of one cell.
    `shared_ratios`: the ratio values held by at least two cells."""

    equal: np.ndarray
    neighbour: np.ndarray
    same_cell: np.ndarray
    shared_ratios: tuple[float, ...]


def invariance_pairs(ratios: Sequence[float], cells: Sequence[object]) -> Pairs:
    """The pairs of runs the invariance statistic compares. ratios: BS/LR per run, equal ratios as equal
    floats (runtable.ratio); cells: a hashable (BS, LR) cell id per run. Vectorised over all i < j pairs
    (400 runs: 80,000 pairs in milliseconds)."""
    ratios = np.asarray(ratios, dtype=float)
    codes = np.unique(np.asarray([str(c) for c in cells]), return_inverse=True)[1].ravel()
    distinct = np.unique(ratios)
    rank = np.searchsorted(distinct, ratios)  # index of each run's ratio among the distinct ones
    cells_per_ratio = np.array([len(np.unique(codes[rank == k])) for k in range(len(distinct))], dtype=int)
    shared = cells_per_ratio >= 2
    i, j = np.triu_indices(len(ratios), 1)
    same_cell = codes[i] == codes[j]
    equal = (rank[i] == rank[j]) & ~same_cell & shared[rank[i]]
    neighbour = (np.abs(rank[i] - rank[j]) == 1) & (shared[rank[i]] | shared[rank[j]])
    pairs = np.stack([i, j], axis=1)
    return Pairs(pairs[equal], pairs[neighbour], pairs[same_cell], tuple(float(r) for r in distinct[shared]))


def mean_abs_difference(values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mean |v_i - v_j| over `pairs` (shape (m, 2)), along the last axis of `values` (so it vectorises)."""
    if not len(pairs):
        return np.full(values.shape[:-1], math.nan)
    return np.abs(values[..., pairs[:, 0]] - values[..., pairs[:, 1]]).mean(axis=-1)


@dataclass(frozen=True)
class Invariance:
    """The equal-ratio invariance statistic of one measure (units of y; accuracy as a fraction).

    n_runs: runs in any compared pair (the permuted values). mad_*: mean absolute differences over the
    pairs (`same_cell`: seeds of one cell, the noise floor, over the whole group). statistic =
    mad_neighbour_ratio - mad_equal_ratio; p_permutation: one-sided, equal-ratio pairs more alike.
    """

    n_runs: int
    n_shared_ratios: int
    n_equal_pairs: int
    n_neighbour_pairs: int
    n_same_cell_pairs: int
    mad_equal_ratio: float
    mad_neighbour_ratio: float
    mad_same_cell: float
    neighbour_ratio_factor: float  # median of max/min BS/LR over the neighbour pairs: how close neighbours are
    statistic: float
    p_permutation: float
    p_method: str
    n_permutations: int
    min_attainable_p: float
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def invariance_test(values: Sequence[float], ratios: Sequence[float], cells: Sequence[object],
                    n_resamples: int = N_RESAMPLES, seed: int = PERMUTATION_SEED) -> Invariance:
    """Are runs of equal BS/LR (in different cells) more alike than runs of neighbouring ratios?

    values: the measure per run (non-finite entries are dropped first); ratios, cells: as for
    invariance_pairs. n_resamples: random permutations when n! exceeds it (else exact).
    """
    values, ratios = np.asarray(values, dtype=float), np.asarray(ratios, dtype=float)
    keep = np.isfinite(values)
    values, ratios = values[keep], ratios[keep]
    cells = [c for c, k in zip(cells, keep) if k]
    pairs = invariance_pairs(ratios, cells)
    same = mean_abs_difference(values, pairs.same_cell)
    nan = math.nan
    used = np.unique(np.concatenate([pairs.equal.ravel(), pairs.neighbour.ravel()]))
    factor = (float(np.median(np.max(ratios[pairs.neighbour], axis=1) / np.min(ratios[pairs.neighbour], axis=1)))
              if len(pairs.neighbour) else nan)
    base = dict(n_runs=len(used), n_shared_ratios=len(pairs.shared_ratios), n_equal_pairs=len(pairs.equal),
                n_neighbour_pairs=len(pairs.neighbour), n_same_cell_pairs=len(pairs.same_cell),
                mad_same_cell=float(same), neighbour_ratio_factor=factor)
    if not len(pairs.equal) or not len(pairs.neighbour):
        why = ("no BS/LR value is shared by two (BS, LR) cells" if not len(pairs.equal)
               else "the shared ratios have no neighbouring ratio")
        return Invariance(**base, mad_equal_ratio=nan, mad_neighbour_ratio=nan, statistic=nan,
                          p_permutation=nan, p_method="", n_permutations=0, min_attainable_p=nan, reason=why)
    remap = np.full(len(values), -1)
    remap[used] = np.arange(len(used))
    equal, neighbour = remap[pairs.equal], remap[pairs.neighbour]
    sample = values[used]
    # One gather for both means: statistic = sum_p w_p |v_i - v_j| with w = +1/#neighbour, -1/#equal.
    both = np.concatenate([neighbour, equal])
    weights = np.concatenate([np.full(len(neighbour), 1 / len(neighbour)), np.full(len(equal), -1 / len(equal))])

    def statistic(v: np.ndarray, axis: int = -1) -> np.ndarray:
        # Runs on the first axis: gathering whole rows is faster than gathering columns.
        vt = np.ascontiguousarray(np.moveaxis(v, -1, 0))
        # A weighted sum, not a matrix product: BLAS threads spinning on a shared machine tripled the CPU time.
        return np.einsum("p,p...->...", weights, np.abs(vt[both[:, 0]] - vt[both[:, 1]]))

    observed = float(statistic(sample))
    exact = math.factorial(len(sample)) <= n_resamples
    result = sps.permutation_test((sample,), statistic, permutation_type="pairings", vectorized=True,
                                  n_resamples=n_resamples, alternative="greater", batch=PERMUTATION_BATCH,
                                  rng=np.random.default_rng(seed))
    null = np.asarray(result.null_distribution)
    # Exact: the share of permutations reaching the largest statistic (ties among permutations included);
    # randomized: scipy counts the observed arrangement once, so 1 / (n_resamples + 1).
    smallest = float(np.mean(null >= null.max() - 1e-12 * abs(null.max()))) if exact else 1 / (n_resamples + 1)
    return Invariance(**base, mad_equal_ratio=float(mean_abs_difference(sample, equal)),
                      mad_neighbour_ratio=float(mean_abs_difference(sample, neighbour)), statistic=observed,
                      p_permutation=float(result.pvalue), p_method="exact" if exact else "randomized",
                      n_permutations=len(null) if exact else n_resamples, min_attainable_p=smallest)
