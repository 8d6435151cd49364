"""The intrinsic LR beside measurement (lrbs_tf.analysis.intrinsic through bin/correlate) on generated run folders."""

import math

import numpy as np
import pandas as pd
import pytest

from lrbs_tf.analysis import correlate, intrinsic as ir
from tests.intrinsic_folders import NUM_TRAIN, write_bn_run
from tests.runfolders import write_run

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

# (lr, weight decay) pairs sharing lr * wd = 0.002, a factor of 8 in lr
EQUAL_PAIRS = ((0.05, 0.04), (0.1, 0.02), (0.2, 0.01), (0.4, 0.005))


def analyse(tmp_path):
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    return a, *(pd.read_csv(tmp_path / "out" / name) for name in (ir.RUNS_FILE, ir.EQUAL_FILE))


def test_prediction_and_relaxation_match_the_formulas_recomputed_with_numpy(tmp_path):
    runs = tmp_path / "runs"
    cases = [(0.1, 0.01, 64, 30.0, 1.0), (0.2, 0.005, 128, 55.0, 0.8), (0.05, 0.05, 32, 12.0, 1.3)]
    for lr, wd, bs, norm, ratio in cases:
        write_bn_run(runs, lr, wd, norm, norm_ratio=ratio, batch_size=bs, epochs=8)
    _, table, _ = analyse(tmp_path)
    table = table.sort_values("lr").reset_index(drop=True)
    lr, wd, bs, norm, ratio = (np.array(c, float) for c in zip(*sorted(cases)))
    lam = lr * wd
    grad = norm * wd * (2 - lam) / (lr * ratio)  # what the folders hold
    np.testing.assert_allclose(table["grad_norm_sq"], grad, rtol=1e-12)
    predicted = lr * grad / (wd * (2 - lam))
    np.testing.assert_allclose(table["predicted_weight_norm_sq"], predicted, rtol=1e-12)
    np.testing.assert_allclose(table["norm_ratio"], ratio, rtol=1e-12)
    np.testing.assert_allclose(table["predicted_effective_lr"], lr / predicted, rtol=1e-12)
    np.testing.assert_allclose(table["effective_lr"], lr / norm, rtol=1e-12)
    np.testing.assert_allclose(table["unit_grad_norm_sq"], grad * norm, rtol=1e-12)
    steps = 8 * (NUM_TRAIN // bs)
    np.testing.assert_array_equal(table["steps"], steps)
    relax = -1 / np.log(np.abs(2 * (1 - lam) ** 2 - 1))
    np.testing.assert_allclose(table["relaxation_times"], steps / relax, rtol=1e-12)
    assert table["intrinsic_lr"].tolist() == [0.0025, 0.001, 0.001]


def test_only_done_runs_with_weight_decay_and_batch_norm_are_eligible(tmp_path):
    runs = tmp_path / "runs"
    write_bn_run(runs, 0.1, 0.01, 30.0)                                  # eligible: mlp + BN
    write_bn_run(runs, 0.1, 0.01, 30.0, arch="vgg19", dataset="cifar10")  # eligible: BN after every conv
    write_bn_run(runs, 0.1, 0.01, 30.0, arch="resnet20", dataset="cifar10", seed=1)  # eligible
    write_bn_run(runs, 0.1, 0.01, 30.0, mlp_batch_norm=False, seed=2)     # no BN
    write_bn_run(runs, 0.1, 0.01, 30.0, arch="alexnet", dataset="cifar10")  # no BN
    write_bn_run(runs, 0.1, 0.0, 30.0, seed=3, grad_norm_sq=1.0)          # no weight decay
    write_run(runs, 0.7, arch="vgg19", weight_decay=0.0, seed=4)          # no weight decay
    write_bn_run(runs, 2.0, 0.6, 30.0)                                    # lr * wd = 1.2
    write_run(runs, 0.7, status="diverged", arch="vgg19", weight_decay=0.01, seed=5)  # not done
    a, table, _ = analyse(tmp_path)
    assert len(table) == 3 and sorted(table["arch"]) == ["mlp", "resnet20", "vgg19"]
    assert a.intrinsic.excluded == {"no batch norm": 2, "no weight decay": 2, "lr * weight_decay >= 1": 1}
    assert a.intrinsic.done == 8
    report = (tmp_path / "out" / "report.md").read_text()
    assert "3 eligible runs" in report
    assert "1 lr * weight_decay >= 1, 2 no batch norm, 2 no weight decay among the other done runs" in report


def test_no_eligible_run_is_said_in_one_line_and_no_csv_is_left(tmp_path):
    write_bn_run(tmp_path / "runs", 0.1, 0.01, 30.0)
    analyse(tmp_path)  # one eligible run: both files written
    (tmp_path / "runs").rename(tmp_path / "old")
    write_bn_run(tmp_path / "runs", 0.1, 0.0, 30.0, grad_norm_sq=1.0)
    write_run(tmp_path / "runs", 0.7, arch="alexnet", weight_decay=0.01)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    assert a.intrinsic.runs.empty and a.intrinsic.equal.empty
    assert not any((tmp_path / "out" / name).exists() for name in ir.FILES)  # the earlier analysis's removed
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Intrinsic learning rate (Li, Lyu & Arora 2020)\n\n")[1].split("\n\n")[0]
    assert section == ("No run is eligible (status done, weight decay > 0, batch norm, lr * wd < 1): of 2 done "
                       "runs, 1 no batch norm, 1 no weight decay.")


def test_intrinsic_lr_values_are_exact_decimals():
    assert 0.7 * 0.01 != 0.07 * 0.1  # as floats they differ in the last bit
    assert ir.intrinsic_key(0.7, 0.01) == ir.intrinsic_key(0.07, 0.1) == 0.007


def _pairs(runs, exponent: float, seeds=(0, 1)) -> None:
    """Final ||w||^2 = 100 lr^exponent, times 1 +- 3% per pair (+, -, -, +: no trend in lr) and 1 +- 1% per
    seed: exponent 1 is the theory's equilibrium (equal effective LR at equal lr * wd), exponent 0 norms that
    ignore lr (effective LR proportional to lr)."""
    for (lr, wd), pair in zip(EQUAL_PAIRS, (1.03, 0.97, 0.97, 1.03)):
        for seed in seeds:
            noise = pair * (0.99 if seed == 0 else 1.01)
            write_bn_run(runs, lr, wd, 100.0 * lr ** exponent * noise, seed=seed, epochs=12)


@pytest.mark.parametrize("exponent, reading", [(1.0, "equal"), (0.0, "not equal"), (0.5, "not equal")])
def test_equal_intrinsic_lr_comparison_says_equal_only_when_effective_lrs_match(tmp_path, exponent, reading):
    _pairs(tmp_path / "runs", exponent)
    write_bn_run(tmp_path / "runs", 0.1, 0.05, 30.0)  # lr * wd = 0.005: one pair only, no comparison
    _, table, equal = analyse(tmp_path)
    assert len(table) == 9 and len(equal) == 1
    row = equal.iloc[0]
    assert (row["batch_size"], row["intrinsic_lr"], row["n_runs"], row["n_pairs"]) == (64, 0.002, 8, 4)
    assert row["pairs"] == "0.05x0.04 0.1x0.02 0.2x0.01 0.4x0.005"
    assert row["reading"].startswith(reading + ":")
    # Independently: the pair means of the measured effective LR and their log-log slope on lr.
    sub = table[table["intrinsic_lr"] == 0.002]
    means = sub.groupby("lr")["effective_lr"].mean()
    slope, _ = np.polyfit(np.log(means.index.to_numpy()), np.log(means.to_numpy()), 1)
    assert row["elasticity"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert row["elasticity"] == pytest.approx(1.0 - exponent, abs=1e-9)  # the pair noise has no trend
    assert row["spread"] == pytest.approx(means.max() / means.min(), rel=1e-12)
    assert row["seed_spread"] == pytest.approx(1.01 / 0.99, rel=1e-12)  # every pair's two seeds
    assert row["elasticity_ci_low"] < row["elasticity"] < row["elasticity_ci_high"]
    # Over the runs near equilibrium only (the reading's basis when it can be fitted): the same runs here or fewer.
    near = sub[sub["near_equilibrium"].astype(bool)]
    if near.groupby("lr").size().size >= 2:
        m = near.groupby("lr")["effective_lr"].mean()
        ref = np.polyfit(np.log(m.index.to_numpy()), np.log(m.to_numpy()), 1)[0]
        assert row["elasticity_near_equilibrium"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    else:
        assert math.isnan(row["elasticity_near_equilibrium"])


def test_equilibrium_needs_several_relaxation_times_and_a_settled_norm(tmp_path):
    runs = tmp_path / "runs"
    # lr * wd = 0.001: a relaxation time of ~250 steps; 62 steps per epoch at batch 64
    write_bn_run(runs, 0.1, 0.01, 30.0, epochs=25, tau=50.0, seed=0)    # 6.2 times, settled
    write_bn_run(runs, 0.1, 0.01, 30.0, epochs=12, tau=50.0, seed=1)    # 3.0 times: too short
    write_bn_run(runs, 0.1, 0.01, 30.0, epochs=25, tau=1000.0, rise=0.9, seed=2)  # long enough, still moving
    write_bn_run(runs, 0.1, 0.01, 30.0, epochs=25, tau=50.0, seed=3, record_steps=False)  # steps from config
    _, table, _ = analyse(tmp_path)
    t = table.set_index("seed")
    assert t.loc[[0, 1, 2, 3], "near_equilibrium"].tolist() == [True, False, False, True]
    relax = -1 / math.log(2 * 0.999 ** 2 - 1)
    assert t.loc[0, "relaxation_times"] == pytest.approx(25 * 62 / relax, rel=1e-12)
    assert t.loc[3, "steps"] == 25 * 62 and t.loc[3, "relaxation_times"] == t.loc[0, "relaxation_times"]
    # drift of the seed-2 run: from the last epoch >= one relaxation time before the end (epoch 20) to epoch 25
    norm = lambda e: 1 - 0.9 * math.exp(-e * 62 / 1000.0)  # noqa: E731 (up to a constant factor)
    back = max(e for e in range(1, 25) if (25 - e) * 62 >= relax)
    assert back == 20 and t.loc[2, "norm_drift"] == pytest.approx(norm(25) / norm(back) - 1, rel=1e-12)
    assert t.loc[2, "norm_drift"] > ir.MAX_DRIFT


def test_momentum_and_missing_gradient_norms_are_marked_not_dropped(tmp_path):
    runs = tmp_path / "runs"
    write_bn_run(runs, 0.1, 0.01, 30.0, momentum=0.9)
    write_bn_run(runs, 0.2, 0.005, 60.0, momentum=0.9)
    write_bn_run(runs, 0.1, 0.01, 30.0, grad_norm_sq=None, seed=1)  # an older lrbs_tf's metrics
    write_bn_run(runs, 0.2, 0.005, 30.0, grad_norm_sq="n/a", seed=1)  # not a number
    a, table, equal = analyse(tmp_path)
    moment = table[table["momentum"] == 0.9]
    assert len(moment) == 2 and moment["note"].str.contains(ir.MOMENTUM_NOTE, regex=False).all()
    plain = table[table["momentum"] == 0.0]
    assert plain["predicted_weight_norm_sq"].isna().all() and plain["effective_lr"].notna().all()
    assert plain["note"].str.contains("lack grad_norm_sq").all()
    assert equal.loc[equal["momentum"] == 0.9, "note"].str.startswith(ir.MOMENTUM_NOTE).all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "heavy-ball momentum is not covered by the theory" in report
    assert "2 eligible runs have no `grad_norm_sq`" in report
    assert "all trainable weights, not only the scale-invariant ones" in report


def test_pooled_elasticity_is_the_within_value_slope_over_all_shared_values(tmp_path):
    runs = tmp_path / "runs"
    _pairs(runs, 1.0, seeds=(0,))  # lr * wd = 0.002, norms like lr (elasticity 0)
    for (lr, wd), pair in zip(((0.1, 0.04), (0.2, 0.02), (0.4, 0.01)), (1.05, 0.9, 1.0)):
        write_bn_run(runs, lr, wd, 40.0 * lr ** 0.7 * pair, epochs=12)  # lr * wd = 0.004, elasticity ~0.3
    _, table, equal = analyse(tmp_path)
    assert equal["scope"].tolist() == ["one lr*wd", "one lr*wd", "pooled"]
    pooled = equal.iloc[2]
    assert math.isnan(pooled["intrinsic_lr"]) and (pooled["n_pairs"], pooled["n_runs"]) == (7, 7)
    assert pooled["pairs"] == "lr*wd = 0.002 0.004"
    # Independently (Frisch-Waugh): centre log lr and log effective LR within each lr*wd value, then one slope.
    t = table.assign(x=np.log(table["lr"]), y=np.log(table["effective_lr"]))
    xc = t["x"] - t.groupby("intrinsic_lr")["x"].transform("mean")
    yc = t["y"] - t.groupby("intrinsic_lr")["y"].transform("mean")
    slope = float((xc * yc).sum() / (xc ** 2).sum())
    assert pooled["elasticity"] == pytest.approx(slope, rel=1e-9)
    resid = yc - slope * xc
    se = math.sqrt((resid ** 2).sum() / (7 - 2 - 1) / (xc ** 2).sum())
    half = 2.7764451051977987 * se  # t(0.975, df 4)
    assert pooled["elasticity_ci_low"] == pytest.approx(slope - half, rel=1e-9)
    assert pooled["elasticity_ci_high"] == pytest.approx(slope + half, rel=1e-9)
    assert 0.0 < slope < 0.3  # between the two values' own slopes, 0 and ~0.3


def test_the_flagfile_puts_several_lr_wd_pairs_on_one_intrinsic_lr(tmp_path):
    """flags/intrinsic/bn_mlp.flags is one sweep over --grid=weight_decay: its lr x wd products share intrinsic
    LRs as its header says, and bin/sweep lists its 32 runs (8 columns) with batch norm."""
    from collections import Counter

    from tests.helpers import REPO, run_bin

    path = REPO / "flags" / "intrinsic" / "bn_mlp.flags"
    text = path.read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("--") and "=" in line)
    setting, wd_values = values["--grid"].split("=", 1)
    assert setting == "weight_decay"
    wds = [float(v) for v in wd_values.split(",")]
    lrs = [float(v) for v in values["--lrs"].split(",")]
    shared = Counter(ir.intrinsic_key(lr, wd) for lr in lrs for wd in wds)
    assert {v: k for v, k in shared.items() if k >= 2} == {0.0005: 2, 0.001: 3, 0.002: 4, 0.004: 3, 0.008: 2}
    assert "--mlp_batch_norm" in text.splitlines() and "--weight_decay" not in values
    proc = run_bin("sweep", f"--flagfile={path}", f"--workdir={tmp_path / 'w'}", "--dry_list", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(f"--weight_decay={wd}" in proc.stdout for wd in wds) and "--mlp_batch_norm" in proc.stdout
    assert proc.stdout.splitlines()[1] == ("shard 0 of 1: 32 of the grid's 32 runs (100% of its optimizer steps), "
                                           "0 finished, 8 work units to run")
