#!/usr/bin/env python3
"""Calibration of bin/correlate's primary tests: false-positive rates under nulls that real grids have, and power.

Each data set is a grid of runs simulated with the structure real runs have (He et al. 2019; issue 21):

    y(BS, LR, seed) = law(BS, LR) + cell(BS, LR) + s(seed) + c(seed, BS) + e

the best test accuracy as a fraction, e ~ N(0, SIGMA^2) the run noise, s a shift per seed (all runs of a seed
start from the same initial weights; s.d. SEED_SD), c a shock shared by the runs of one (seed, batch size)
column (its learning rates see the same batches; s.d. COLUMN_SD = 0.6 SIGMA, the size measured on real MNIST,
issue 21), and cell a fixed effect per (BS, LR) cell unrelated to the ratio (s.d. CELL_SD, in the designs that
have it). Laws: none, ratio-only straight (-0.03 ln(BS/LR)) or curved (-0.03 u + 0.02 u^2, u the centred
ln(BS/LR)), batch-size-only (-0.01 per doubling of BS: half the quick study's ratio effect, 2.5 SIGMA),
learning-rate-only (+0.01 per doubling of LR), a mixture (the straight ratio law plus half the BS effect), and a
weak ratio law (a quarter of the straight one: -0.0075 ln(BS/LR)) for the one-seed power of Table 3.

Each primary test is counted on the designs where its null holds: the ratio test (`p_ratio`) under ratio-only
laws (no cell effects: those break the ratio law), Table 3, Tables 1-2 and invariance under no law with cell
effects. Its rejection rate at alpha 0.05 and 0.005 is given with a Wilson 95% Monte Carlo interval.

The statistics are the ones bin/correlate computes, called directly (lrbs_tf.analysis.cell_tests.ratio_primary, the
Spearman of lrbs_tf.analysis.stats.correlate on the unit the analysis uses, lrbs_tf.analysis.ratio_stats.invariance_test on
the cell means); `--end_to_end=K` also writes K data sets per design as run folders and runs
lrbs_tf.correlate.analyse (bin/correlate's analysis) on them, and records the largest difference between its
p-values and the direct ones (0 means the table measures bin/correlate itself).

    .venv/bin/python benchmarks/calibration.py                      # the recorded table (a few minutes, 2 cores)
    .venv/bin/python benchmarks/calibration.py --n=2000 --seed=7    # more data sets, other seeds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrbs_tf.analysis import calibration, cell_tests, ratio_stats, stats  # noqa: E402
from lrbs_tf.runs.folder import ratio as exact_ratio  # noqa: E402

SIGMA = 0.004        # run noise: 0.4 accuracy points (the order of the quick study's seed s.d.)
SEED_SD = SIGMA      # shared initialisation: a seed's shift
COLUMN_SD = 0.6 * SIGMA  # shared batches: a (seed, batch size) column's shock, as measured on MNIST (issue 21)
CELL_SD = SIGMA      # cell heterogeneity unrelated to the ratio, as large as the run noise
BS_PER_DOUBLING = -0.01
ALPHAS = (0.05, 0.005)

GRIDS = {
    "geo3": ((32, 64, 128), (0.025, 0.05, 0.1)),                      # 9 cells, 3 shared ratios
    "geo5": ((32, 64, 128, 256, 512), (0.025, 0.05, 0.1, 0.2, 0.4)),  # 25 cells
    "lin5": ((32, 48, 64, 80, 96), (0.06, 0.09, 0.12, 0.15, 0.18)),   # the quick study's linear grid
    "lin20": (tuple(range(16, 321, 16)), tuple(round(0.01 * i, 2) for i in range(1, 21))),  # He et al., 400 cells
    "noshare3": ((32, 64, 128), (0.03, 0.1, 0.3)),                   # no ratio shared: the fallbacks
    "five": ((32, 64, 128), (0.025, 0.05, 0.1)),                      # 5 of geo3's cells
}
FIVE_CELLS = ((32, 0.025), (64, 0.05), (128, 0.1), (32, 0.05), (64, 0.1))


@dataclass(frozen=True)
class Design:
    name: str
    grid: str
    seeds: int
    law: str
    cell_sd: float
    kind: str          # 'null' or 'alternative'
    tests: tuple       # the tests counted on it
    sets_factor: float = 1.0  # data sets: this times --n (--lin20_n on 400 cells); cheap tests get more


RATIO_NULL, CORR_NULL = ("ratio",), ("table3", "table3_runs", "table1", "table2", "invariance")
# Rows that are not a primary test: their size is recorded, not required to hold (the report's sensitivity rows).
SENSITIVITY = ("table3_runs",)
DESIGNS = (
    # The ratio test's nulls: ratio-only laws, straight and curved, with seed and column shocks.
    Design("ratio straight, geo 3x3, 3 seeds", "geo3", 3, "ratio", 0.0, "null", RATIO_NULL),
    Design("ratio curved, geo 3x3, 3 seeds", "geo3", 3, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, geo 5x5, 3 seeds", "geo5", 3, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, geo 5x5, 2 seeds", "geo5", 2, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, lin 5x5, 1 seed", "lin5", 1, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, lin 5x5, 3 seeds", "lin5", 3, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, lin 20x20, 1 seed", "lin20", 1, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio curved, no shared ratio 3x3, 3 seeds", "noshare3", 3, "curved", 0.0, "null", RATIO_NULL),
    Design("ratio straight, 5 cells, 2 seeds", "five", 2, "ratio", 0.0, "null", RATIO_NULL),
    # The correlation and invariance tests' nulls: nothing depends on BS or LR, cells differ anyway.
    Design("no law + cell effects, geo 3x3, 3 seeds", "geo3", 3, "none", CELL_SD, "null", CORR_NULL),
    Design("no law + cell effects, geo 5x5, 2 seeds", "geo5", 2, "none", CELL_SD, "null", CORR_NULL),
    Design("no law + cell effects, lin 5x5, 1 seed", "lin5", 1, "none", CELL_SD, "null", CORR_NULL),
    Design("no law + cell effects, lin 20x20, 1 seed", "lin20", 1, "none", CELL_SD, "null", CORR_NULL),
    # The one-seed Table 3 primary on He et al.'s grid again, with 4x the data sets (it costs ~0.1 s a set).
    Design("no law + cell effects, lin 20x20, 1 seed (Table 3, more sets)", "lin20", 1, "none", CELL_SD, "null",
           ("table3", "table3_runs"), 4.0),
    # Alternatives.
    Design("BS only, geo 3x3, 3 seeds", "geo3", 3, "bs", 0.0, "alternative", ("ratio", "table3", "invariance")),
    Design("LR only, geo 3x3, 3 seeds", "geo3", 3, "lr", 0.0, "alternative", ("ratio", "table3")),
    Design("ratio + half BS, geo 5x5, 3 seeds", "geo5", 3, "mixture", 0.0, "alternative", ("ratio", "table3")),
    Design("ratio straight, geo 3x3, 3 seeds (power)", "geo3", 3, "ratio", 0.0, "alternative",
           ("table3", "invariance")),
    Design("BS only, lin 5x5, 1 seed", "lin5", 1, "bs", 0.0, "alternative", ("ratio", "table3", "table3_runs")),
    Design("LR only, lin 5x5, 1 seed", "lin5", 1, "lr", 0.0, "alternative", ("table3", "table3_runs")),
    Design("ratio straight, lin 5x5, 1 seed (power)", "lin5", 1, "ratio", 0.0, "alternative",
           ("table3", "table3_runs")),
    Design("ratio weak (1/4), lin 5x5, 1 seed (power)", "lin5", 1, "weak", 0.0, "alternative",
           ("table3", "table3_runs")),
    Design("ratio weak (1/4), lin 20x20, 1 seed (power)", "lin20", 1, "weak", 0.0, "alternative",
           ("table3", "table3_runs")),
)


def cells_of(grid: str) -> list[tuple[int, float]]:
    if grid == "five":
        return list(FIVE_CELLS)
    bss, lrs = GRIDS[grid]
    return [(b, l) for b in bss for l in lrs]


def law_values(law: str, bs: np.ndarray, lr: np.ndarray) -> np.ndarray:
    u = np.log(bs / lr) - np.log(bs / lr).mean()
    return {"none": 0 * u, "ratio": -0.03 * u, "weak": -0.0075 * u, "curved": -0.03 * u + 0.02 * u ** 2,
            "bs": BS_PER_DOUBLING * np.log2(bs), "lr": -BS_PER_DOUBLING * np.log2(lr),
            "mixture": -0.03 * u + 0.5 * BS_PER_DOUBLING * np.log2(bs)}[law]


def simulate(design: Design, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One data set: arrays batch_size, lr, ratio, seed, y (one entry per run, cells x seeds)."""
    cells = cells_of(design.grid)
    bs = np.array([c[0] for c in cells], dtype=float)
    lr = np.array([c[1] for c in cells], dtype=float)
    column = np.unique(bs, return_inverse=True)[1]
    base = 0.7 + law_values(design.law, bs, lr) + design.cell_sd * rng.standard_normal(len(cells))
    seeds = design.seeds
    shocks = (SEED_SD * rng.standard_normal(seeds)[None, :]
              + COLUMN_SD * rng.standard_normal((column.max() + 1, seeds))[column]
              + SIGMA * rng.standard_normal((len(cells), seeds)))
    y = base[:, None] + shocks
    return {"batch_size": np.repeat(bs, seeds), "lr": np.repeat(lr, seeds),
            "ratio": np.array([exact_ratio(int(b), float(l)) for b, l in zip(bs, lr)]).repeat(seeds),
            "seed": np.tile(np.arange(seeds), len(cells)), "y": y.ravel()}


