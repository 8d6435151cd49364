"""benchmarks/calibration.py: its table's shape, its generator's structure, and that its direct p-values are
bin/correlate's (run folders through correlate.analyse), in seconds."""

import json
import sys

import numpy as np
import pytest

from lrbs_tf.analysis import calibration
from tests.helpers import REPO

sys.path.insert(0, str(REPO))
from benchmarks import calibration as bench  # noqa: E402

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def test_a_small_run_gives_every_test_of_every_design_and_matches_correlate_exactly():
    designs = [d for d in bench.DESIGNS if d.name in ("ratio straight, geo 3x3, 3 seeds",
                                                      "no law + cell effects, lin 5x5, 1 seed")]
    table = bench.run(4, 11, designs=designs, e2e=1)
    assert [(r["design"], r["test"]) for r in table["rows"]] == [
        (designs[0].name, "ratio"),
        *((designs[1].name, t) for t in ("table3", "table3_runs", "table1", "table2", "invariance"))]
    assert table["end_to_end_max_abs_diff"] == {d.name: 0.0 for d in designs}
    ratio_row = table["rows"][0]
    assert ratio_row["method"] == "equal_ratio_f" and ratio_row["n_tested"] == 4
    assert table["rows"][3]["n_tested"] == 4 * 5  # Table 1: one test per learning rate
    # One seed: Table 3's primary is the column permutation; He et al.'s run-level test a sensitivity row.
    assert (table["rows"][1]["method"], table["rows"][1]["role"]) == ("column_permutation", "primary")
    assert (table["rows"][2]["method"], table["rows"][2]["role"]) == ("runs", "sensitivity")
    assert "holds_1_5x" not in table["rows"][2]
    assert "null design(s)" in calibration.size_summary(table, "table3", "column_permutation")
    # The report's reader finds it.
    assert "null design(s)" in calibration.size_summary(table, "ratio", "equal_ratio_f")


def test_the_generator_shares_a_shock_within_a_seeds_column_and_nothing_across_seeds():
    design = bench.Design("x", "geo3", 40, "none", 0.0, "null", ("table3",))
    d = bench.simulate(design, np.random.default_rng(0))
    y = d["y"].reshape(9, 40)
    y = y - y.mean(axis=0)  # the seed's shift out
    col = np.unique(d["batch_size"][::40], return_inverse=True)[1]
    same_col = np.corrcoef(y[0], y[1])[0, 1]  # (32, .025) and (32, .05): one column
    other = np.corrcoef(y[0], y[col == 2][0])[0, 1]
    expected = bench.COLUMN_SD ** 2 / (bench.COLUMN_SD ** 2 + bench.SIGMA ** 2)  # 0.26
    assert col[0] == col[1] and same_col > other and same_col == pytest.approx(expected, abs=0.35)


def test_the_recorded_table_has_every_primary_test_within_its_bound_or_marked():
    table = calibration.load()
    if table is None:
        pytest.skip("benchmarks/calibration.json not recorded")
    nulls = [r for r in table["rows"] if r["kind"] == "null"]
    assert {r["test"] for r in nulls} == {"ratio", "table3", "table3_runs", "table1", "table2", "invariance"}
    assert all("holds_1_5x" in r for r in nulls if r["role"] == "primary")
    # Table 3's primary on every null design, one seed included, is the method bin/correlate uses there.
    assert {(r["seeds"] > 1, r["method"]) for r in nulls if r["test"] == "table3"} == {
        (True, "cell_means"), (False, "column_permutation")}
    md = (REPO / "benchmarks" / "calibration.md").read_text()
    assert json.dumps(table["seed"]) in md


def test_the_momentum_entry_is_small_and_its_recorded_sizes_hold():
    entry = bench.momentum_run(30, 5)
    assert [r["design"] for r in entry["rows"]] == [d[0] for d in bench.MOMENTUM_DESIGNS]
    methods = {r["design"]: r["method"] for r in entry["rows"]}
    assert methods["2 momenta, disjoint seeds (Welch), noise 1:2"] == "welch_t"
    assert all(r["n_tested"] == 30 for r in entry["rows"])
    table = calibration.load()
    if table is None or "momentum_interchange" not in table:
        pytest.skip("benchmarks/calibration.json has no momentum entry")
    recorded = table["momentum_interchange"]
    assert all(r["holds_1_5x"] for r in recorded["rows"] if r["kind"] == "null")
    assert json.dumps(recorded["seed"]) in (REPO / "benchmarks" / "calibration.md").read_text()


def test_the_sde_calibration_is_the_analysis_own_test_and_is_recorded_with_its_sizes():
    """A small --sde run: the direct p-values equal sde.compare's (bin/correlate's) on the same data; the
    generator shares a seed's initialisation between l (the pairing cancels it); the recorded entry holds the
    null designs (equal and unequal cell noise) and the report's reader finds its size."""
    table = bench.run_sde(3, 5, e2e=3)
    assert [r["end_to_end_max_abs_diff"] for r in table["rows"]] == [0.0] * len(bench.SDE_DESIGNS)
    runs = bench.simulate_sde("geo3", 40, 0.0, 0.0, np.random.default_rng(1))
    acc = runs.pivot_table(index=["batch_size", "lr", "seed"], columns="svag", values="best_test_accuracy")
    seed_means = acc.groupby("seed").mean()  # the seed's shared shift: correlated between l over 40 seeds
    assert np.corrcoef(seed_means[1], seed_means[bench.L_MAX])[0, 1] > 0.5
    recorded = (calibration.load() or {}).get("sde")
    if recorded is None:
        pytest.skip("no SDE calibration recorded")
    nulls = [r for r in recorded["rows"] if r["kind"] == "null"]
    assert {r["unequal_noise"] for r in nulls} == {"no", "2-fold", "4-fold"}
    assert "null design(s)" in calibration.size_summary(recorded, "sde")
