"""Does the ratio alone govern? lrbs_tf.analysis.ratio_stats against statsmodels and scipy computed independently, and
bin/correlate's ratio analyses on run folders generated from known laws (the issue's acceptance test)."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps

from lrbs_tf.analysis import correlate, ratio, ratio_stats
from tests.runfolders import write_grid, write_run

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

BS = (16, 32, 64, 128)
LRS = (0.01, 0.02, 0.04, 0.08)
SEEDS = (0, 1, 2)
NOISE = 0.004  # s.d. of the seed noise of the generated accuracies (a fraction: 0.4 points)


def grid_frame(law, seeds=SEEDS, noise=NOISE, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = [{"batch_size": b, "lr": l, "seed": s, "y": law(b, l) + rng.normal(0, noise)}
            for s in seeds for b in BS for l in LRS]
    return pd.DataFrame(rows)


def ratio_law(bs: int, lr: float) -> float:
    return 0.9 - 0.03 * math.log(bs / lr)


def bs_law(bs: int, lr: float) -> float:
    return 0.9 - 0.03 * math.log(bs)


@pytest.mark.parametrize("seeds, cov", [((0,), "HC3"), (SEEDS, "cluster")])
def test_ratio_sufficiency_equals_statsmodels_formula_fits(seeds, cov):
    f = grid_frame(lambda b, l: 0.9 - 0.02 * math.log(b) + 0.03 * math.log(l), seeds=seeds)
    fit = ratio_stats.ratio_sufficiency(f["batch_size"], f["lr"], f["y"])
    f["cell"] = f["batch_size"].astype(str) + "/" + f["lr"].astype(str)
    kw = ({"cov_type": "HC3"} if cov == "HC3" else
          {"cov_type": "cluster", "cov_kwds": {"groups": pd.factorize(f["cell"])[0]}})
    ref = smf.ols("y ~ np.log(batch_size) + np.log(lr)", data=f).fit(use_t=True, **kw)
    b, l = "np.log(batch_size)", "np.log(lr)"
    assert fit.cov_type == cov and fit.n == len(f) and fit.n_cells == 16 and fit.reason == ""
    assert fit.df == (len(f) - 3 if cov == "HC3" else 15)
    assert fit.coef_log_batch_size == pytest.approx(ref.params[b], rel=1e-10)
    assert fit.coef_log_lr == pytest.approx(ref.params[l], rel=1e-10)
    ci = ref.conf_int(0.05)
    assert (fit.coef_log_batch_size_ci_low, fit.coef_log_batch_size_ci_high) == pytest.approx(tuple(ci.loc[b]),
                                                                                              rel=1e-9)
    assert (fit.coef_log_lr_ci_low, fit.coef_log_lr_ci_high) == pytest.approx(tuple(ci.loc[l]), rel=1e-9)
    contrast = ref.t_test(f"{b} + {l} = 0")
    assert fit.coef_sum == pytest.approx(float(np.squeeze(contrast.effect)), rel=1e-9)
    assert fit.p_ratio == pytest.approx(float(np.squeeze(contrast.pvalue)), rel=1e-9)  # one restriction: Wald F = t^2
    assert (fit.coef_sum_ci_low, fit.coef_sum_ci_high) == pytest.approx(tuple(contrast.conf_int(0.05)[0]), rel=1e-9)
    assert fit.r2_both == pytest.approx(ref.rsquared, rel=1e-12)
    assert fit.r2_ratio == pytest.approx(smf.ols("y ~ np.log(batch_size / lr)", data=f).fit().rsquared, rel=1e-12)
    f["u"] = np.log(f["batch_size"] / f["lr"]) - np.log(f["batch_size"] / f["lr"]).mean()
    quad = smf.ols("y ~ np.log(batch_size) + u + I(u ** 2)", data=f).fit(use_t=True, **kw)
    assert fit.p_ratio_quadratic == pytest.approx(float(np.squeeze(quad.t_test(f"{b} = 0").pvalue)), rel=1e-8)
    if cov == "cluster":  # the same test on the 16 cell means, HC3
        means = f.groupby(["batch_size", "lr"], as_index=False)["y"].mean()
        ref_means = smf.ols("y ~ np.log(batch_size) + np.log(lr)", data=means).fit(cov_type="HC3", use_t=True)
        assert fit.p_ratio_cell_means == pytest.approx(float(np.squeeze(ref_means.t_test(f"{b} + {l} = 0").pvalue)),
                                                       rel=1e-9)
    else:
        assert math.isnan(fit.p_ratio_cell_means)  # one run per cell: p_ratio itself is on the cells
    # The law departs from ratio-only (coefficients -0.02 and +0.03): the test must see it.
    assert fit.p_ratio < 1e-6 and fit.coef_sum == pytest.approx(0.01, abs=0.003)


def test_ratio_sufficiency_refuses_designs_it_cannot_test():
    cases = [
        (([16, 32, 64, 128], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4.5]), "n=4 < 5"),
        (([16, 32, 64, 128, 256], [0.01, 0.02, 0.04, 0.08, 0.16], [1, 2, 3, 4, 5.5]),
         "the design has rank 2 < 3: batch size and learning rate do not vary independently"),
        (([16, 32, 16, 32, 64], [0.1, 0.1, 0.2, 0.2, 0.1], [0.5] * 5), "the measure is constant (0.5 for all 5)"),
        (([16, 16, 32, 32, 16, 16, 32, 32], [0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2], range(8)),
         "4 (BS, LR) cells < 5 for clustered errors"),
    ]
    for (bs, lr, y), reason in cases:
        fit = ratio_stats.ratio_sufficiency(bs, lr, np.asarray(y, float))
        assert fit.reason.startswith(reason), fit.reason
        assert math.isnan(fit.p_ratio) and math.isnan(fit.coef_sum)
    # Only 2 distinct ratios: the linear test runs, the quadratic one says why it cannot.
    fit = ratio_stats.ratio_sufficiency([16, 32, 64, 16, 32, 64], [0.1, 0.2, 0.4, 0.2, 0.4, 0.8],
                                        [1.0, 1.1, 1.3, 0.9, 1.2, 1.0])
    assert fit.reason == "" and math.isnan(fit.p_ratio_quadratic)
    assert "fewer than 3 distinct BS/LR values" in fit.quadratic_reason


def test_invariance_pairs_by_brute_force():
    cells = [(16, 0.1), (32, 0.2), (16, 0.2), (32, 0.1), (64, 0.2), (16, 0.1)]  # the last repeats cell 0
    ratios = [b / l for b, l in cells]  # 160, 160, 80, 320, 320, 160
    p = ratio_stats.invariance_pairs(ratios, cells)
    assert p.shared_ratios == (160.0, 320.0)
    # Equal ratio, different cells: at 160 runs 0-1 and 1-5; at 320 runs 3-4. Same cell: 0-5.
    assert p.equal.tolist() == [[0, 1], [1, 5], [3, 4]] and p.same_cell.tolist() == [[0, 5]]
    # Neighbours of 160 are 80 and 320, of 320 is 160: every pair across adjacent distinct ratios touching a
    # shared one.
    expected = sorted({tuple(sorted((i, j))) for i in (0, 1, 5) for j in (2, 3, 4)})
    assert p.neighbour.tolist() == [list(e) for e in expected]
    # Every neighbour pair here is a factor of 2 apart (80-160, 160-320).
    got = ratio_stats.invariance_test([0.7, 0.71, 0.6, 0.8, 0.81, 0.7], ratios, cells)
    assert got.neighbour_ratio_factor == pytest.approx(2.0)


def _reference_statistic(values, pairs):
    eq = np.mean([abs(values[i] - values[j]) for i, j in pairs.equal])
    nb = np.mean([abs(values[i] - values[j]) for i, j in pairs.neighbour])
    return nb - eq


def test_invariance_p_value_exact_by_enumeration_and_randomized_equal_to_scipy():
    cells = [(16, 0.1), (32, 0.2), (16, 0.2), (32, 0.1), (64, 0.2), (64, 0.1)]
    ratios = [b / l for b, l in cells]
    values = np.array([0.70, 0.71, 0.75, 0.64, 0.66, 0.60])
    got = ratio_stats.invariance_test(values, ratios, cells)
    pairs = ratio_stats.invariance_pairs(ratios, cells)
    used = sorted(set(pairs.equal.ravel()) | set(pairs.neighbour.ravel()))
    assert got.n_runs == len(used) == 6 and got.p_method == "exact" and got.n_permutations == 720
    assert got.statistic == pytest.approx(_reference_statistic(values, pairs), abs=1e-15)
    stats = np.array([_reference_statistic(values[list(perm)], pairs) for perm in itertools.permutations(range(6))])
    assert got.p_permutation == pytest.approx(np.mean(stats >= got.statistic - 1e-12), rel=1e-12)
    assert got.min_attainable_p == pytest.approx(np.mean(stats >= stats.max() - 1e-12), rel=1e-12)
    # 9 runs (9! > 9,999): scipy's randomized test with the same generator, from an independent statistic.
    cells = [(16, 0.1), (32, 0.2), (64, 0.4), (16, 0.2), (32, 0.4), (16, 0.4), (32, 0.1), (64, 0.2), (64, 0.1)]
    ratios = [b / l for b, l in cells]
    values = np.random.default_rng(5).normal(0.7, 0.02, len(cells))
    got = ratio_stats.invariance_test(values, ratios, cells)
    pairs = ratio_stats.invariance_pairs(ratios, cells)

    def statistic(v, axis=-1):
        return (np.abs(v[..., pairs.neighbour[:, 0]] - v[..., pairs.neighbour[:, 1]]).mean(-1)
                - np.abs(v[..., pairs.equal[:, 0]] - v[..., pairs.equal[:, 1]]).mean(-1))
    ref = sps.permutation_test((values,), statistic, permutation_type="pairings", vectorized=True,
                               n_resamples=9_999, alternative="greater", batch=ratio_stats.PERMUTATION_BATCH,
                               rng=np.random.default_rng(0))
    assert got.p_method == "randomized" and got.n_permutations == 9_999 and got.min_attainable_p == 1e-4
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-15) and got.p_permutation == ref.pvalue


def test_no_shared_ratio_is_a_reason():
    got = ratio_stats.invariance_test([0.7, 0.6, 0.5], [100.0, 200.0, 400.0], [(1, 1), (2, 1), (4, 1)])
    assert got.reason == "no BS/LR value is shared by two (BS, LR) cells" and math.isnan(got.p_permutation)


def test_cells_and_pooled_seed_noise_against_pandas_and_statsmodels(tmp_path):
    f = grid_frame(ratio_law)
    for r in f.itertuples():
        write_run(tmp_path / "runs", r.y, batch_size=r.batch_size, lr=r.lr, seed=r.seed,
                  sharpness={"lambda_max": math.exp(r.y * 10)})
    write_run(tmp_path / "runs", 0.1, status="diverged", batch_size=16, lr=0.08, seed=7)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert len(cells) == 16 and (cells["n_seeds"] == 3).all()
    assert cells.set_index(["batch_size", "lr"]).loc[(16, 0.08), "n_diverged"] == 1
    ref = f.groupby(["batch_size", "lr"])["y"].agg(["mean", "std"])
    merged = cells.set_index(["batch_size", "lr"]).join(ref)
    np.testing.assert_allclose(merged["mean_best_test_accuracy"], merged["mean"], rtol=1e-12)
    np.testing.assert_allclose(merged["sd_best_test_accuracy"], merged["std"], rtol=1e-10)  # ddof=1
    assert {"mean_lambda_max", "sd_lambda_max"} <= set(cells.columns)
    # Pooled within-cell s.d. = residual s.d. of a one-way ANOVA on the cells.
    anova = smf.ols("y ~ C(batch_size):C(lr)", data=f).fit()
    noise = a.noise.set_index("measure").loc["best_test_accuracy"]
    assert noise["pooled_sd"] == pytest.approx(math.sqrt(anova.mse_resid), rel=1e-10)
    assert noise["df"] == anova.df_resid == 32 and noise["cells_with_seeds"] == 16
    assert noise["cell_mean_range"] == pytest.approx(ref["mean"].max() - ref["mean"].min(), rel=1e-12)
    # Table 3 on cell means and with the diverged run ranked last, against scipy directly.
    t3 = a.tables["table3"].set_index("subset")
    rho_means = sps.spearmanr(ref.index.get_level_values(0) / ref.index.get_level_values(1), ref["mean"])
    assert t3.loc["cell_means", "n"] == 16
    assert t3.loc["cell_means", "spearman_rho"] == pytest.approx(rho_means.statistic, abs=1e-12)
    assert t3.loc["cell_means", "spearman_p"] == pytest.approx(rho_means.pvalue, rel=1e-9)
    # With seeds the column permutation permutes the cell means within batch sizes: a sensitivity row.
    cp = t3.loc["column_permutation"]
    assert cp["n"] == 16 and not cp["primary"] and t3.loc["cell_means", "primary"]
    assert cp["spearman_rho"] == pytest.approx(rho_means.statistic, abs=1e-12)
    assert cp["spearman_p_method"] == "column_permutation_random" and cp["n_permutations"] == 9999
    x = np.append(f["batch_size"] / f["lr"], 16 / 0.08)
    y = np.append(f["y"], -1.0)
    worst = t3.loc["diverged_worst"]
    assert worst["n"] == 49 and worst["n_diverged"] == 1 and math.isnan(worst["pearson_r"])
    assert worst["spearman_rho"] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert worst["kendall_tau"] == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)
    assert worst["spearman_p"] == pytest.approx(sps.spearmanr(x, y).pvalue, rel=1e-9)


def _analyse_law(tmp_path, law):
    f = grid_frame(law)
    for r in f.itertuples():
        write_run(tmp_path / "runs", r.y, batch_size=r.batch_size, lr=r.lr, seed=r.seed)
    return correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)


def test_a_ratio_only_law_passes_the_ratio_test_and_equal_ratios_are_found_alike(tmp_path):
    a = _analyse_law(tmp_path, ratio_law)
    rt = pd.read_csv(tmp_path / "out" / "ratio_test.csv").set_index("measure").loc["best_test_accuracy"]
    assert rt["n"] == 48 and rt["n_cells"] == 16 and rt["cov_type"] == "cluster"
    assert rt["p_ratio"] > 0.05 and not rt["p_ratio_significant"]
    assert rt["coef_log_batch_size"] == pytest.approx(-0.03, abs=0.002)
    assert rt["coef_log_lr"] == pytest.approx(0.03, abs=0.002)
    assert rt["coef_sum_ci_low"] < 0 < rt["coef_sum_ci_high"] and rt["r2_ratio"] > 0.97
    inv = pd.read_csv(tmp_path / "out" / "ratio_invariance.csv").set_index("measure").loc["best_test_accuracy"]
    # The unit is the cell (16 cell means, whole cells permuted): less power than the 48 runs, which are not
    # independent points; the run-level test is kept as p_permutation_runs.
    assert inv["unit"] == "cell_means" and inv["n_runs"] == 16
    assert inv["p_permutation"] < 0.05 and inv["p_permutation_runs"] < a.alpha
    # Equal-ratio cell means differ by the seed noise of a mean of 3 only (E|e1 - e2| = 2 sd / sqrt(3 pi)), their
    # neighbours also by the ratio's effect (0.03 ln 2 = 0.021 per factor of 2); seeds of a cell by 2 sd / sqrt(pi).
    assert inv["mad_equal_ratio"] < 2 * (2 * NOISE / math.sqrt(3 * math.pi)) < inv["mad_neighbour_ratio"]
    assert inv["mad_same_cell"] == pytest.approx(2 * NOISE / math.sqrt(math.pi), rel=0.3)
    assert inv["mad_neighbour_ratio"] > 3 * inv["mad_equal_ratio"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- vgg19 on cifar10, best test accuracy: consistent with BS/LR alone" in report
    assert "- vgg19 on cifar10, best test accuracy: equal-ratio cells are not shown to be more alike" in report


def test_a_batch_size_only_law_fails_the_ratio_test_and_equal_ratios_are_not_alike(tmp_path):
    a = _analyse_law(tmp_path, bs_law)
    rt = a.ratio_test.set_index("measure").loc["best_test_accuracy"]
    assert rt["p_ratio"] < 1e-8 and rt["p_ratio_holm"] < a.alpha
    assert rt["coef_log_lr"] == pytest.approx(0.0, abs=0.002) and rt["r2_ratio"] < rt["r2_both"] - 0.3
    inv = a.invariance.set_index("measure").loc["best_test_accuracy"]
    assert inv["p_permutation"] > 0.5 and inv["mad_equal_ratio"] > inv["mad_neighbour_ratio"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- vgg19 on cifar10, best test accuracy: **BS/LR does not capture the effect**" in report
    assert "equal-ratio cells are not shown to be more alike" in report


def test_measures_on_a_log_scale_only_where_every_value_is_positive():
    f = pd.DataFrame({"best_test_accuracy": [0.5, 0.6], "lambda_max": [2.0, 8.0], "avg_sharpness": [-0.1, 0.2]})
    v, t = ratio.measure_values(f, "lambda_max")
    assert t == "log" and v.tolist() == pytest.approx([math.log(2.0), math.log(8.0)])
    assert ratio.measure_values(f, "avg_sharpness")[1] == "identity"
    assert ratio.measure_values(f, "best_test_accuracy") == (pytest.approx([0.5, 0.6]), "identity")


def test_ratio_outputs_have_the_issues_columns(tmp_path):
    write_grid(tmp_path / "runs", ratio_law, batch_sizes=BS, lrs=LRS, sharpness={"lambda_max": 2.0, "trace": 5.0})
    correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    rt = pd.read_csv(tmp_path / "out" / "ratio_test.csv")
    assert {"arch", "dataset", "measure", "n", "coef_log_batch_size", "coef_log_lr", "p_ratio", "r2_ratio",
            "r2_both", "family"} <= set(rt.columns)
    assert rt["measure"].tolist() == ["best_test_accuracy", "lambda_max", "trace"]
    assert set(pd.read_csv(tmp_path / "out" / "ratio_invariance.csv")["measure"]) == set(rt["measure"])
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert {"arch", "dataset", "batch_size", "lr", "n_seeds", "mean_best_test_accuracy", "sd_best_test_accuracy",
            "mean_lambda_max", "sd_lambda_max", "mean_trace", "sd_trace"} <= set(cells.columns)
    assert set(pd.read_csv(tmp_path / "out" / "table3.csv")["subset"]) == {
        "with_flagged", "without_flagged", "cell_means", "column_permutation", "diverged_worst"}


def test_the_ratio_invariance_flagfile_puts_several_cells_on_three_ratios(tmp_path):
    from collections import Counter

    from lrbs_tf.runs.folder import ratio as exact_ratio
    from tests.helpers import REPO, run_bin

    path = REPO / "flags" / "jastrzebski" / "ratio_invariance.flags"
    text = path.read_text()
    assert "# Command:  bin/sweep --flagfile=flags/jastrzebski/ratio_invariance.flags" in text
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("--") and "=" in line)
    bss = [int(v) for v in values["--batch_sizes"].split(",")]
    lrs = [float(v) for v in values["--lrs"].split(",")]
    cells = Counter(exact_ratio(b, l) for b in bss for l in lrs)
    assert {r: k for r, k in cells.items() if k >= 2} == {320.0: 2, 640.0: 3, 1280.0: 2}
    assert values["--seeds"] == "0,1,2" and values["--arch"] == "mlp" and values["--dataset"] == "mnist1d"
    proc = run_bin("sweep", f"--flagfile={path}", f"--workdir={tmp_path / 'w'}", "--dry_list", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "shard 0 of 1: 27 of the grid's 27 runs (100% of its optimizer steps), 0 finished, 9 work units to run"


def test_the_add_seeds_advice_is_a_command_that_grows_the_sweep(tmp_path):
    """The report's "add seeds" advice, run as written (--dry_list), grows the recorded grid in place."""
    import shlex
    import types

    from lrbs_tf.analysis.report.ratio import add_seeds_advice
    from lrbs_tf.sweep import record
    from tests.helpers import REPO, run_bin

    workdir = tmp_path / "quick"
    grid = ["--batch_sizes=16,32", "--lrs=0.1,0.2", "--arch=mlp", "--dataset=mnist1d", "--epochs=2"]
    # The record a first start writes (without training anything here).
    from lrbs_tf.cli.flags import binary_flags
    from lrbs_tf.sweep import config, scheduler

    fv = binary_flags("sweep").values
    fv(["bin/sweep", *grid, "--seeds=0", f"--workdir={workdir}"])
    record.check_record(workdir, scheduler.grid_record(config.config_from_flags(fv, {})),
                        ["bin/sweep", *grid, "--seeds=0"])
    a = types.SimpleNamespace(runs=pd.DataFrame({"seed": [0, 0, 0, 0]}), results=workdir)
    advice = add_seeds_advice(a)
    command = advice.split("`")[1]
    assert command.startswith("bin/sweep ") and "--seeds=0,1,2" in command
    proc = run_bin("sweep", *shlex.split(command)[1:], "--dry_list", cwd=REPO, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert "sweep.json: this grid grows the recorded one (seeds + 1, 2)" in proc.stdout.splitlines()
    # Without a sweep.json (runs trained by hand), the flag and what to do with it.
    a.results = tmp_path / "elsewhere"
    assert add_seeds_advice(a).startswith("train with `--seeds=0,1,2`")