def _cell_means(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = np.stack([d["batch_size"], d["lr"]], axis=1)
    cells, idx = np.unique(keys, axis=0, return_inverse=True)
    idx = idx.ravel()
    means = np.bincount(idx, weights=d["y"]) / np.bincount(idx)
    ratio = np.zeros(len(cells))
    ratio[idx] = d["ratio"]
    return cells[:, 0], cells[:, 1], ratio, means


def p_values(d: dict, tests: tuple) -> dict[str, list[float]]:
    """The p-values of the primary tests bin/correlate reports for one data set (a list per test: Tables 1-2
    have one test per learning rate / batch size)."""
    bs, lr, ratio, means = _cell_means(d)
    out: dict[str, list[float]] = {}
    if "ratio" in tests:
        r = cell_tests.ratio_primary(d["batch_size"], d["lr"], d["seed"], d["y"], d["ratio"])
        out["ratio"] = [r.p_ratio]
        out["ratio_method"] = [r.p_ratio_method]
    seeded = len(np.unique(d["seed"])) > 1
    if "table3" in tests:
        # bin/correlate's primary row: the cell means with seeds, the column permutation with one seed.
        out["table3"] = [stats.correlate(ratio, means).spearman_p if seeded else
                         cell_tests.column_permutation(ratio, means, bs).correlation.spearman_p]
        out["table3_method"] = ["cell_means" if seeded else "column_permutation"]
    if "table3_runs" in tests:  # He et al.'s run-level test (table3.csv `with_flagged`), a sensitivity row
        out["table3_runs"] = [stats.correlate(d["ratio"], d["y"]).spearman_p]
    for name, fixed, varying in (("table1", lr, bs), ("table2", bs, lr)):
        if name in tests:
            out[name] = [stats.correlate(varying[fixed == v], means[fixed == v]).spearman_p for v in np.unique(fixed)]
    if "invariance" in tests:
        # In bin/correlate's order of the cells (its cell codes sorted as text), so the randomized permutations
        # are the same draws and the p-values agree exactly.
        order = np.argsort([f"{int(b)}|{float(l)!r}" for b, l in zip(bs, lr)], kind="stable")
        out["invariance"] = [ratio_stats.invariance_test(means[order], ratio[order],
                                                         [f"{int(b)}|{float(l)!r}" for b, l in
                                                          zip(bs[order], lr[order])]).p_permutation]
    return out


def end_to_end(design: Design, rng: np.random.Generator, k: int) -> float:
    """The largest |p(bin/correlate's analysis) - p(direct)| over k data sets written as run folders."""
    from lrbs_tf.analysis import correlate
    from tests.runfolders import write_run

    worst = 0.0
    for _ in range(k):
        d = simulate(design, rng)
        direct = p_values(d, design.tests)
        with tempfile.TemporaryDirectory() as tmp:
            for b, l, s, y in zip(d["batch_size"], d["lr"], d["seed"], d["y"]):
                write_run(Path(tmp), float(y), batch_size=int(b), lr=float(l), seed=int(s), epochs=1,
                          arch="mlp", dataset="mnist1d")
            a = correlate.analyse(tmp)
        t3 = a.tables["table3"]
        got = {"ratio": [a.ratio_test["p_ratio"].iloc[0]],
               "table3": [t3.loc[t3["primary"].astype(bool), "spearman_p"].iloc[0]],
               "table3_runs": [t3.loc[t3["subset"] == "with_flagged", "spearman_p"].iloc[0]],
               "table1": a.tables["table1"]["spearman_p"].tolist(), "table2": a.tables["table2"]["spearman_p"].tolist(),
               "invariance": [a.invariance["p_permutation"].iloc[0]]}
        for test in design.tests:
            for x, y in zip(direct[test], got[test]):
                if np.isfinite(x) or np.isfinite(y):
                    worst = max(worst, abs(float(x) - float(y)) if np.isfinite(x) and np.isfinite(y) else math.inf)
    return worst


def run(n: int, seed: int, designs=DESIGNS, e2e: int = 0, lin20_n: int | None = None) -> dict:
    """Simulates n data sets per design (lin20_n for the 400-cell designs); returns the calibration table."""
    rows, agreement = [], {}
    started = time.process_time()
    for i, design in enumerate(designs):
        rng = np.random.default_rng([seed, i])
        count = round(design.sets_factor * (lin20_n if (design.grid == "lin20" and lin20_n is not None) else n))
        ps: dict[str, list] = {}
        t0 = time.process_time()
        for _ in range(count):
            for test, values in p_values(simulate(design, rng), design.tests).items():
                ps.setdefault(test, []).extend(values)
        cost = (time.process_time() - t0) / max(count, 1)
        methods = {"ratio": ps.pop("ratio_method", []), "table3": ps.pop("table3_method", [])}
        for test in design.tests:
            p = np.asarray(ps[test], dtype=float)
            tested = p[np.isfinite(p)]
            row = {"design": design.name, "grid": design.grid, "cells": len(cells_of(design.grid)),
                   "seeds": design.seeds, "law": design.law, "cell_sd": design.cell_sd, "kind": design.kind,
                   "test": test, "role": "sensitivity" if test in SENSITIVITY else "primary",
                   "method": (max(set(m), key=m.count) if (m := methods.get(test)) else
                              "runs" if test == "table3_runs" else ""), "n_sets": count, "n_tested": int(len(tested)),
                   "untestable": int(len(p) - len(tested)), "cpu_s_per_set": cost}
            for alpha, tag in zip(ALPHAS, ("05", "005")):
                k = int((tested < alpha).sum())
                low, high = calibration.wilson(k, len(tested))
                row.update({f"rate_{tag}": k / len(tested) if len(tested) else math.nan,
                            f"low_{tag}": low, f"high_{tag}": high})
            if design.kind == "null" and test not in SENSITIVITY:
                row["holds_1_5x"] = bool(row["low_05"] <= 1.5 * 0.05)
            rows.append(row)
        if e2e:
            agreement[design.name] = end_to_end(design, np.random.default_rng([seed, i, 1]), e2e)
    return {"recorded": _dt.date.today().isoformat(), "seed": seed, "n_per_design": n, "lin20_n": lin20_n,
            "sigma": SIGMA, "seed_sd": SEED_SD, "column_sd": COLUMN_SD, "cell_sd": CELL_SD,
            "bs_per_doubling": BS_PER_DOUBLING, "cpu_seconds": time.process_time() - started,
            "end_to_end_max_abs_diff": agreement, "rows": rows}


# The SDE comparison (lrbs_tf.analysis.sde, issue 25): runs of one grid at l = 1 and l = L_MAX (SVAG), seeds
# shared between them. Null: l changes nothing. Per run, y = cell level + seed shift + (seed, cell) initialisation
# effect (both shared by a seed's runs at every l: bin/train seeds the weights alike) + (seed, batch size, l)
# column shock (a column's learning rates share their batches, which differ between l) + run noise, whose s.d.
# is SIGMA in every cell or, `hetero`, SIGMA x 2^U(-1, 1) per cell (2^U(-0.5, 0.5) for 0.5: noise that
# differs between cells, as real grids' does). Both measures (accuracy; the log training loss, on its own scale with the same
# structure) are simulated, since the family is every cell and both measures of a group. Alternative: one cell
# shifted by SDE_SHIFT in accuracy at l = L_MAX.
L_MAX = 4
SDE_SHIFT = 4 * SIGMA
SDE_DESIGNS = (
    ("null, geo 3x3, 2 seeds", "geo3", 2, False, 0.0),
    ("null, geo 3x3, 2 seeds, 2-fold unequal cell noise", "geo3", 2, 0.5, 0.0),
    ("null, geo 3x3, 2 seeds, unequal cell noise", "geo3", 2, True, 0.0),
    ("null, geo 3x3, 3 seeds, unequal cell noise", "geo3", 3, True, 0.0),
    ("null, geo 5x5, 2 seeds, unequal cell noise", "geo5", 2, True, 0.0),
    ("one cell differs by 1.6 points, geo 3x3, 2 seeds", "geo3", 2, False, SDE_SHIFT),
    ("one cell differs by 1.6 points, geo 3x3, 3 seeds, unequal cell noise", "geo3", 3, True, SDE_SHIFT),
)


def simulate_sde(grid: str, seeds: int, hetero: float, shift: float, rng: np.random.Generator):
    """One SDE data set as the runs table lrbs_tf.analysis.sde.compare reads (done runs, l in {1, L_MAX})."""
    import pandas as pd

    cells = cells_of(grid)
    bs = np.array([c[0] for c in cells])
    column = np.unique(bs, return_inverse=True)[1]
    rows = []
    measures = {}
    for m in ("acc", "loss"):
        spread = 0.5 if hetero == 0.5 else 1.0  # s.d. x 2^U(-1, 1): a 4-fold range; 0.5: 2-fold
        sd = SIGMA * (2.0 ** rng.uniform(-spread, spread, len(cells)) if hetero else np.ones(len(cells)))
        shared = (SEED_SD * rng.standard_normal(seeds)[None, :] + SEED_SD * rng.standard_normal((len(cells), seeds))
                  + 0.05 * rng.standard_normal(len(cells))[:, None])
        measures[m] = {level: shared + COLUMN_SD * rng.standard_normal((column.max() + 1, seeds))[column]
                       + sd[:, None] * rng.standard_normal((len(cells), seeds)) for level in (1, L_MAX)}
    if shift:
        measures["acc"][L_MAX][0] += shift
    for level in (1, L_MAX):
        for c, (b, lrate) in enumerate(cells):
            for s in range(seeds):
                rows.append({"run_dir": f"l{level}/bs{b}-lr{lrate}-s{s}", "status": "done", "arch": "mlp",
                             "dataset": "mnist1d", "batch_size": int(b), "lr": float(lrate),
                             "ratio": exact_ratio(int(b), float(lrate)), "seed": s, "svag": level,
                             "best_test_accuracy": 0.7 + measures["acc"][level][c, s],
                             "final_train_loss": float(np.exp(measures["loss"][level][c, s]))})
    return pd.DataFrame(rows)


def sde_holm(runs) -> np.ndarray:
    """The Holm-adjusted p-values (measures x cells) of lrbs_tf.analysis.sde's test on one simulated data set,
    computed directly (sde.paired_seed_t and stats.adjust_pvalues on the paired differences)."""
    from lrbs_tf.analysis import sde

    ps = []
    for m, log in (("best_test_accuracy", False), ("final_train_loss", True)):
        values = np.log(runs[m].to_numpy(float)) if log else runs[m].to_numpy(float)
        frame = runs.assign(v=values).sort_values(["batch_size", "lr", "seed"])
        low = frame[frame["svag"] == 1]["v"].to_numpy().reshape(-1, frame["seed"].nunique())
        high = frame[frame["svag"] == L_MAX]["v"].to_numpy().reshape(low.shape)
        ps.append(sde.paired_seed_t(list(low - high))["p"].to_numpy(float))
    return stats.adjust_pvalues(np.concatenate(ps), "holm").reshape(2, -1)


def run_sde(n: int, seed: int, e2e: int = 10) -> dict:
    """The SDE test's family-wise rejection rate (any cell of the grid failing) per design; for the
    alternatives, also how often the shifted cell (the first) itself is called failed. `e2e` data sets per
    design also go through sde.compare (bin/correlate's code): the largest |p difference| is recorded."""
    from lrbs_tf.analysis import sde

    rows = []
    started = time.process_time()
    for i, (name, grid, seeds, hetero, shift) in enumerate(SDE_DESIGNS):
        rng = np.random.default_rng([seed, 100 + i])
        any_05, any_005, shifted, worst = 0, 0, 0, 0.0
        for k in range(n):
            runs = simulate_sde(grid, seeds, hetero, shift, rng)
            p = sde_holm(runs)
            any_05 += bool((p < 0.05).any())
            any_005 += bool((p < 0.005).any())
            shifted += bool((p[:, 0] < 0.05).any())
            if k < e2e:
                cells = sde.compare(runs, ["arch", "dataset"])
                worst = max(worst, float(np.max(np.abs(cells[["p_holm_acc", "p_holm_log_loss"]].to_numpy(float).T - p))))
        row = {"design": name, "grid": grid, "cells": len(cells_of(grid)), "seeds": seeds, "unequal_noise": {0: "no", 0.5: "2-fold", 1: "4-fold"}[float(hetero)],
               "shift": shift, "kind": "alternative" if shift else "null", "test": "sde",
               "method": sde.TEST_METHOD, "n_tested": n, "untestable": 0, "end_to_end_max_abs_diff": worst}
        for k, tag in ((any_05, "05"), (any_005, "005")):
            low, high = calibration.wilson(k, n)
            row.update({f"rate_{tag}": k / n, f"low_{tag}": low, f"high_{tag}": high})
        if shift:
            row["shifted_cell_failed"] = shifted / n
        else:
            row["holds_1_5x"] = bool(row["low_05"] <= 1.5 * 0.05)
        rows.append(row)
    return {"recorded": _dt.date.today().isoformat(), "seed": seed, "n_per_design": n, "l_max": L_MAX,
            "cpu_seconds": time.process_time() - started, "rows": rows}


def markdown_sde(table: dict) -> str:
    lines = ["| design | data sets | % any cell fails, p_holm < 0.05 [95% MC] | % at 0.005 | shifted cell called "
             "failed | within 1.5x at 0.05 |", "|---|---|---|---|---|---|"]
    for r in table["rows"]:
        verdict = ("yes" if r["holds_1_5x"] else "**no**") if r["kind"] == "null" else "(power)"
        shifted = f"{100 * r['shifted_cell_failed']:.1f}%" if "shifted_cell_failed" in r else ""
        lines.append(f"| {r['design']} | {r['n_tested']} | {100 * r['rate_05']:.1f} [{100 * r['low_05']:.1f}, "
                     f"{100 * r['high_05']:.1f}] | {100 * r['rate_005']:.1f} | {shifted} | {verdict} |")
    return "\n".join(lines)


def markdown(table: dict) -> str:
    def pct(r, tag):
        return f"{100 * r[f'rate_{tag}']:.1f} [{100 * r[f'low_{tag}']:.1f}, {100 * r[f'high_{tag}']:.1f}]"

    lines = ["| design | test | method | data sets | untestable | % p < 0.05 [95% MC] | % p < 0.005 [95% MC] | "
             "within 1.5x at 0.05 |", "|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        verdict = ("(sensitivity)" if r.get("role") == "sensitivity" and r["kind"] == "null" else
                   ("yes" if r.get("holds_1_5x") else "**no**") if r["kind"] == "null" else "(power)")
        lines.append(f"| {r['design']} | {r['test']} | {r['method']} | {r['n_tested']} | {r['untestable']} | "
                     f"{pct(r, '05')} | {pct(r, '005')} | {verdict} |")
    return "\n".join(lines)


# Momentum's interchangeability test (lrbs_tf.analysis.momentum; issue 25), a separate entry of calibration.json
# ("momentum_interchange"). One (batch size, effective LR) cell: y(momentum m, seed s) = 0.7 + shift(m) +
# s(s) + e(m, s), the seed's shift s.d. SEED_SD shared by every momentum (a seed fixes the initial weights
# and the batch order), run noise e of s.d. SIGMA times a factor per momentum (momenta need not be equally
# noisy), normal or Student t with 3 degrees of freedom scaled to that s.d. (heavy tails); "gaps" drops
# seeds so that some momentum shares fewer than 2 with the reference (then Welch's t).
MOMENTUM_DESIGNS = (
    # name, seeds, noise factors per momentum, tails, shift of the last momentum (fraction), kind
    ("2 momenta, 3 seeds, equal noise", 3, (1.0, 1.0), "normal", 0.0, "null"),
    ("2 momenta, 5 seeds, noise 1:2", 5, (1.0, 2.0), "normal", 0.0, "null"),
    ("3 momenta, 5 seeds, noise 1:2:0.5", 5, (1.0, 2.0, 0.5), "normal", 0.0, "null"),
    ("3 momenta, 5 seeds, t3 tails", 5, (1.0, 1.0, 1.0), "t3", 0.0, "null"),
    ("2 momenta, disjoint seeds (Welch), noise 1:2", 4, (1.0, 2.0), "gaps", 0.0, "null"),
    ("2 momenta, 5 seeds, shift 2 SIGMA (power)", 5, (1.0, 1.0), "normal", 2 * SIGMA, "alternative"),
    ("2 momenta, 5 seeds, shift 4 SIGMA (power)", 5, (1.0, 1.0), "normal", 4 * SIGMA, "alternative"),
)


def momentum_cell(seeds: int, factors: tuple, tails: str, shift: float, rng: np.random.Generator):
    """One simulated cell: {momentum index: accuracies indexed by seed} (pandas Series)."""
    import pandas as pd

    seed_shift = SEED_SD * rng.standard_normal(seeds)
    out = {}
    for m, f in enumerate(factors):
        noise = (rng.standard_t(3, seeds) / math.sqrt(3.0) if tails == "t3" else rng.standard_normal(seeds))
        y = 0.7 + seed_shift + f * SIGMA * noise + (shift if m == len(factors) - 1 else 0.0)
        index = np.arange(seeds)
        if tails == "gaps":  # the reference has the even seeds, the other momentum the odd ones
            keep = index % 2 == (m % 2)
            y, index = y[keep], index[keep]
        out[m] = pd.Series(y, index=index)
    return out


def momentum_run(n: int, seed: int) -> dict:
    """The size and power of the momentum test: n simulated cells per design."""
    from lrbs_tf.analysis import momentum

    rows = []
    started = time.process_time()
    for i, (name, seeds, factors, tails, shift, kind) in enumerate(MOMENTUM_DESIGNS):
        rng = np.random.default_rng([seed, 1000 + i])
        ps, methods = [], set()
        for _ in range(n):
            cell = momentum_cell(seeds, factors, tails, shift, rng)
            comps = [momentum.compare(cell[0], cell[m]) for m in range(1, len(factors))]
            methods |= {c.method for c in comps}
            ps.append(momentum.cell_p([c.p for c in comps]))
        p = np.asarray(ps, dtype=float)
        tested = p[np.isfinite(p)]
        row = {"design": name, "seeds": seeds, "momenta": len(factors), "noise_factors": list(factors),
               "tails": tails, "shift": shift, "kind": kind, "test": "momentum_interchange",
               "method": "+".join(sorted(methods)), "n_sets": n, "n_tested": int(len(tested)),
               "untestable": int(len(p) - len(tested))}
        for alpha, tag in zip(ALPHAS, ("05", "005")):
            k = int((tested < alpha).sum())
            low, high = calibration.wilson(k, len(tested))
            row.update({f"rate_{tag}": k / len(tested), f"low_{tag}": low, f"high_{tag}": high})
        if kind == "null":
            row["holds_1_5x"] = bool(row["low_05"] <= 1.5 * 0.05)
        rows.append(row)
    return {"recorded": _dt.date.today().isoformat(), "seed": seed, "n_per_design": n, "sigma": SIGMA,
            "seed_sd": SEED_SD, "cpu_seconds": time.process_time() - started, "rows": rows}


def momentum_markdown(entry: dict) -> str:
    lines = ["| design | method | data sets | % p < 0.05 [95% MC] | % p < 0.005 [95% MC] | within 1.5x at 0.05 |",
             "|---|---|---|---|---|---|"]
    for r in entry["rows"]:
        verdict = ("yes" if r["holds_1_5x"] else "**no**") if r["kind"] == "null" else "(power)"
        lines.append(f"| {r['design']} | {r['method']} | {r['n_tested']} | {100 * r['rate_05']:.1f} "
                     f"[{100 * r['low_05']:.1f}, {100 * r['high_05']:.1f}] | {100 * r['rate_005']:.2f} "
                     f"[{100 * r['low_005']:.2f}, {100 * r['high_005']:.2f}] | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="data sets per design")
    parser.add_argument("--lin20_n", type=int, default=150, help="data sets per 400-cell design")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--end_to_end", type=int, default=2, help="data sets per design through correlate.analyse")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "calibration.json"))
    parser.add_argument("--momentum_only", action="store_true", help="record only the momentum test's entry "
                        "(momentum_interchange) into the existing --out, leaving the other rows as they are")
    parser.add_argument("--momentum_n", type=int, default=4000, help="simulated cells per momentum design")
    parser.add_argument("--sde", action="store_true", help="only the SDE comparison's calibration (its `sde` "
                        "entry in --out; the other entries are kept as recorded)")
    parser.add_argument("--sde_n", type=int, default=1000, help="data sets per SDE design")
    args = parser.parse_args()
    if args.sde:
        path = Path(args.out)
        recorded = calibration.load(path) or {}
        recorded["sde"] = run_sde(args.sde_n, args.seed)
        path.write_text(json.dumps(recorded, indent=1) + "\n")
        print(markdown_sde(recorded["sde"]))
        print(f"\nCPU {recorded['sde']['cpu_seconds']:.0f} s")
        return
    momentum_entry = momentum_run(args.momentum_n, args.seed)
    print(momentum_markdown(momentum_entry))
    print(f"momentum: CPU {momentum_entry['cpu_seconds']:.0f} s")
    if args.momentum_only:
        table = json.loads(Path(args.out).read_text())
        table["momentum_interchange"] = momentum_entry
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
        return
    table = run(args.n, args.seed, e2e=args.end_to_end, lin20_n=args.lin20_n)
    table["momentum_interchange"] = momentum_entry
    previous = calibration.load(Path(args.out))
    if previous and "sde" in previous:  # recorded separately (--sde): kept
        table["sde"] = previous["sde"]
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    Path(args.out).with_suffix(".table.md").write_text(markdown(table) + "\n")
    print(markdown(table))
    print(f"\nCPU {table['cpu_seconds']:.0f} s; end-to-end max |diff|: {table['end_to_end_max_abs_diff']}")


if __name__ == "__main__":
    main()
