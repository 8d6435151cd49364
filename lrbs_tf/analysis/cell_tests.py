"""Tests whose unit of replication is the cell, and the seed the unit of independent randomness.

Runs of one seed are not independent of each other: they start from the same initial weights, and the runs of
one (seed, batch size) column (its learning rates) see the same batches in the same order. Runs of different
seeds share nothing. So a seed's whole grid is one independent replicate, and the error of a comparison
between cells is measured by how that comparison varies from seed to seed. Three tests follow from this:

- `equal_ratio_f` (the shape-free ratio test, `p_ratio_method` 'equal_ratio_f'): do cells of equal BS/LR have
  equal means? Per seed, the within-ratio contrasts d_k = A y_k (A: an orthonormal basis of the vectors that
  sum to zero inside each ratio's cells, q = cells - distinct ratios of them) are iid over seeds; the
  repeated-measures F = S |mean_k d_k|^2 / q over sum_k |d_k - mean d|^2 / (q (S - 1)) on (q, q (S - 1))
  degrees of freedom. It assumes no form for the law, cancels anything a seed shares across its grid, and its
  error holds the column shocks of the cells it compares (equal-ratio cells always lie in different
  columns). It is the nested-model F of y ~ ratio + ratio:seed against y ~ cell + ratio:seed (statsmodels
  anova_lm, tests/test_cell_tests.py).
- `seed_t` (fallback with seeds but no shared ratio): a linear statistic c'y of the cell means (here the log BS
  coefficient of y ~ log BS + u + u^2, u the centred log ratio) computed per seed and tested with a one-sample
  t over seeds (S - 1 df; scipy.stats.ttest_1samp). Exact under any dependence inside a seed.
- `cr2_contrast` (fallback with one seed): OLS on the cells with CR2 (Bell-McCaffrey) errors clustered by
  batch-size column and the Bell-McCaffrey degrees of freedom of the contrast (Imbens & Kolesar 2016): a
  column shock is one draw per column, so a column, not a run, is the unit; with few columns the df are few
  and the test says so by its width rather than by false positives. With one cluster per observation CR2 is
  statsmodels' HC2 (checked in the tests).

- `column_permutation` (Table 3's primary with one seed, table3.csv subset 'column_permutation'): Spearman's
  rho of the measure with BS/LR over all runs (He et al.'s statistic, unchanged), its p-value from permuting
  the measure within each batch-size column. With one seed a column's runs share one shock (its batches and
  initialisation) and batch size correlates with BS/LR, so the run-level t-approximation p treats a column
  shock as evidence. Permuting within columns keeps every column's shock and every between-column difference
  in the null distribution; the test is exact under "within a batch size, the measure is exchangeable across
  learning rates", whatever the column shocks and whatever batch size alone does. So it answers: within a
  batch size, does the measure fall as BS/LR rises (the learning-rate part of the claim)? A between-column
  difference (an effect of batch size alone) is not evidence with one seed: it cannot be told from the
  column's shared shock. All prod_c n_c! arrangements when there are at most `COLUMN_PERMUTATIONS`, else that
  many random ones from a generator seeded by a fixed name (the same numbers on every call). Pearson's r gets
  the same permutations; Kendall's tau is given without a p-value (its permutation is O(n^2) per draw).

`complete_grid` builds the cells x seeds table these need: the seeds present in most cells, and the cells that
have all of them (cells missing a seed, e.g. a diverged run, are left out and counted).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

from lrbs_tf.analysis import stats
from lrbs_tf.core.text import plural

MIN_SEEDS = 2
COLUMN_PERMUTATIONS = 9999  # within-column permutations when there are more arrangements than this
COLUMN_PERMUTATION_SEED = "lrbs_tf table3 column_permutation"  # the name its generator's seed is derived from
MIN_COLUMNS = 3  # CR2 with a column-level regressor: with 2 columns the contrast has at most 1 df, often 0


@dataclass(frozen=True)
class Grid:
    """The complete cells x seeds table of one group and measure. y: (cells, seeds); bs, lr, ratio: per cell;
    seeds: the seed ids of the columns of y; n_cells_dropped: cells left out because a seed was missing."""

    y: np.ndarray
    bs: np.ndarray
    lr: np.ndarray
    ratio: np.ndarray
    seeds: tuple
    n_cells_dropped: int


def complete_grid(bs: Sequence[float], lr: Sequence[float], seed: Sequence[object], y: Sequence[float],
                  ratio: Sequence[float] | None = None) -> Grid:
    """Cells (BS, LR) x seeds, finite y only. Duplicate (cell, seed) entries are averaged (callers merge
    duplicates first). Keeps the seeds that appear in at least half the cells, then the cells holding all of
    them; ratio defaults to bs / lr (pass runs.csv's ratio so equal ratios compare equal as decimals)."""
    bs, lr, y = (np.asarray(v, dtype=float) for v in (bs, lr, y))
    ratio = bs / lr if ratio is None else np.asarray(ratio, dtype=float)
    seed = np.asarray([str(s) for s in seed])
    keep = np.isfinite(y) & np.isfinite(bs) & np.isfinite(lr)
    bs, lr, y, ratio, seed = bs[keep], lr[keep], y[keep], ratio[keep], seed[keep]
    cells, cell_idx = np.unique(np.stack([bs, lr], axis=1), axis=0, return_inverse=True)
    cell_idx = cell_idx.ravel()
    seeds, seed_idx = np.unique(seed, return_inverse=True)
    total = np.zeros((len(cells), len(seeds)))
    count = np.zeros((len(cells), len(seeds)))
    np.add.at(total, (cell_idx, seed_idx), y)
    np.add.at(count, (cell_idx, seed_idx), 1)
    common = (count > 0).sum(axis=0) * 2 >= len(cells)
    full = (count[:, common] > 0).all(axis=1)
    cell_ratio = np.zeros(len(cells))
    cell_ratio[cell_idx] = ratio
    with np.errstate(invalid="ignore"):
        table = total[np.ix_(full, common)] / count[np.ix_(full, common)]
    return Grid(table, cells[full, 0], cells[full, 1], cell_ratio[full], tuple(seeds[common]),
                int((~full).sum()))


def within_ratio_contrasts(ratios: Sequence[float]) -> np.ndarray:
    """(q, cells): an orthonormal basis (Helmert) of the vectors summing to 0 over each ratio's cells;
    q = cells - distinct ratios. Rows are 0 outside one ratio's cells."""
    ratios = np.asarray(ratios, dtype=float)
    rows = []
    for r in np.unique(ratios):
        idx = np.flatnonzero(ratios == r)
        for j in range(1, len(idx)):
            v = np.zeros(len(ratios))
            v[idx[:j]] = 1.0
            v[idx[j]] = -float(j)
            rows.append(v / np.linalg.norm(v))
    return np.array(rows).reshape(len(rows), len(ratios))


@dataclass(frozen=True)
class Result:
    """One test: p-value, the statistic, its degrees of freedom (df2 NaN for a t), what was used."""

    p: float
    statistic: float
    df1: float
    df2: float
    n_cells: int
    n_seeds: int
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _nan(n_cells: int, n_seeds: int, reason: str) -> Result:
    return Result(math.nan, math.nan, math.nan, math.nan, n_cells, n_seeds, reason)


def equal_ratio_f(grid: Grid) -> Result:
    """The repeated-measures F of 'cells of equal BS/LR have equal means' (see the module docstring)."""
    c, s = grid.y.shape
    if s < MIN_SEEDS:
        return _nan(c, s, f"{s} seed(s) complete over the cells < {MIN_SEEDS}: the seed noise is unmeasured")
    a = within_ratio_contrasts(grid.ratio)
    q = len(a)
    if not q:
        return _nan(c, s, "no BS/LR value is held by two complete cells")
    d = a @ grid.y
    mean = d.mean(axis=1)
    ss_hyp = s * float(mean @ mean)
    ss_err = float(((d - mean[:, None]) ** 2).sum())
    df1, df2 = q, q * (s - 1)
    if ss_err <= 0:
        return _nan(c, s, "the within-ratio contrasts do not vary between seeds (zero error)")
    f = (ss_hyp / df1) / (ss_err / df2)
    return Result(float(sps.f.sf(f, df1, df2)), float(f), float(df1), float(df2), c, s)


def quadratic_ratio_design(bs: np.ndarray, lr: np.ndarray, ratio: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(X, contrast): columns 1, log BS, u, u^2 (u = centred log ratio; u^2 dropped with < 3 distinct ratios)
    and the contrast picking log BS: its coefficient is 0 under any ratio-only law the polynomial can carry."""
    ratio = bs / lr if ratio is None else ratio
    u = np.log(ratio) - np.log(ratio).mean()
    cols = [np.ones(len(bs)), np.log(bs), u]
    if len(np.unique(ratio)) >= 3:
        cols.append(u ** 2)
    x = np.column_stack(cols)
    contrast = np.zeros(x.shape[1])
    contrast[1] = 1.0
    return x, contrast


def seed_t(grid: Grid) -> Result:
    """The log BS coefficient of the quadratic ratio model, per seed, tested over seeds (one-sample t)."""
    c, s = grid.y.shape
    if s < MIN_SEEDS:
        return _nan(c, s, f"{s} seed(s) complete over the cells < {MIN_SEEDS}")
    x, contrast = quadratic_ratio_design(grid.bs, grid.lr, grid.ratio)
    if c <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return _nan(c, s, "batch size and BS/LR do not vary independently over the complete cells")
    per_seed = contrast @ np.linalg.lstsq(x, grid.y, rcond=None)[0]
    if np.all(per_seed == per_seed[0]):
        return _nan(c, s, "the coefficient is the same for every seed")
    t = sps.ttest_1samp(per_seed, 0.0)
    return Result(float(t.pvalue), float(t.statistic), float(s - 1), math.nan, c, s)


def _inv_sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    inv = np.where(w > 1e-12 * max(w.max(), 1e-300), 1.0 / np.sqrt(np.clip(w, 1e-300, None)), 0.0)
    return (v * inv) @ v.T


def cr2_contrast(y: np.ndarray, x: np.ndarray, clusters: np.ndarray, contrast: np.ndarray
                 ) -> tuple[float, float, float, float]:
    """(estimate, CR2 standard error, Bell-McCaffrey df, two-sided p) of contrast'beta in OLS y ~ x.

    CR2 (Bell & McCaffrey 2002): V = (X'X)^-1 sum_g X_g' A_g e_g e_g' A_g X_g (X'X)^-1 with
    A_g = (I - H_gg)^(-1/2). The df of a single contrast are Imbens & Kolesar's (2016): with G_g = (I - H)_g
    A_g X_g (X'X)^-1 c stacked into G (n x clusters), df = (tr G'G)^2 / |G'G|_F^2, and p from t(df).
    """
    x = np.asarray(x, dtype=float)
    n = len(y)
    bread = np.linalg.inv(x.T @ x)
    beta = bread @ x.T @ y
    resid = y - x @ beta
    hat = x @ bread @ x.T
    m = np.eye(n) - hat
    ids = np.unique(clusters)
    meat = np.zeros((x.shape[1], x.shape[1]))
    g_cols = np.zeros((n, len(ids)))
    lc = bread @ contrast
    for j, g in enumerate(ids):
        idx = np.flatnonzero(clusters == g)
        a_g = _inv_sqrt_psd(m[np.ix_(idx, idx)])
        u = x[idx].T @ a_g @ resid[idx]
        meat += np.outer(u, u)
        g_cols[:, j] = m[:, idx] @ (a_g @ (x[idx] @ lc))
    v = bread @ meat @ bread
    se = math.sqrt(max(float(contrast @ v @ contrast), 0.0))
    gg = g_cols.T @ g_cols
    df = float(np.trace(gg) ** 2 / np.sum(gg * gg)) if np.sum(gg * gg) > 0 else math.nan
    est = float(contrast @ beta)
    p = float(2 * sps.t.sf(abs(est) / se, df)) if se > 0 and df > 0 else math.nan
    return est, se, df, p


def cr2_ratio(bs: np.ndarray, lr: np.ndarray, y: np.ndarray, ratio: np.ndarray | None = None) -> Result:
    """The quadratic ratio model on cell values (one per cell), CR2 errors clustered by batch size."""
    bs, lr, y = (np.asarray(v, dtype=float) for v in (bs, lr, y))
    ratio = bs / lr if ratio is None else np.asarray(ratio, dtype=float)
    columns = len(np.unique(bs))
    if columns < MIN_COLUMNS:
        return _nan(len(y), 1, f"{plural(columns, 'batch size')} < {MIN_COLUMNS}: too few columns to tell an effect of "
                               "batch size from a shock shared by a column")
    x, contrast = quadratic_ratio_design(bs, lr, ratio)
    if len(y) <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return _nan(len(y), 1, "batch size and BS/LR do not vary independently over these cells")
    if np.all(y == y[0]):
        return _nan(len(y), 1, f"the measure is constant ({y[0]:.6g})")
    est, se, df, p = cr2_contrast(y, x, bs, contrast)
    if not np.isfinite(p):
        return _nan(len(y), 1, "the CR2 error or its degrees of freedom are not defined for this design")
    return Result(p, est / se, df, math.nan, len(y), 1)


@dataclass(frozen=True)
class RatioPrimary:
    """The primary ratio test of one measure: p, which method decided, its df and what it used."""

    p_ratio: float
    p_ratio_method: str
    primary_statistic: float
    primary_df1: float
    primary_df2: float
    primary_cells: int
    primary_seeds: int
    primary_cells_dropped: int
    primary_reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def ratio_primary(bs: Sequence[float], lr: Sequence[float], seed: Sequence[object], y: Sequence[float],
                  ratio: Sequence[float] | None = None) -> RatioPrimary:
    """Chooses and runs the primary ratio test: 'equal_ratio_f' with >= 2 complete seeds and a shared ratio;
    else 'seed_t' with >= 2 seeds; else 'cr2_column' on the cell means (one seed). The reason of each test
    not used is kept in primary_reason when none could be computed."""
    grid = complete_grid(bs, lr, seed, y, ratio)
    tried = []
    if grid.y.shape[1] >= MIN_SEEDS:
        for method, test in (("equal_ratio_f", equal_ratio_f), ("seed_t", seed_t)):
            r = test(grid)
            if not r.reason:
                return RatioPrimary(r.p, method, r.statistic, r.df1, r.df2, r.n_cells, r.n_seeds,
                                    grid.n_cells_dropped, "")
            tried.append(f"{method}: {r.reason}")
    # One seed (or seeds that cannot be paired): the cell means, clustered by column.
    bs_a, lr_a, y_a = (np.asarray(v, dtype=float) for v in (bs, lr, y))
    rat = bs_a / lr_a if ratio is None else np.asarray(ratio, dtype=float)
    keep = np.isfinite(y_a) & np.isfinite(bs_a) & np.isfinite(lr_a)
    cells, idx = np.unique(np.stack([bs_a[keep], lr_a[keep]], axis=1), axis=0, return_inverse=True)
    idx = idx.ravel()
    means = np.bincount(idx, weights=y_a[keep]) / np.bincount(idx) if len(idx) else np.zeros(0)
    cell_ratio = np.zeros(len(cells))
    cell_ratio[idx] = rat[keep]
    r = cr2_ratio(cells[:, 0], cells[:, 1], means, cell_ratio) if len(cells) else _nan(0, 0, "no values")
    if not r.reason:
        return RatioPrimary(r.p, "cr2_column", r.statistic, r.df1, r.df2, r.n_cells,
                            int(grid.y.shape[1]) if grid.y.size else 1, 0, "")
    tried.append(f"cr2_column: {r.reason}")
    return RatioPrimary(math.nan, "", math.nan, math.nan, math.nan, len(cells), int(grid.y.shape[1]),
                        grid.n_cells_dropped, "; ".join(tried))


@dataclass(frozen=True)
class ColumnPermutation:
    """The column-stratified permutation test: the correlation (Spearman and Pearson p from the permutations,
    spearman_p_method 'column_permutation_exact' or '..._random', spearman_min_p the smallest p these columns
    can give), the number of arrangements used and of columns with something to permute."""

    correlation: stats.Correlation
    n_permutations: int
    n_columns_permuted: int


def _seed_of(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _two_sided(null: np.ndarray, observed: float, randomized: bool) -> float:
    """scipy.stats.permutation_test's two-sided rule: twice the smaller one-sided share, the observed
    arrangement counted once more when the arrangements are random draws; float ties within 100 eps."""
    gamma = 100 * np.finfo(float).eps * max(abs(observed), float(np.abs(null).max()), 1.0)
    adj = 1 if randomized else 0
    less = ((null <= observed + gamma).sum() + adj) / (len(null) + adj)
    greater = ((null >= observed - gamma).sum() + adj) / (len(null) + adj)
    return float(min(1.0, 2 * min(less, greater)))


def column_permutation(x: Sequence[float], y: Sequence[float], column: Sequence[float], x_name: str = "x",
                       y_name: str = "y", n_resamples: int = COLUMN_PERMUTATIONS,
                       seed_name: str = COLUMN_PERMUTATION_SEED) -> ColumnPermutation:
    """Spearman (and Pearson) of y with x over all points, p-values from permuting y within each `column`
    (see the module docstring). Deterministic: the points are put in a canonical order (column, x, y) first, so
    the input order changes nothing. Cost: O(n_resamples x n log n) (about 0.1-0.3 s at 400 points)."""
    x, y, column = (np.asarray(v, dtype=float) for v in (x, y, column))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(column)
    n_missing = int((~keep).sum())
    x, y, column = x[keep], y[keep], column[keep]
    nan = math.nan

    def untested(reason: str) -> ColumnPermutation:
        return ColumnPermutation(stats.Correlation(len(x), nan, nan, nan, nan, nan, nan, n_missing=n_missing,
                                                   reason=reason), 0, 0)

    reason = stats.untestable_reason(x, y, x_name, y_name)
    if reason:
        return untested(reason)
    order = np.lexsort((y, x, column))
    x, y, column = x[order], y[order], column[order]
    codes = np.unique(column, return_inverse=True)[1].ravel()
    blocks = [b for b in (np.flatnonzero(codes == c) for c in range(codes.max() + 1)) if len(b) >= 2]
    if not blocks:
        return untested("every batch size holds one point: nothing to permute within a column (with one seed "
                        "a difference between batch sizes cannot be told from the shock its runs share)")
    rx, ry = stats.average_ranks(x), stats.average_ranks(y)
    total = math.prod(math.factorial(len(b)) for b in blocks)
    exact = total <= n_resamples
    count = total if exact else n_resamples
    null = {"rank": np.zeros(count), "raw": np.zeros(count)}
    rng = None if exact else np.random.default_rng(_seed_of(seed_name))
    radix = 1
    for b in blocks:
        if exact:  # arrangement k takes block b's permutation (k // radix) % len(b)!, all k enumerated
            perms = np.array(list(itertools.permutations(range(len(b)))))
            pick = perms[(np.arange(count) // radix) % len(perms)]
            radix *= len(perms)
        else:
            pick = np.argsort(rng.random((count, len(b))), axis=1)
        for key, (u, v) in (("rank", (rx, ry)), ("raw", (x, y))):
            null[key] += (u[b][None, :] * v[b][pick]).sum(axis=1)
    observed = {key: float(sum((u[b] * v[b]).sum() for b in blocks)) for key, (u, v) in
                (("rank", (rx, ry)), ("raw", (x, y)))}
    p_s = _two_sided(null["rank"], observed["rank"], not exact)
    p_r = _two_sided(null["raw"], observed["raw"], not exact)
    if exact:
        gamma = 100 * np.finfo(float).eps * max(float(np.abs(null["rank"]).max()), 1.0)
        extremes = min((null["rank"] >= null["rank"].max() - gamma).sum(),
                       (null["rank"] <= null["rank"].min() + gamma).sum())
        min_p = float(min(1.0, 2 * extremes / count))
    else:
        min_p = 2 / (count + 1)
    c = stats.correlate(x, y, x_name, y_name)
    corr = stats.Correlation(len(x), c.spearman_rho, p_s, c.pearson_r, p_r, c.kendall_tau, nan,
                             n_missing=n_missing, spearman_p_method="column_permutation_"
                             + ("exact" if exact else "random"), spearman_min_p=min_p)
    return ColumnPermutation(corr, int(count), len(blocks))
