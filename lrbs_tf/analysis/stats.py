"""Correlation tests, multiple-testing corrections and the granulated Kendall coefficient.

Everything here is a thin, explicit layer over scipy.stats and statsmodels so that a reader can check each
number against the library that computed it:

- Spearman rho: `scipy.stats.spearmanr` (average ranks for ties). Its p-value (two-sided) is scipy's t
  approximation with n - 2 degrees of freedom for n > EXACT_SPEARMAN_MAX_N, and the exact permutation
  p-value over all n! pairings (`scipy.stats.permutation_test`) for smaller n: the t approximation gives
  p = 0 for a perfect monotone relation among 4 points, whose exact probability under H0 is 2/4! = 1/12.
- Pearson r and its p-value: `scipy.stats.pearsonr` (on the raw values, two-sided).
- Kendall tau-b and its p-value: `scipy.stats.kendalltau` (tau-b corrects for ties; the p-value is exact for
  small samples without ties and from the normal approximation otherwise, scipy's `method='auto'`).
- Holm and Benjamini-Hochberg adjusted p-values: `statsmodels.stats.multitest.multipletests`.

A test that cannot be computed (fewer than `MIN_N` pairs, or a constant variable, where every coefficient is
undefined) is returned with a human-readable `reason` and NaN numbers, so that callers report it rather than
printing a silent NaN.
"""

from __future__ import annotations

import gc
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

MIN_N = 3  # with two points every coefficient is +-1 and every p-value is 1: not evidence
EXACT_SPEARMAN_MAX_N = 8  # 8! = 40,320 pairings per exact test; 9! would be nine times as many
STATISTICS = ("spearman", "pearson", "kendall")
# Column names of a test's coefficient and p-value, per statistic, as written to the CSV files.
P_COLUMN = {s: f"{s}_p" for s in STATISTICS}
ADJUSTMENTS = {"holm": "holm", "bh": "fdr_bh"}  # column suffix -> statsmodels method name


@dataclass(frozen=True)
class Correlation:
    """The three correlation tests of y against x on the same pairs.

    `n` counts the finite pairs used; `n_missing` the pairs dropped because x or y was not finite.
    `reason` is empty when the coefficients were computed and says why not otherwise.
    """

    n: int
    spearman_rho: float
    spearman_p: float
    pearson_r: float
    pearson_p: float
    kendall_tau: float
    kendall_p: float
    n_missing: int = 0
    reason: str = ""
    spearman_p_method: str = ""  # 'exact' (permutation, small n) or 't' (scipy's t approximation)
    # The smallest Spearman p these x and y values could give (y arranged in x's order or its reverse):
    # at n = 5 the exact p cannot go below 2/120, so a table of n = 5 tests cannot reach p < 0.005.
    spearman_min_p: float = math.nan

    def as_dict(self) -> dict:
        return {"n": self.n, "n_missing": self.n_missing, "spearman_rho": self.spearman_rho,
                "spearman_p": self.spearman_p, "spearman_p_method": self.spearman_p_method,
                "spearman_min_p": self.spearman_min_p,
                "pearson_r": self.pearson_r, "pearson_p": self.pearson_p,
                "kendall_tau": self.kendall_tau, "kendall_p": self.kendall_p, "reason": self.reason}


