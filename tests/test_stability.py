"""bin/correlate's curvature over training (lrbs_tf.stability, issue 24): stability.csv from the runs'
curvature.csv with known values (edge steps, late medians, gap, GGN ratio, when the eigenspace settles),
the report section's answers with their n, Figure 7, and the files gone again when no run has a trajectory."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lrbs_tf.analysis import correlate
from lrbs_tf.curvature.trajectory import COLUMNS, CURVATURE_CSV
from tests.runfolders import write_run


def _trajectory(run_dir, steps_per_epoch, epochs, lam_ratio, batch_ratio, overlap, lr, lam=None):
    rows = []
    for i, e in enumerate(epochs):
        lm = lam[i] if lam else 2 * lam_ratio[i] / lr
        rows.append({"epoch": e, "step": e * steps_per_epoch, "lambda_max": lm, "stability_ratio": lam_ratio[i],
                     "batch_sharpness_ratio": batch_ratio[i], "trace": 10.0 * (i + 1), "ggn_lambda_max": 0.9 * lm,
                     "topk_overlap": overlap[i]})
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(run_dir / CURVATURE_CSV, index=False)


@pytest.fixture()
def study(tmp_path):
    nan = math.nan
    gd = write_run(tmp_path, 0.5, arch="mlp", dataset="mnist1d", batch_size=4000, lr=0.2, steps_per_epoch=1)
    _trajectory(gd, 1, [1, 10, 100, 200, 400], [0.1, 0.5, 0.95, 1.02, 0.98], [0.0, 0.2, 0.9, 1.0, 0.99],
                [nan, 0.5, 0.95, 0.8, 0.92], 0.2)
    for bs, spe, gap in ((32, 125, 0.6), (128, 31, 0.4), (512, 7, 0.2)):
        run = write_run(tmp_path, 0.5, arch="mlp", dataset="mnist1d", batch_size=bs, lr=0.1, steps_per_epoch=spe)
        _trajectory(run, spe, [1, 2, 4, 8], [0.1, 0.2, 1 - gap, 1 - gap], [0.5, 0.9, 1.0, 1.0],
                    [nan, 0.95, 0.97, 0.99], 0.1)
    write_run(tmp_path, 0.4, arch="mlp", dataset="mnist1d", batch_size=64, lr=0.1, steps_per_epoch=62)  # none
    return tmp_path


def test_stability_csv_report_and_figure_7(study):
    a = correlate.run(study)
    out = study / "correlate"
    s = pd.read_csv(out / "stability.csv").set_index("batch_size")
    assert len(s) == 4  # the run without a curvature.csv has no row
    gd = s.loc[4000]
    assert bool(gd["full_batch"]) and gd["lambda_edge_step"] == 100 and gd["batch_edge_step"] == 100
    assert gd["n_late"] == 2 and gd["lambda_late_median"] == pytest.approx(1.0)
    assert gd["gap"] == pytest.approx(0.995 - 1.0)
    assert gd["lambda_after_edge_median"] == pytest.approx(0.98) and gd["lambda_peak"] == pytest.approx(1.02)
    assert gd["batch_after_edge_median"] == pytest.approx(0.99) and gd["batch_peak"] == 1.0
    assert gd["ggn_ratio_late_median"] == pytest.approx(0.9)
    assert gd["overlap_settled_epoch"] == 400 and gd["overlap_min"] == 0.5
    assert gd["lambda_max_last_over_first"] == pytest.approx(9.8) and gd["trace_last_over_first"] == 5
    sgd = s.loc[[32, 128, 512]]
    assert not sgd["full_batch"].any() and list(sgd["batch_edge_step"]) == [250, 62, 14]
    assert list(sgd["gap"].round(6)) == [0.6, 0.4, 0.2] and list(sgd["overlap_settled_epoch"]) == [2, 2, 2]
    assert sgd["lambda_edge_step"].isna().all()  # 1 - gap < 0.9 throughout

    report = (out / "report.md").read_text()
    assert "1 of 1 full-batch runs reached 0.9" in report
    assert "within 0.8-1.2 in 1 of 1" in report  # GD's late lambda_max x lr/2
    assert "below batch sharpness in 3 of 3" in report
    assert "lr 0.1: Spearman rho(batch size, gap) = -1.00 (n=3)" in report
    assert "settled (overlap >= 0.9 from some epoch to the end) in 4 of 4 runs" in report
    assert "4 of 5 done runs have a trajectory" in report
    assert (out / "fig7_curvature_over_training.png").is_file() and "fig7_curvature_over_training" in a.figures


def test_without_trajectories_no_stability_file_and_the_section_says_how(study):
    correlate.run(study, figures=False)
    assert (study / "correlate" / "stability.csv").is_file()
    for path in study.glob(f"*/{CURVATURE_CSV}"):
        path.unlink()
    correlate.run(study, figures=False)
    assert not (study / "correlate" / "stability.csv").exists()
    report = (study / "correlate" / "report.md").read_text()
    assert "No done run has a curvature.csv" in report and "--epoch=all" in report
