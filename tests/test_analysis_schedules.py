"""bin/correlate's schedule comparison (lrbs_tf/analysis/schedules.py): the sign-flip test against scipy, its
size under a simulated null with the study's structure, and schedules.csv / the report on written folders
whose numbers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lrbs_tf.analysis import correlate, schedules
from tests.runfolders import write_run

pytestmark = pytest.mark.fast  # no TensorFlow

N_TEST = 1000


@pytest.mark.parametrize("diffs", [[0.01, 0.02, -0.005, 0.013, 0.004], [0.002, -0.017, 0.002, 0.003],
                                   [0.01, 0.02, 0.03, 0.015, 0.011, 0.009, 0.02, 0.001]])
def test_the_sign_flip_p_is_scipys_exact_permutation_test(diffs):
    ref = sps.permutation_test((np.asarray(diffs),), np.mean, permutation_type="samples", n_resamples=np.inf,
                               alternative="two-sided")
    assert schedules.sign_flip_p(diffs) == pytest.approx(ref.pvalue, abs=1e-12)


def test_the_tests_size_under_the_null_is_at_most_alpha_and_it_has_power():
    """Calibration: schedules that end alike, 8 paired seeds with unequal seed noise (s.d. 0.02 and 0.008,
    as this study's constant and decayed runs) and 1,000 test examples: the rejection rate at 0.05 stays
    within Monte Carlo error of 0.05 or below. A real difference of 0.03 is found most of the time."""
    size = schedules.simulated_size(8, 0.02, 0.008, N_TEST, sims=4000, seed=1)
    assert size <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)
    rng = np.random.default_rng(2)
    shifted = [schedules.sign_flip_p(0.03 + rng.normal(0, 0.015, 8)) < 0.05 for _ in range(400)]
    assert np.mean(shifted) > 0.8
    assert schedules.simulated_size(4, 0.01, 0.01, N_TEST) == 0.0  # 4 pairs: no p below 2/16 = 0.125


def _write_study(root, accuracies: dict[str, list[float]], epochs: int = 4, bs: int = 16, lr: float = 0.1):
    """Run folders of MNIST-1D's 4000 examples under each schedule, one per seed; each run's test accuracy
    rises linearly to its final value; rows record step, lr and batch size as bin/train does."""
    from lrbs_tf.runs.config import TrainConfig

    for text, finals in accuracies.items():
        for seed, final in enumerate(finals):
            cfg = TrainConfig(arch="mlp", dataset="mnist1d", batch_size=bs, lr=lr, seed=seed, epochs=epochs,
                              schedule=text).resolved()
            counts = cfg.epoch_step_counts(4000)
            rows = [{"epoch": e + 1, "step": sum(counts[:e + 1]), "train_loss": 0.5, "train_accuracy": 0.9,
                     "test_loss": 1.0, "test_accuracy": round(final * (e + 1) / epochs, 3),
                     "weight_norm_sq": 10.0, "effective_lr": 0.01, "seconds": 1.0,
                     **({"lr": cfg.epoch_lr(e), "batch_size": cfg.epoch_batch_size(e)} if text else {})}
                    for e in range(epochs)]
            write_run(root, final, arch="mlp", dataset="mnist1d", batch_size=bs, lr=lr, seed=seed, epochs=epochs,
                      name=cfg.run_name, metrics=rows, schedule=cfg.schedule, num_test=N_TEST, augment=False,
                      result_overrides={"final_test_accuracy": rows[-1]["test_accuracy"], "steps": rows[-1]["step"]})


def test_schedules_csv_and_the_report_on_a_known_study(tmp_path):
    finals = {"": [0.70, 0.71, 0.69], "lr*0.2@2:3": [0.66, 0.67, 0.68], "bs*5@2:3": [0.665, 0.66, 0.69]}
    _write_study(tmp_path / "runs", finals)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=True)
    assert len(a.labels) == 3 and "schedule" in a.group_cols  # the schedules are never pooled
    table = pd.read_csv(tmp_path / "out" / schedules.RUNS_FILE, keep_default_na=False, na_values=[""])
    table = table.set_index("schedule")
    assert list(table.index) == ["constant", "lr*0.2@2:3", "bs*5@2:3"]  # constant, the reference, the others
    assert table["kind"].to_dict() == {"bs*5@2:3": "bs", "constant": "constant", "lr*0.2@2:3": "lr"}
    assert (table["reference"] == "lr*0.2@2:3").all()
    # 4000 / 16 = 250 steps an epoch, 50 at batch 80, 10 at batch 400
    assert table["steps"].to_dict() == {"bs*5@2:3": 560.0, "constant": 1000.0, "lr*0.2@2:3": 1000.0}
    assert table.loc["bs*5@2:3", "steps_ratio"] == pytest.approx(0.56)
    assert table["same_trajectory"].astype(str).to_dict() == {"bs*5@2:3": "True", "constant": "False",
                                                              "lr*0.2@2:3": "True"}
    assert table.loc["bs*5@2:3", "final_ratio"] == pytest.approx(400 / 0.1)
    diffs = np.array(finals["bs*5@2:3"]) - np.array(finals["lr*0.2@2:3"])
    row = table.loc["bs*5@2:3"]
    assert row["n_pairs"] == 3 and row["final_diff"] == pytest.approx(diffs.mean())
    assert row["final_diff_sd"] == pytest.approx(diffs.std(ddof=1))
    assert row["final_p"] == pytest.approx(schedules.sign_flip_p(diffs)) and row["min_p"] == 0.25
    assert row["final_test_accuracy_mean"] == pytest.approx(np.mean(finals["bs*5@2:3"]))
    curves = pd.read_csv(tmp_path / "out" / schedules.CURVES_FILE)
    bs_curve = curves[curves["schedule"] == "bs*5@2:3"].sort_values("epoch")
    assert bs_curve["step"].tolist() == [250, 500, 550, 560] and bs_curve["epoch_batch_size"].tolist() == [16, 16, 80, 400]
    assert (bs_curve["batch_size"] == 16).all() and bs_curve["epoch_lr"].tolist() == [0.1] * 4
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Schedules: learning-rate and batch-size steps" in report
    assert "Tables 1-3, Psi and the ratio sections use each run's initial batch size and learning rate" in report
    assert "`bs*5@2:3` (the same BS/LR trajectory) vs `lr*0.2@2:3`" in report and "44% fewer updates" in report
    assert "fig9_schedules.png" in report and (tmp_path / "out" / "fig9_schedules.png").is_file()


def test_without_a_schedule_nothing_is_added(tmp_path):
    _write_study(tmp_path / "runs", {"": [0.7, 0.71]})
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    assert a.schedules is None and not (tmp_path / "out" / schedules.RUNS_FILE).exists()
    assert "## Schedules" not in (tmp_path / "out" / "report.md").read_text()


def test_load_metrics_gives_each_epochs_lr_and_batch_size(tmp_path):
    """The Python API's epoch_lr / epoch_batch_size follow the schedule; a run's own lr and batch_size stay
    its initial ones (what bin/correlate's tables use)."""
    from lrbs_tf import api

    _write_study(tmp_path, {"bs*5@2:3": [0.6], "lr*0.2@2:3": [0.6]})
    epochs = api.load_metrics(tmp_path).set_index(["run_dir", "epoch"])
    bs_run = epochs.loc["mlp-mnist1d-bs16-lr0.1-s0-bsx5at2_3"]
    lr_run = epochs.loc["mlp-mnist1d-bs16-lr0.1-s0-lrx0.2at2_3"]
    assert list(bs_run["epoch_batch_size"]) == [16, 16, 80, 400] and set(bs_run["epoch_lr"]) == {0.1}
    assert list(lr_run["epoch_lr"]) == pytest.approx([0.1, 0.1, 0.02, 0.004]) and set(lr_run["epoch_batch_size"]) == {16}
    assert set(bs_run["batch_size"]) == {16} and set(lr_run["lr"]) == {0.1}
