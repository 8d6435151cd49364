"""bin/correlate's SDE comparison (lrbs_tf.analysis.sde, issue 25): the seed-paired test against statsmodels and
scipy, and sde.csv, the verdicts, the report section and Figure 8 on generated run folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from lrbs_tf.analysis import correlate, sde
from lrbs_tf.runs import config as config_lib
from tests import runfolders


def test_the_pooled_paired_t_is_ols_on_cell_indicators():
    """Per cell, the mean paired difference, its s.e., t and p equal statsmodels' OLS of the differences on one
    indicator per cell (the residual variance pooled over cells, its degrees of freedom sum(n_c - 1))."""
    rng = np.random.default_rng(4)
    diffs = [rng.normal(m, 0.01, n) for m, n in ((0.0, 2), (0.02, 3), (-0.01, 2), (0.005, 4))]
    got = sde.paired_seed_t(diffs)
    y = np.concatenate(diffs)
    X = np.zeros((len(y), len(diffs)))
    X[np.arange(len(y)), np.repeat(np.arange(len(diffs)), [len(d) for d in diffs])] = 1.0
    fit = sm.OLS(y, X).fit()
    np.testing.assert_allclose(got["diff"], fit.params, rtol=1e-12)
    np.testing.assert_allclose(got["se"], fit.bse, rtol=1e-10)
    np.testing.assert_allclose(got["p"], fit.pvalues, rtol=1e-8)
    assert fit.df_resid == 7 and (got["df"] == 7).all()
    assert sde.cell_paired_p(diffs[1]) == pytest.approx(sps.ttest_rel(diffs[1], np.zeros(3)).pvalue, rel=1e-12)
    assert np.isnan(sde.cell_paired_p(diffs[0][:1]))
    assert sde.paired_seed_t([np.array([0.1]), np.array([0.2])])["p"].isna().all()  # no degree of freedom


def _write_study(root, seeds=3, shifted=(64, 0.1), diverged=None):
    """2 x 2 cells at l = 1, 2, 4 with `seeds` seeds: accuracy 0.8 + a seed shift + noise (s.d. 0.002), the
    cell `shifted` 5 points higher at l = 4; `diverged`: a (bs, lr) cell whose l = 4 runs diverged."""
    rng = np.random.default_rng(0)
    for bs in (32, 64):
        for lr in (0.05, 0.1):
            for level in (1, 2, 4):
                for s in range(seeds):
                    acc = 0.8 + 0.01 * s + rng.normal(0, 0.002) + (0.05 if (bs, lr, level) == (*shifted, 4) else 0)
                    status = "diverged" if diverged == (bs, lr) and level == 4 else "done"
                    runfolders.write_run(root, acc, status=status, name=config_lib.run_name(
                        "mlp", "mnist1d", bs, lr, s, svag=level), arch="mlp", dataset="mnist1d", batch_size=bs,
                        lr=lr, seed=s, svag=level,
                        result_overrides={"final_train_loss": float(0.01 * np.exp(rng.normal(0, 0.1)))})


def test_correlate_finds_the_cell_where_sgd_and_svag_differ(tmp_path):
    _write_study(tmp_path)
    a = correlate.run(tmp_path, figures=False)
    cells = pd.read_csv(tmp_path / "correlate" / sde.SDE_FILE)
    assert len(cells) == 4 and set(cells["svag_levels"]) == {"1,2,4"} and (cells["seeds_paired"] == 3).all()
    verdict = {(r.batch_size, r.lr): r.sde_holds for r in cells.itertuples()}
    assert verdict == {(32, 0.05): "yes", (32, 0.1): "yes", (64, 0.05): "yes", (64, 0.1): "no"}
    shifted = cells[(cells["batch_size"] == 64) & (cells["lr"] == 0.1)].iloc[0]
    assert shifted["diff_acc"] == pytest.approx(shifted["acc_mean_l1"] - shifted["acc_mean_l4"], abs=1e-12)
    assert shifted["diff_acc"] == pytest.approx(-0.05, abs=0.005)
    # Runs of another l are another algorithm: grouped apart, none read as a duplicate of its l = 1 twin.
    assert set(a.runs["status"]) == {"done"} and len(a.labels) == 3
    # The ratio test on the l = 1 runs of the 3 cells where the SDE holds, and of all 4.
    assert int(a.sde.ratio_test["n_cells"].iloc[0]) == 3 and int(a.sde.ratio_test_all["n_cells"].iloc[0]) == 4
    report = (tmp_path / "correlate" / "report.md").read_text()
    assert "## The SDE approximation: SGD against SVAG" in report
    assert "holds (no difference beyond the seed noise) in 3 of 4 cells" in report and "fails in 1 (BS 64, lr 0.1)" in report


def test_a_cell_diverged_at_one_l_fails_without_a_test_and_figure_8_is_drawn(tmp_path):
    _write_study(tmp_path, seeds=2, shifted=(0, 0), diverged=(32, 0.1))
    a = correlate.run(tmp_path)
    cells = a.sde.cells.set_index(["batch_size", "lr"])
    assert cells.loc[(32, 0.1), "sde_holds"] == "no"
    assert cells.loc[(32, 0.1), "note"] == "diverged at l=4 only (2 run(s))"
    assert np.isnan(cells.loc[(32, 0.1), "p_acc"])
    assert (cells.drop(index=(32, 0.1))["sde_holds"] == "yes").all()
    assert "fig8_sde" in a.figures and (tmp_path / "correlate" / "fig8_sde.png").is_file()


def test_without_svag_runs_there_is_no_sde_output(tmp_path):
    for lr in (0.05, 0.1):
        runfolders.write_run(tmp_path, 0.8, arch="mlp", dataset="mnist1d", lr=lr)
    a = correlate.run(tmp_path, figures=False)
    assert a.sde is None and not (tmp_path / "correlate" / sde.SDE_FILE).exists()
    assert "No cell has runs at two values of SVAG's l" in (tmp_path / "correlate" / "report.md").read_text()
