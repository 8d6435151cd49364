"""Steps to result and McCandlish's fit (lrbs_tf.analysis.scaling, lrbs_tf.analysis.scaling_fit, bin/correlate --target_*):
the crossing against hand-computed interpolations, the fit against scipy's curve_fit, and run folders
generated with a known law S(B) = S_min (1 + B_crit / B) recovered through bin/correlate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from lrbs_tf.analysis import correlate, scaling
from lrbs_tf.analysis.model import DEFAULT_GROUP_BY, group_columns
from lrbs_tf.analysis.scaling_fit import fit_scaling, predict
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as rf
from tests.runfolders import law_steps, loss_rows, write_run, write_scaling_study

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

LOSS = scaling.ResultTarget("train_loss", 0.4)
BS = (16, 32, 64, 128, 256, 512, 1024, 2048)
LRS = (0.05, 0.1, 0.2)


def test_crossing_interpolates_between_the_bracketing_epoch_rows():
    steps, epochs = np.array([10.0, 20, 30, 40]), np.array([1, 2, 3, 4])
    c = scaling.crossing(steps, epochs, np.array([2.0, 1.0, 0.5, 0.2]), LOSS)
    assert c.steps == pytest.approx(30 + 10 * (0.5 - 0.4) / (0.5 - 0.2), rel=1e-12)
    assert (c.epoch, c.bracketed, c.reached, c.last_step) == (4, True, True, 40.0)
    acc = scaling.crossing(steps, epochs, np.array([0.1, 0.5, 0.7, 0.9]), scaling.ResultTarget("test_accuracy", 0.6))
    assert acc.steps == pytest.approx(25.0, rel=1e-12) and acc.epoch == 3
    first = scaling.crossing(steps, epochs, np.array([0.3, 0.2, 0.1, 0.1]), LOSS)  # no row before it
    assert (first.steps, first.bracketed) == (10.0, False)
    never = scaling.crossing(steps, epochs, np.array([2.0, 1.0, 0.9, 0.8]), LOSS)
    assert math.isnan(never.steps) and not never.reached and never.epoch is None


def test_epoch_rows_take_the_step_column_else_epoch_times_steps_per_epoch():
    rows = [{"epoch": 1, "train_loss": 1.0, "step": 7}, {"epoch": 2, "train_loss": None, "step": 14},
            {"epoch": 3, "train_loss": 0.5, "step": 20}]  # a partial last epoch: 6 steps, not 7
    steps, epochs, values, problem = scaling.epoch_rows(rows, 999, "train_loss")
    assert problem == "" and steps.tolist() == [7.0, 20.0] and epochs.tolist() == [1, 3]
    plain = [{k: v for k, v in r.items() if k != "step"} for r in rows]
    steps, _, _, problem = scaling.epoch_rows(plain, 5, "train_loss")
    assert problem == "" and steps.tolist() == [5.0, 15.0]
    assert "no steps_per_epoch" in scaling.epoch_rows(plain, None, "train_loss")[3]


def test_one_target_only_and_each_in_its_range():
    assert scaling.target_from(None, None) is None
    assert str(scaling.target_from(0.05, None)) == "train_loss <= 0.05"
    assert str(scaling.target_from(None, 0.9)) == "test_accuracy >= 0.9"
    for args, match in (((0.05, 0.9), "give one target"), ((-1.0, None), "not a loss > 0"),
                        ((None, 1.5), r"not a fraction in \(0, 1\]")):
        with pytest.raises(UsageError, match=match):
            scaling.target_from(*args)


def test_fit_matches_scipy_curve_fit_and_recovers_an_exact_law():
    b = np.array(BS, float)
    exact = fit_scaling(b, predict(b, 1000.0, 256.0))
    assert exact.s_min == pytest.approx(1000.0, rel=1e-8) and exact.b_crit == pytest.approx(256.0, rel=1e-8)
    assert exact.converged and exact.residual_sd < 1e-8 and exact.e_min == pytest.approx(256000.0, rel=1e-8)
    rng = np.random.default_rng(3)
    noisy = predict(b, 1000.0, 256.0) * np.exp(0.1 * rng.standard_normal(len(b)))
    fit = fit_scaling(b, noisy)
    popt, _ = optimize.curve_fit(lambda logb, u, v: u + np.log1p(np.exp(v - logb)), np.log(b), np.log(noisy),
                                 p0=[7.0, 5.0])
    assert fit.s_min == pytest.approx(math.exp(popt[0]), rel=1e-6)
    assert fit.b_crit == pytest.approx(math.exp(popt[1]), rel=1e-6)
    assert fit.s_min_low < fit.s_min < fit.s_min_high and fit.b_crit_low < fit.b_crit < fit.b_crit_high
    assert fit.b_crit_low < 256.0 < fit.b_crit_high and fit.dof == 6


def test_perfect_scaling_throughout_leaves_b_crit_unbounded_above():
    b = np.array(BS[:5], float)
    fit = fit_scaling(b, 1e6 / b * np.exp([0.01, -0.01, 0.02, 0.0, -0.02]))
    assert math.isinf(fit.b_crit_high) and fit.b_crit_low > b.max() / 10
    assert math.isnan(fit.b_crit) or fit.b_crit > b.max()
    assert fit.e_min == pytest.approx(1e6, rel=0.05)  # the examples needed stay determined
    few = fit_scaling([16.0], [100.0])
    assert math.isnan(few.s_min) and "at least 2 batch sizes" in few.note


def test_a_known_law_is_recovered_through_bin_correlate(tmp_path):
    """24 run folders (8 batch sizes x 3 learning rates) whose training loss decays smoothly and crosses
    0.05 after S(B) (1 + log(lr / lr_best)^2 / 2) steps, lognormal scatter of 2%; half the batch sizes record
    `step`, half only steps_per_epoch. A budget of 300 epochs (1,200 steps at B = 2048) leaves the largest
    batch size's worse learning rates short of the target."""
    root = tmp_path / "runs"
    truth = write_scaling_study(root, 1000.0, 256.0, BS, LRS, noise=0.02, seed=4, epochs=300,
                                arch="mlp", dataset="mnist1d")
    a = correlate.run(root, tmp_path / "out", target_train_loss=0.05)
    steps = pd.read_csv(tmp_path / "out" / correlate.STEPS_FILE)
    keys = group_columns(DEFAULT_GROUP_BY)  # arch, dataset, momentum, weight_decay and the budget
    assert keys[:2] == ["arch", "dataset"] and "epochs_budget" in keys and "max_steps" in keys
    assert list(steps.columns[:len(keys)]) == keys
    assert list(steps.columns[len(keys):len(keys) + 5]) == ["batch_size", "min_steps", "best_lr", "n_runs",
                                                          "n_reached"]
    assert steps["batch_size"].tolist() == list(BS) and (steps["n_runs"] == 3).all()
    # Reached iff the crossing falls within the 300 epochs (8192 // B steps each): kept either way.
    expected = [sum(truth[(bs, lr)] <= 300 * (8192 // bs) for lr in LRS) for bs in BS]
    assert steps["n_reached"].tolist() == expected and 0 < sum(expected) < 24
    for r in steps.to_dict("records"):
        reached = {lr: s for lr, s in ((lr, truth[(r["batch_size"], lr)]) for lr in LRS)
                   if s <= 300 * (8192 // r["batch_size"])}
        if reached:
            assert r["best_lr"] == min(reached, key=reached.get)
            assert r["min_steps"] == pytest.approx(min(reached.values()), rel=0.02)  # interpolation error
        else:
            assert math.isnan(r["min_steps"]) and math.isnan(r["best_lr"])
    fit = pd.read_csv(tmp_path / "out" / correlate.FIT_FILE)
    assert len(fit) == 1 and fit["target"].iloc[0] == "train_loss <= 0.05"
    assert {"s_min", "b_crit", "s_min_low", "s_min_high", "b_crit_low", "b_crit_high"} <= set(fit.columns)
    row = fit.iloc[0]
    assert row["s_min"] == pytest.approx(1000.0, rel=0.05) and row["b_crit"] == pytest.approx(256.0, rel=0.05)
    assert row["b_crit_low"] < 256.0 < row["b_crit_high"] and row["s_min_low"] < 1000.0 < row["s_min_high"]
    per_run = pd.read_csv(tmp_path / "out" / correlate.STEPS_RUNS_FILE)
    assert len(per_run) == 24 and per_run["reached"].sum() == sum(expected)
    assert (tmp_path / "out" / "fig6_steps_to_result.png").stat().st_size > 0
    report = (tmp_path / "out" / correlate.REPORT_FILE).read_text()
    assert "## Steps to result: train_loss <= 0.05" in report and f"{sum(expected)} of 24 runs reached" in report
    assert a.steps_to_result.fit["b_crit"].iloc[0] == pytest.approx(row["b_crit"], rel=1e-12)
    # Without a target the files go again: the output folder never mixes two analyses.
    correlate.run(root, tmp_path / "out", figures=False)
    for name in (correlate.STEPS_FILE, correlate.FIT_FILE, correlate.STEPS_RUNS_FILE, "fig6_steps_to_result.png"):
        assert not (tmp_path / "out" / name).exists()


def test_the_step_column_wins_and_a_seed_that_missed_makes_its_cell_miss(tmp_path):
    root = tmp_path / "runs"
    rows = loss_rows(1000.0, 0.05, 100, 30, curve="linear", with_step=True)
    for r in rows:
        r["step"] = 3 * r["step"]  # step disagrees with epoch x steps_per_epoch: step is the authority
    write_run(root, 0.5, name="a", metrics=rows, arch="mlp", dataset="mnist1d", batch_size=32, lr=0.1,
              steps_per_epoch=100, epochs=30)
    for seed, crossing in ((0, 500.0), (1, 600.0), (2, 5000.0)):  # seed 2 does not reach in 30 epochs
        write_run(root, 0.5, name=f"b{seed}", metrics=loss_rows(crossing, 0.05, 100, 30, curve="linear"),
                  arch="mlp", dataset="mnist1d", batch_size=64, lr=0.1, seed=seed, steps_per_epoch=100, epochs=30)
    for seed, crossing in ((0, 700.0), (1, 5000.0)):  # one of two reached: the cell did not (median)
        write_run(root, 0.5, name=f"c{seed}", metrics=loss_rows(crossing, 0.05, 100, 30, curve="linear"),
                  arch="mlp", dataset="mnist1d", batch_size=64, lr=0.2, seed=seed, steps_per_epoch=100, epochs=30)
    a = correlate.analyse(root, target_train_loss=0.05)
    runs = a.steps_to_result.runs.set_index("run_dir")
    assert runs.loc["a", "steps"] == pytest.approx(3000.0, rel=1e-9)  # linear curve: exact interpolation
    assert runs.loc["b0", "steps"] == pytest.approx(500.0, rel=1e-9) and not runs.loc["b2", "reached"]
    steps = a.steps_to_result.steps.set_index("batch_size")
    assert steps.loc[64, "min_steps"] == pytest.approx(600.0, rel=1e-9) and steps.loc[64, "best_lr"] == 0.1
    assert steps.loc[64, "n_runs"] == 5 and steps.loc[64, "n_reached"] == 3 and steps.loc[64, "best_n_seeds"] == 3
    fit = a.steps_to_result.fit.iloc[0]
    # Each batch size's best learning rate is at the edge of its grid (BS 32 has one): upper bounds, not fitted.
    assert fit["n_batch_sizes"] == 0 and "left out as upper bounds (best learning rate at the grid's edge) at " \
        "batch size(s) 32, 64" in fit["note"]


def test_upper_bounds_are_left_out_and_an_exact_law_does_not_stop_the_fit(tmp_path):
    # The best learning rate is the smallest of the grid at the two largest batch sizes (an upper bound there).
    root = tmp_path / "runs"
    write_scaling_study(root, 500.0, 128.0, (32, 64, 128, 256, 512), (0.05, 0.1, 0.2), curve="linear",
                        arch="mlp", dataset="mnist1d")
    fit = correlate.analyse(root, target_train_loss=0.05).steps_to_result.fit.iloc[0]
    assert fit["b_crit"] == pytest.approx(128.0, rel=1e-6)  # zero residual: reported, not an IndexError
    assert fit["b_crit_low"] == fit["b_crit_high"] == pytest.approx(fit["b_crit"]) and "degenerate" in fit["note"]
    edge = fit_scaling([32, 64, 128, 256], [1000.0, 500.0, 250.0, 125.0])  # perfect scaling: B_crit above them
    assert math.isinf(edge.b_crit_high) or math.isnan(edge.b_crit)
    flat = fit_scaling([32, 64, 128, 256, 512], [100.0, 101.0, 99.0, 100.5, 100.0])
    assert "unbounded" in flat.note or "not identified" in flat.note


def test_law_steps_is_mccandlish():
    assert law_steps(256, 1000.0, 256.0) == 2000.0
    assert rf.SHARPNESS_AT_EPOCH.format(epoch=3) == "sharpness-epoch3.json"


def test_early_b_simple_beside_b_crit_and_runs_at_the_stability_edge(tmp_path):
    """An exact law with B_crit = 128; each run's earliest sharpness-epoch file with a noise_scale gives
    B_simple (an epoch-1 file whose |G|^2 was not resolved is passed over); sharpness.json's lambda_max puts
    a known number of runs at or above lambda_max lr / 2 = 1, one of them through a file written before
    stability_ratio existed (runs.csv computes it from lambda_max and the run's lr)."""
    root = tmp_path / "runs"
    write_scaling_study(root, 500.0, 128.0, (32, 64, 128, 256, 512), (0.05, 0.1, 0.2), curve="linear",
                        arch="mlp", dataset="mnist1d")
    dirs = sorted(p for p in root.iterdir())
    for i, d in enumerate(dirs):
        lr = rf.read_config(d).lr
        k = 0.5 if i % 5 else 1.2  # every fifth run above the edge
        record = {"lambda_max": k * 2 / lr, "stability_ratio": k} if i != 5 else {"lambda_max": 1.0 * 2 / lr}
        rf.atomic_write_json(d / rf.SHARPNESS, record)
        rf.atomic_write_json(d / rf.SHARPNESS_AT_EPOCH.format(epoch=1), {"noise_scale": None})
        rf.atomic_write_json(d / rf.SHARPNESS_AT_EPOCH.format(epoch=2),
                             {"noise_scale": 100.0 + i, "noise_scale_stderr": 5.0})
        rf.atomic_write_json(d / rf.SHARPNESS_AT_EPOCH.format(epoch=10), {"noise_scale": 1e5})  # later: unused
    a = correlate.run(root, tmp_path / "out", target_train_loss=0.05, figures=False)
    assert a.runs["noise_scale_epoch"].tolist() == [2.0] * 15
    crit = pd.read_csv(tmp_path / "out" / correlate.CRITICAL_FILE).iloc[0]
    assert crit["n_runs"] == 15 and crit["b_simple_median"] == 107.0 and crit["b_simple_max"] == 114.0
    assert crit["n_late"] == 0 and "second half" not in (tmp_path / "out" / correlate.REPORT_FILE).read_text()
    assert crit["b_crit"] == pytest.approx(128.0, rel=1e-6)
    assert crit["b_crit_over_b_simple"] == pytest.approx(128.0 / 107.0, rel=1e-6)
    assert a.runs["stability_ratio"].tolist()[5] == pytest.approx(1.0, rel=1e-12)
    report = (tmp_path / "out" / correlate.REPORT_FILE).read_text()
    assert "## Critical batch size and the gradient noise scale" in report
    # Runs 0 and 10 at 1.2 and run 5 at exactly 1 ("at or above"): 3 of 15.
    assert "| mlp on mnist1d | 15 | 3 | 0.5 | 1.2 |" in report
