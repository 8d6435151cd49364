"""bin/correlate on generated run folders: tables, signs, premise checks, bad folders, outputs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from lrbs_tf.analysis import cell_tests as ct, correlate, model as analysis
from lrbs_tf.analysis.plots import paper as correlate_plots
from lrbs_tf.cli import correlate as correlate_cli
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as rf
from tests.runfolders import PAPER_BATCH_SIZES, PAPER_LRS, write_grid, write_run

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]
BS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LRS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


def monotone(bs: int, lr: float) -> float:
    """Accuracy strictly decreasing in BS/LR: decreasing in BS, increasing in LR; equal ratios tie."""
    return 0.95 - 0.05 * math.log10(bs / lr)


def run_tables(tmp_path, **kw) -> correlate.Analysis:
    return correlate.run(tmp_path / "runs", tmp_path / "out", figures=False, **kw)


def test_monotone_relation_gives_exact_unit_coefficients_with_the_papers_signs(tmp_path):
    write_grid(tmp_path / "runs", monotone, batch_sizes=BS, lrs=LRS)
    a = run_tables(tmp_path)
    t1, t2, t3 = (a.tables[n] for n in ("table1", "table2", "table3"))
    assert len(t1) == len(LRS) and len(t2) == len(BS) and (t1["n"] == len(BS)).all()
    # Exactly +-1 up to float rounding in scipy's rank correlation (|error| ~ 1e-16).
    np.testing.assert_allclose(t1["spearman_rho"], -1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t1["kendall_tau"], -1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t2["spearman_rho"], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t2["kendall_tau"], 1.0, rtol=0, atol=1e-12)
    assert (t1["spearman_significant"]).all() and (t2["spearman_significant"]).all()
    assert (t1["spearman_p_method"] == "t").all()  # n = 10 > 8
    row = t3[t3["subset"] == "with_flagged"].iloc[0]
    assert row["n"] == 100 and row["spearman_rho"] == pytest.approx(-1.0, abs=1e-12)
    assert row["kendall_tau"] == pytest.approx(-1.0, abs=1e-12) and row["pearson_r"] < 0
    psi = a.psi[(a.psi["measure"] == "ratio") & (a.psi["subset"] == "with_flagged")].iloc[0]
    assert psi["psi"] == pytest.approx(-1.0, abs=1e-12) and psi["psi_lr"] == pytest.approx(-1.0, abs=1e-12)
    assert psi["subgroups_batch_size"] == len(LRS) and psi["subgroups_lr"] == len(BS)


def test_small_grid_is_not_called_significant_from_the_t_approximation(tmp_path):
    # 4 x 4 grid: a perfect relation among 4 points has exact p = 1/12, which is not < 0.005.
    write_grid(tmp_path / "runs", monotone)
    a = run_tables(tmp_path)
    t1 = a.tables["table1"]
    np.testing.assert_allclose(t1["spearman_rho"], -1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t1["spearman_p"], 1 / 12, rtol=1e-12)
    assert not t1["spearman_significant"].any()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.01 | -1.00 | 8.3e-02 |" in report  # no bold: not significant


def test_paper_grid_ratio_ties_and_every_p_value_against_scipy_and_statsmodels(tmp_path):
    rng = np.random.default_rng(0)
    acc = {(b, l): float(rng.uniform(0.8, 0.95)) for b in PAPER_BATCH_SIZES for l in PAPER_LRS}
    write_grid(tmp_path / "runs", lambda b, l: acc[(b, l)], batch_sizes=PAPER_BATCH_SIZES, lrs=PAPER_LRS,
               epochs=1)
    a = run_tables(tmp_path)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    # Exact ratios: 255 distinct among 400 runs (float division would split 3 of them, giving 258).
    assert runs["ratio"].nunique() == 255 and len({b / l for b, l in acc}) == 258
    t3 = pd.read_csv(tmp_path / "out" / "table3.csv").set_index("subset")
    x, y = runs["ratio"].to_numpy(), runs["best_test_accuracy"].to_numpy()
    for col, ref in (("spearman", sps.spearmanr(x, y)), ("pearson", sps.pearsonr(x, y)),
                     ("kendall", sps.kendalltau(x, y))):
        coef = {"spearman": "spearman_rho", "pearson": "pearson_r", "kendall": "kendall_tau"}[col]
        assert t3.loc["with_flagged", coef] == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
        assert t3.loc["with_flagged", f"{col}_p"] == pytest.approx(ref.pvalue, rel=1e-9)
    # Spearman with ties = Pearson of average ranks.
    assert t3.loc["with_flagged", "spearman_rho"] == pytest.approx(
        np.corrcoef(sps.rankdata(x), sps.rankdata(y))[0, 1], abs=1e-12)
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    sub = runs[runs["lr"] == 0.07]
    ref = sps.spearmanr(sub["batch_size"], sub["best_test_accuracy"])
    row = t1[t1["lr"] == 0.07].iloc[0]
    assert row["n"] == 20 and row["spearman_rho"] == pytest.approx(ref.statistic, abs=1e-14)
    assert row["spearman_p"] == pytest.approx(ref.pvalue, rel=1e-9)
    # Psi of BS/LR: at fixed LR the ratio orders runs as BS does, at fixed BS in reverse of LR.
    psi = a.psi[(a.psi["measure"] == "ratio") & (a.psi["subset"] == "with_flagged")].iloc[0]
    assert psi["psi_batch_size"] == pytest.approx(t1["kendall_tau"].mean(), abs=1e-12)
    t2 = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert psi["psi_lr"] == pytest.approx(-t2["kendall_tau"].mean(), abs=1e-12)
    # One seed: Table 3's primary is the column permutation (He et al.'s rho, p from arrangements within each
    # batch size), its run-level t-approximation p a sensitivity row.
    t3 = pd.read_csv(tmp_path / "out" / "table3.csv")
    primary = t3[t3["primary"]]
    assert primary["subset"].tolist() == ["column_permutation"] and primary["n_permutations"].tolist() == [9999]
    cp = ct.column_permutation(x, y, runs["batch_size"].to_numpy(float)).correlation
    assert primary["spearman_rho"].iloc[0] == pytest.approx(ref_rho := sps.spearmanr(x, y).statistic, abs=1e-12)
    assert primary["spearman_p"].iloc[0] == cp.spearman_p and np.isnan(primary["kendall_p"].iloc[0])
    assert ref_rho == pytest.approx(t3.set_index("subset").loc["with_flagged", "spearman_rho"], abs=1e-12)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "the verdict is the `column_permutation` row" in report and "9,999 random arrangements" in report
    # Holm and BH within each family, per statistic: Table 1 (20 tests), Table 2 (20), Table 3's primary (1)
    # and its sensitivity rows (2 computed: with_flagged, without_flagged; one run per cell, no diverged run).
    fams = pd.read_csv(tmp_path / "out" / "families.csv").set_index(["kind", "statistic"])
    assert [fams.loc[(k, "spearman_p"), "tests"] for k in ("table1", "table2", "table3", "table3_sensitivity")] \
        == [20, 20, 1, 2]
    assert fams.loc[("table3_sensitivity", "spearman_p"), "untestable"] == 2
    for t, fam in ((t1, "table1"), (t2, "table2"), (t3[t3["primary"]], "table3"),
                   (t3[~t3["primary"]], "table3_sensitivity")):
        assert set(t["family"]) == {f"{fam} | vgg19 on cifar10"}
        for s in ("spearman", "pearson", "kendall"):
            p = t[f"{s}_p"].to_numpy(float)
            tested = np.isfinite(p)
            for suffix, method in (("holm", "holm"), ("bh", "fdr_bh")):
                got = t[f"{s}_p_{suffix}"].to_numpy(float)
                np.testing.assert_allclose(got[tested], multipletests(p[tested], method=method)[1], rtol=1e-12)
                assert np.isnan(got[~tested]).all()
            np.testing.assert_array_equal(t[f"{s}_significant"], p < 0.005)


def test_sign_change_is_reported(tmp_path):
    # Accuracy falls with LR at BS=16 (against the paper's Table 2 claim), rises elsewhere.
    def acc(b, l):
        return 0.9 - 0.01 * l if b == 16 else monotone(b, l)
    write_grid(tmp_path / "runs", acc, batch_sizes=BS, lrs=LRS)
    a = run_tables(tmp_path)
    summary = correlate.sign_summary(a).set_index("table")
    assert summary.loc["table2", "negative"] == 1 and summary.loc["table2", "positive"] == 9
    assert summary.loc["table2", "significant_against_paper"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    against = report.split("Coefficients with the sign opposite to the paper's claim:")[1]
    assert "| table2 | vgg19 on cifar10 | batch_size=16 | 10 | -1.00 |" in against


def test_diverged_failed_unfinished_corrupt_and_flagged_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    write_grid(root, monotone, batch_sizes=BS[:4], lrs=LRS[:4])
    write_run(root, 0.1, status="diverged", batch_size=8, lr=1.0)
    write_run(root, 0.1, status="failed", batch_size=8, lr=2.0)
    write_run(root, 0.1, status=None, batch_size=8, lr=3.0)
    write_run(root, 0.2, final_train_accuracy=0.5, batch_size=16, lr=0.08, name="flagged")
    (write_run(root, 0.5, name="badjson") / rf.RESULT).write_text("{not json")
    (write_run(root, 0.5, name="badconfig") / rf.CONFIG).write_text("[]")
    cfg = write_run(root, 0.5, name="nolr") / rf.CONFIG
    cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if k != "lr"}))
    write_run(root, 87.5, name="percent")  # accuracies must be fractions
    write_run(root, 0.5, name="weirdstatus", result_overrides={"status": "running"})
    # result.json lacks the best accuracy: taken from a consistent metrics.jsonl, refused from a short one.
    write_run(root, monotone(16, 0.16), name="filled", batch_size=16, lr=0.16,
              result_overrides={"best_test_accuracy": None})
    short = write_run(root, 0.6, name="short", result_overrides={"best_test_accuracy": None})
    (short / rf.METRICS).write_text((short / rf.METRICS).read_text().splitlines(keepends=True)[0])
    a = run_tables(tmp_path)
    runs = a.runs.set_index("run_dir")
    # "flagged" repeats the grid's (16, 0.08) seed 0 with another result: one enters (the first by run_dir).
    assert runs["status"].value_counts().to_dict() == {"done": 17, "skipped": 6, "diverged": 1, "failed": 1,
                                                       "unfinished": 1, "duplicate": 1}
    assert runs.loc["vgg19-cifar10-bs16-lr0.08-s0", "problem"].startswith("rerun of flagged")
    assert runs.loc["filled", "best_test_accuracy"] == pytest.approx(monotone(16, 0.16))
    assert runs.loc["filled", "source"] == "result.json+metrics.jsonl"
    assert "holds 1 epoch records, not epochs 1..3" in runs.loc["short", "problem"]
    assert "outside [0, 1]" in runs.loc["percent", "problem"]
    assert "lacks lr" in runs.loc["nolr", "problem"] and "not a JSON object" in runs.loc["badconfig", "problem"]
    assert "status='running'" in runs.loc["weirdstatus", "problem"]
    assert not runs.loc["flagged", "reached_min_train_accuracy"]
    assert runs.loc["flagged", "generalisation_gap"] == pytest.approx(0.5 - 0.2)
    t3 = a.tables["table3"].set_index("subset")
    assert t3.loc["with_flagged", "n"] == 17 and t3.loc["with_flagged", "n_flagged"] == 1
    assert t3.loc["without_flagged", "n"] == 16 and t3.loc["without_flagged", "n_flagged"] == 0
    assert t3.loc["without_flagged", "spearman_rho"] == pytest.approx(-1.0)
    assert t3.loc["with_flagged", "spearman_rho"] > -1.0
    t1 = a.tables["table1"].set_index("lr")
    assert t1.loc[0.08, "n_flagged"] == 1 and t1.loc[0.08, "n"] == 4
    err = capsys.readouterr().err
    assert err.count("correlate: skipped") == 6 and "badjson" in err
    report = (tmp_path / "out" / "report.md").read_text()
    for text in ("### Diverged and failed runs (excluded)", "RuntimeError: out of memory",
                 "### Unfinished runs", "| vgg19-cifar10-bs8-lr3-s0 | 8 | 3 |", "### Skipped run folders",
                 "| badjson |", "| flagged | 16 | 0.08 | 0.5 | 0.2 |", "| vgg19 on cifar10 | 17 | 1 | 1 | 1 | 1 |"):
        assert text in report, text


def test_small_and_constant_groups_are_reported_with_a_reason(tmp_path):
    root = tmp_path / "runs"
    write_run(root, 0.8, arch="mlp", batch_size=16, lr=0.1)
    write_run(root, 0.7, arch="mlp", batch_size=32, lr=0.1)
    write_grid(root, lambda b, l: 0.5, arch="alexnet", batch_sizes=(16, 32, 64), lrs=(0.1, 0.2, 0.3))
    a = run_tables(tmp_path)
    t3 = a.tables["table3"].set_index(["arch", "subset"])
    assert t3.loc[("mlp", "with_flagged"), "reason"] == "n=2 < 3"
    assert math.isnan(t3.loc[("mlp", "with_flagged"), "spearman_rho"])
    assert t3.loc[("alexnet", "with_flagged"), "reason"] == "best_test_accuracy is constant (0.5 for all 9)"
    assert math.isnan(t3.loc[("alexnet", "with_flagged"), "spearman_p_holm"])
    t1 = a.tables["table1"].set_index(["arch", "lr"])
    assert t1.loc[("mlp", 0.1), "reason"] == "n=2 < 3"
    psi = a.psi.set_index(["arch", "subset", "measure"])
    assert "no subgroup with a defined tau" in psi.loc[("mlp", "with_flagged", "ratio"), "reason"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "n/a (n=2 < 3)" in report and "n/a (best_test_accuracy is constant (0.5 for all 9))" in report
    # Families: nothing computed; untestable Spearman tests: alexnet 3 + 3 + 1 + 4, mlp 1 + 2 + 1 + 4.
    fams = a.families[a.families["statistic"] == "spearman_p"]
    assert fams["tests"].sum() == 0 and fams["untestable"].sum() == 19
    assert "| table1 \\| alexnet on cifar10 | spearman_p | 0 | 3 |" in report
    assert "| table3_sensitivity \\| mlp on cifar10 | spearman_p | 0 | 4 |" in report


def test_groups_split_on_group_by_and_report_other_varying_settings(tmp_path):
    root = tmp_path / "runs"
    write_grid(root, monotone, momentum=0.0)
    write_grid(root, monotone, momentum=0.9)
    write_run(root, 0.9, name="dup", batch_size=16, lr=0.01, momentum=0.9)  # same cell and seed twice
    write_run(root, 0.9, name="aug", batch_size=16, lr=0.01, seed=5, momentum=0.9, augment=False,
              command="bin/train --seed=5", created="2026-01-01T00:00:00", steps_per_epoch=7)
    fixed = [k for k in analysis.DEFAULT_GROUP_BY if k != analysis.VARYING]  # augment reported, not split on
    a = run_tables(tmp_path, group_by=fixed)
    assert sorted(a.labels.values()) == ["vgg19 on cifar10, momentum=0.0", "vgg19 on cifar10, momentum=0.9"]
    t3 = a.tables["table3"]
    # "dup" repeats (16, 0.01, seed 0) with another accuracy: analysed once, listed as a reproducibility problem.
    assert sorted(t3.loc[t3["subset"] == "with_flagged", "n"]) == [16, 17]
    assert a.uncontrolled == {"vgg19 on cifar10, momentum=0.9": {"augment": ["false", "true"]}}
    assert a.duplicates[["run_dir", "kept_run_dir", "identical"]].values.tolist() == [
        ["vgg19-cifar10-bs16-lr0.01-s0-m0.9", "dup", False]]
    assert "Reproducibility problem" in (tmp_path / "out" / "report.md").read_text()
    pooled = correlate.run(root, tmp_path / "pooled", figures=False, group_by=["weight_decay"])
    assert list(pooled.labels.values()) == ["vgg19 on cifar10"]
    assert "momentum" in pooled.uncontrolled["vgg19 on cifar10"]
    # By default every identity setting that varies splits too (augment here: its one run is its own group),
    # and the report's Groups line says so.
    split = correlate.run(root, tmp_path / "split", figures=False)
    assert split.grouped_varying == ["augment"] and split.uncontrolled == {}
    assert sorted(split.labels.values()) == ["vgg19 on cifar10, momentum=0.0, augment=True",
                                             "vgg19 on cifar10, momentum=0.9, augment=False",
                                             "vgg19 on cifar10, momentum=0.9, augment=True"]
    header = (tmp_path / "split" / "report.md").read_text().split("## ")[0]
    assert "stop_at_train_loss, augment (augment: identity settings that vary" in header
    assert "identity settings that vary" not in (tmp_path / "out" / "report.md").read_text()


def test_sharpness_tests_missing_values_and_stale_outputs(tmp_path):
    root = tmp_path / "runs"
    for i, (b, l) in enumerate((b, l) for b in BS[:4] for l in LRS[:4]):
        sharp = {"lambda_max": 100.0 * l / b, "trace": 1000.0 * l / b, "num_hvps": 40, "top_eigenvalues": [1.0]}
        if i == 0:
            del sharp["trace"]
        write_run(root, monotone(b, l), batch_size=b, lr=l, sharpness=sharp if i != 1 else None)
    (write_run(root, 0.5, batch_size=8, lr=0.5) / rf.SHARPNESS).write_text("{oops")
    a = run_tables(tmp_path)
    assert a.sharpness_quantities == ["lambda_max", "trace"]
    sh = a.tables["sharpness"].set_index(["quantity", "versus", "subset"])
    lam = sh.loc[("lambda_max", "ratio", "with_flagged")]
    assert lam["n"] == 15 and lam["n_missing"] == 2 and lam["spearman_rho"] == pytest.approx(-1.0)
    tr = sh.loc[("trace", "best_test_accuracy", "with_flagged")]
    assert tr["n"] == 14 and tr["n_missing"] == 3
    assert "lambda_max_p_holm" not in sh.columns and "spearman_p_holm" in sh.columns
    # The sharpness tests are their own families: all done runs (2 quantities x 2 versus), and without the
    # flagged runs; Holm within each.
    sh = a.tables["sharpness"]
    for subset, kind in (("with_flagged", "sharpness"), ("without_flagged", "sharpness_sensitivity")):
        t = sh[sh["subset"] == subset]
        assert len(t) == 4 and set(t["family"]) == {f"{kind} | vgg19 on cifar10"}
        np.testing.assert_allclose(t["spearman_p_holm"], multipletests(t["spearman_p"], method="holm")[1],
                                   rtol=1e-12)
    assert not set(sh["family"]) & set(a.tables["table3"]["family"])
    runs = a.runs.set_index("run_dir")
    assert "sharpness ignored" in runs.loc["vgg19-cifar10-bs8-lr0.5-s0", "problem"]
    assert (tmp_path / "out" / "sharpness.csv").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| lambda_max | largest Hessian eigenvalue | 15 | 2 |" in report
    assert "| trace | Hessian trace | 14 | 3 |" in report
    for d in root.iterdir():
        (d / rf.SHARPNESS).unlink(missing_ok=True)
    a = run_tables(tmp_path)
    assert "sharpness" not in a.tables and not (tmp_path / "out" / "sharpness.csv").exists()
    assert "No run has a sharpness.json" in (tmp_path / "out" / "report.md").read_text()


def test_outputs_layout_and_figures(tmp_path):
    write_grid(tmp_path / "runs", monotone, sharpness={"lambda_max": 3.0, "trace": 1.0})
    write_run(tmp_path / "runs", 0.1, status="diverged", batch_size=16, lr=0.5)
    correlate.run(tmp_path / "runs")  # default out: <results>/correlate
    out = tmp_path / "runs" / "correlate"
    names = {p.name for p in out.iterdir()}
    # Every figure but Figure 6, which needs --target_train_loss / --target_test_accuracy (test_scaling),
    # Figure 7, which needs runs with a curvature.csv (test_stability), Figure 8, which needs runs at two
    # values of SVAG's l (test_sde_analysis), and Figure 9, which needs runs with a --schedule
    # (test_analysis_schedules).
    figs = {f"{f}.{e}" for f in analysis.FIGURE_NAMES
            if f not in (analysis.FIG_STEPS, analysis.FIG_STABILITY, analysis.FIG_SDE, analysis.FIG_SCHEDULES)
            for e in ("png", "pdf")}
    assert names == {"runs.csv", "table1.csv", "table2.csv", "table3.csv", "sharpness.csv", "psi.csv",
                     "cells.csv", "ratio_test.csv", "ratio_invariance.csv", "families.csv", "report.md"} | figs
    for f in figs:
        head = (out / f).read_bytes()[:5]
        assert head == (b"\x89PNG\r" if f.endswith("png") else b"%PDF-"), f
    base = ["arch", "dataset", "n", "spearman_rho", "spearman_p", "spearman_p_holm", "spearman_p_bh",
            "pearson_r", "pearson_p", "pearson_p_holm", "pearson_p_bh", "kendall_tau", "kendall_p",
            "kendall_p_holm", "kendall_p_bh", "reason"]
    for name, extra in (("table1", ["lr"]), ("table2", ["batch_size"]), ("table3", ["subset"]),
                        ("sharpness", ["quantity", "versus", "subset"])):
        cols = pd.read_csv(out / f"{name}.csv").columns
        assert set(base + extra) <= set(cols), name
    runs_cols = pd.read_csv(out / "runs.csv").columns
    assert {"arch", "dataset", "batch_size", "lr", "ratio", "seed", "momentum", "weight_decay", "status",
            "best_test_accuracy", "best_epoch", "final_train_accuracy", "final_train_loss",
            "generalisation_gap", "epochs", "run_dir", "lambda_max", "trace"} <= set(runs_cols)
    report = (out / "report.md").read_text()
    for section in ("## Premise checks", "## Table 3:", "## Table 1:", "## Table 2:", "## Granulated Kendall",
                    "## Signs of the Spearman coefficients", "## Multiple testing", "## Sharpness",
                    "## Figures", "![Figure 1", "(fig3_accuracy_heatmap.png)", "(fig4_sharpness_vs_ratio.pdf)"):
        assert section in report, section
    assert report.index("## Table 3:") < report.index("## Table 1:") < report.index("## Table 2:")


def test_failed_analysis_leaves_the_previous_outputs_untouched(tmp_path, monkeypatch):
    write_grid(tmp_path / "runs", monotone)
    run_tables(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write_run(tmp_path / "runs", 0.1, batch_size=512, lr=0.01)

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")
    monkeypatch.setattr(correlate_plots, "write_figures", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        correlate.run(tmp_path / "runs", tmp_path / "out", figures=True)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before  # no staging folder left, nothing replaced


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no run folders"),
    (lambda p: (write_run(p, 0.5, status=None), p)[1], "no finished run with status done under"),
    (lambda p: (write_run(p, 0.5, status="diverged"), write_run(p, 0.5, status=None, lr=0.1), p)[2],
     "(1 diverged, 1 unfinished)"),
])
def test_bad_results_folder_is_a_usage_error(tmp_path, make, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        correlate.run(make(tmp_path), tmp_path / "out", figures=False)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_usage_errors(tmp_path):
    write_grid(tmp_path / "runs", monotone)
    for kw, message in (({"min_train_accuracy": 99.0}, "not a fraction"), ({"alpha": 0.0}, "alpha=0.0"),
                        ({"group_by": ["lr"]}, "cannot be a group key"),
                        ({"group_by": ["momentum", "momentun"]}, "has the key\\(s\\) momentun$")):
        with pytest.raises(UsageError, match=message):
            run_tables(tmp_path, **kw)


def test_bin_correlate_command_line_bad_input_and_no_tensorflow(tmp_path):
    # One fresh interpreter runs bin/correlate as a script on an empty folder, then reports whether
    # TensorFlow or Keras were imported on the way (the analysis must stay fast to start).
    empty = tmp_path / "empty"
    empty.mkdir()
    code = ("import runpy, sys\n"
            f"sys.argv = ['correlate', '--results={empty}']\n"
            "try:\n"
            f"    runpy.run_path({str(REPO / 'bin' / 'correlate')!r}, run_name='__main__')\n"
            "finally:\n"
            "    print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"correlate: error: no run folders (folders holding "
                                                f"config.json) under --results={empty}"]
    assert proc.stdout.strip() == "[]"
    assert (REPO / "bin" / "correlate").stat().st_mode & 0o111  # executable


def test_main_in_process(tmp_path, monkeypatch, capsys):
    write_grid(tmp_path / "runs", monotone)
    monkeypatch.setattr(sys, "argv", ["correlate", f"--results={tmp_path / 'runs'}", f"--out={tmp_path / 'o'}",
                                      "--nofigures", "--min_train_accuracy=0.5", "--alpha=0.1"])
    with pytest.raises(SystemExit) as e:
        correlate_cli.main()
    assert e.value.code == 0
    assert "16 done" in capsys.readouterr().out
    t1 = pd.read_csv(tmp_path / "o" / "table1.csv")
    assert t1["spearman_significant"].all()  # exact p = 1/12 < alpha = 0.1
    monkeypatch.setattr(sys, "argv", ["correlate"])  # each parse starts from a fresh FlagValues
    with pytest.raises(SystemExit) as e:
        correlate_cli.main()
    assert e.value.code == 2 and "--results is required" in capsys.readouterr().err


def test_a_groups_families_do_not_change_with_what_else_is_in_the_folder(tmp_path):
    rng = np.random.default_rng(2)
    acc = {(b, l): float(rng.uniform(0.6, 0.9)) for b in BS[:5] for l in LRS[:5]}
    write_grid(tmp_path / "runs", lambda b, l: acc[(b, l)], batch_sizes=BS[:5], lrs=LRS[:5])
    alone = correlate.run(tmp_path / "runs", tmp_path / "alone", figures=False)
    write_grid(tmp_path / "runs", monotone, arch="resnet110", batch_sizes=BS, lrs=LRS)
    both = correlate.run(tmp_path / "runs", tmp_path / "both", figures=False)
    for name in ("table1", "table2", "table3"):
        before = alone.tables[name]
        after = both.tables[name][both.tables[name]["arch"] == "vgg19"].reset_index(drop=True)
        pd.testing.assert_frame_equal(before, after)
    fams = both.families.set_index(["family", "statistic"])
    assert fams.loc[("table1 | vgg19 on cifar10", "spearman_p"), "tests"] == 5
    assert fams.loc[("table1 | resnet110 on cifar10", "spearman_p"), "tests"] == 10
    assert fams.loc[("table3 | resnet110 on cifar10", "spearman_p"), "tests"] == 1  # Table 3 counted once
    report = (tmp_path / "both" / "report.md").read_text()
    # He et al.'s tests: (5 + 5 + 1) + (10 + 10 + 1) Spearman tests in 6 families.
    assert "He et al.'s tests here: 32 Spearman tests in 6 families over 2 groups" in report
    # n = 5: the smallest exact Spearman p is 1/60 > 0.005, which the report says instead of leaving a row
    # of non-bold numbers to be read as "not reproduced".
    assert ("**vgg19 on cifar10**: at n = 5 the smallest attainable Spearman p is 0.017, not below alpha = "
            "0.005: no row of Table 1 can be significant") in report
    assert "| table1 \\| vgg19 on cifar10 | spearman_p | 5 | 0 | 0 | 0 | 0 | 0.001 |" in report


def test_the_flags_defaults_are_the_librarys():
    import inspect

    from lrbs_tf.cli.flags import binary_flags

    fv = binary_flags("correlate").values
    assert fv["min_train_accuracy"].default == analysis.DEFAULT_MIN_TRAIN_ACCURACY
    assert fv["alpha"].default == analysis.DEFAULT_ALPHA
    assert fv["group_by"].default == list(analysis.DEFAULT_GROUP_BY)
    for fn in (correlate.analyse, correlate.run):
        params = inspect.signature(fn).parameters
        assert params["min_train_accuracy"].default is analysis.DEFAULT_MIN_TRAIN_ACCURACY
        assert params["alpha"].default is analysis.DEFAULT_ALPHA
        assert params["group_by"].default is analysis.DEFAULT_GROUP_BY


def test_bin_correlate_on_one_run_folder_says_where_it_writes_in_singular_words(tmp_path):
    run_dir = write_run(tmp_path / "runs", 0.8)
    proc = subprocess.run([sys.executable, str(REPO / "bin" / "correlate"), f"--results={run_dir}", "--nofigures"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"correlate: note: --results={run_dir} is a single run folder; the analysis goes to "
                        f"{run_dir / 'correlate'} inside it (--out=DIR to choose another folder)")
    assert lines[1].startswith("correlate: 1 run folder (1 done), 1 group, 0 tests in ")  # the summary follows