def untestable_reason(x: np.ndarray, y: np.ndarray, x_name: str = "x", y_name: str = "y") -> str:
    """Why y cannot be correlated with x ('' when it can): too few pairs or a constant variable."""
    n = len(x)
    if n < MIN_N:
        return f"n={n} < {MIN_N}"
    constant = [f"{name} is constant ({_fmt(v[0])} for all {n})" for name, v in ((x_name, x), (y_name, y))
                if np.all(v == v[0])]
    return "; ".join(constant)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def finite_pairs(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs where both x and y are finite, and how many were dropped."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], int((~keep).sum())


def correlate(x: Iterable[float], y: Iterable[float], x_name: str = "x", y_name: str = "y",
              rank_only: bool = False) -> Correlation:
    """Spearman, Pearson and Kendall tests of y against x (two-sided), on the finite pairs.

    Non-finite pairs (a missing sharpness value, say) are dropped and counted in `n_missing`.
    rank_only: y is meaningful only as an order (a diverged run placed below every accuracy), so Pearson,
    which depends on the values, is left NaN.
    """
    x, y, n_missing = finite_pairs(x, y)
    reason = untestable_reason(x, y, x_name, y_name)
    if reason:
        nan = math.nan
        return Correlation(len(x), nan, nan, nan, nan, nan, nan, n_missing=n_missing, reason=reason)
    with warnings.catch_warnings():
        # Inputs are checked above; scipy's remaining warnings (e.g. exact p-values falling back to the
        # normal approximation) do not change the numbers we report.
        warnings.simplefilter("ignore")
        sp = sps.spearmanr(x, y)
        pe = sps.pearsonr(x, y)
        ke = sps.kendalltau(x, y)
    sp_p, method = float(sp.pvalue), "t"
    if len(x) <= EXACT_SPEARMAN_MAX_N:
        sp_p, method = spearman_exact_p(x, y), "exact"
    pe_r, pe_p = (math.nan, math.nan) if rank_only else (float(pe.statistic), float(pe.pvalue))
    return Correlation(len(x), float(sp.statistic), sp_p, pe_r, pe_p, float(ke.statistic), float(ke.pvalue),
                       n_missing=n_missing, spearman_p_method=method, spearman_min_p=spearman_min_p(x, y))


def spearman_min_p(x: np.ndarray, y: np.ndarray) -> float:
    """The smallest two-sided Spearman p-value attainable with these x and y values (ties included): the p of
    y sorted into x's order or into its reverse, by the same method `correlate` uses at this n."""
    order = np.argsort(x, kind="stable")
    best = math.inf
    for ys in (np.sort(y), np.sort(y)[::-1]):
        arranged = np.empty_like(ys)
        arranged[order] = ys
        if len(x) <= EXACT_SPEARMAN_MAX_N:
            best = min(best, spearman_exact_p(x, arranged))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best = min(best, float(sps.spearmanr(x, arranged).pvalue))
    return best


def spearman_exact_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided exact p-value of Spearman's rho: the share of all n! pairings of x with y whose rho is at
    least as extreme (scipy.stats.permutation_test, its two-sided rule). Valid with ties (average ranks)."""
    rx, ry = average_ranks(x), average_ranks(y)
    ry_c = ry - ry.mean()

    def rho(r: np.ndarray, axis: int = -1) -> np.ndarray:  # Pearson of ranks = Spearman, vectorised
        r = r - r.mean(axis=-1, keepdims=True)
        return (r * ry_c).sum(-1) / np.sqrt((r ** 2).sum(-1) * (ry_c ** 2).sum())

    return float(sps.permutation_test((rx,), rho, permutation_type="pairings", n_resamples=np.inf,
                                      vectorized=True, alternative="two-sided").pvalue)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (the coefficient of scipy.stats.kendalltau), O(n^2) in numpy.

    Psi needs only the coefficient of many small subgroups; scipy's call also computes a p-value, whose
    overhead dominated the analysis of 1,600 runs (benchmarks/correlate.md).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = len(i)
    denominator = math.sqrt((pairs - np.count_nonzero(dx == 0)) * (pairs - np.count_nonzero(dy == 0)))
    return float(np.sum(dx * dy) / denominator) if denominator else math.nan


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (what Spearman's rho uses)."""
    return sps.rankdata(np.asarray(values, dtype=float), method="average")


def adjust_pvalues(pvalues: Sequence[float], method: str) -> np.ndarray:
    """Holm ('holm') or Benjamini-Hochberg ('bh') adjusted p-values over the finite entries.

    NaN entries (tests that could not be computed) stay NaN and are not counted in the family size.
    """
    if method not in ADJUSTMENTS:
        raise ValueError(f"unknown adjustment {method!r}; valid: {sorted(ADJUSTMENTS)}")
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.isfinite(p)
    if valid.any():
        # statsmodels' Holm calls gc.collect(), whose cost grows with every live object (once per family and
        # statistic; benchmarks/correlate.md); objects frozen out of the collector's view keep it small and
        # change nothing computed.
        frozen = gc.get_freeze_count() == 0
        if frozen:
            gc.freeze()
        try:
            out[valid] = multipletests(p[valid], method=ADJUSTMENTS[method])[1]
        finally:
            if frozen:
                gc.unfreeze()
    return out


@dataclass(frozen=True)
class GranulatedKendall:
    """Jiang et al.'s granulated Kendall coefficient Psi of a measure against a target, over hyperparameters.

    For each hyperparameter i, psi_i is the mean Kendall tau-b of (measure, target) over the subgroups in
    which only hyperparameter i varies (every other hyperparameter fixed); Psi is the mean of the psi_i.
    Subgroups where tau is undefined (n < 2 or a constant variable) are left out and counted.
    """

    psi: float
    per_hyperparameter: Mapping[str, float]
    subgroups_used: Mapping[str, int]
    subgroups_skipped: Mapping[str, int]
    reason: str = ""
    skipped_reasons: tuple[str, ...] = field(default=())


def granulated_kendall(rows: Sequence[Mapping[str, object]], measure: str, target: str,
                       hyperparameters: Sequence[str]) -> GranulatedKendall:
    """Psi (Jiang et al. 2019, "Fantastic generalization measures", eq. 4) over `rows`.

    rows: one mapping per run holding the hyperparameter values, the measure and the target. Runs with a
    non-finite measure or target are ignored. A subgroup with a single run per value of the varying
    hyperparameter is fine; replicated runs (seeds) are all used as separate points, as in Table 1/2.
    """
    usable = [r for r in rows if _finite(r.get(measure)) and _finite(r.get(target))]
    per_hp: dict[str, float] = {}
    used: dict[str, int] = {}
    skipped: dict[str, int] = {}
    skipped_reasons: list[str] = []
    for hp in hyperparameters:
        others = [h for h in hyperparameters if h != hp]
        subgroups: dict[tuple, list] = {}
        for r in usable:
            subgroups.setdefault(tuple(r[h] for h in others), []).append(r)
        taus = []
        skipped[hp] = 0
        for key, members in sorted(subgroups.items(), key=lambda kv: str(kv[0])):
            m = np.array([float(r[measure]) for r in members])
            t = np.array([float(r[target]) for r in members])
            if len(members) < 2 or np.all(m == m[0]) or np.all(t == t[0]):
                skipped[hp] += 1
                fixed = ", ".join(f"{h}={v}" for h, v in zip(others, key))
                skipped_reasons.append(f"{hp} varying at {fixed}: "
                                       + (f"n={len(members)}" if len(members) < 2 else "constant values"))
                continue
            taus.append(kendall_tau_b(m, t))
        used[hp] = len(taus)
        if taus:
            per_hp[hp] = float(np.mean(taus))
    if len(per_hp) < len(hyperparameters):
        missing = [hp for hp in hyperparameters if hp not in per_hp]
        return GranulatedKendall(math.nan, per_hp, used, skipped,
                                 reason=f"no subgroup with a defined tau for {', '.join(missing)}",
                                 skipped_reasons=tuple(skipped_reasons))
    return GranulatedKendall(float(np.mean(list(per_hp.values()))), per_hp, used, skipped,
                             skipped_reasons=tuple(skipped_reasons))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(float(value))
