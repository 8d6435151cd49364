"""report.md says nothing twice and never contradicts itself (issue 23): identical with/without-flagged rows are
not repeated, and a small-n note comes from the same multiple-testing family and Holm adjustment as the stars."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from lrbs_tf.analysis import correlate
from lrbs_tf.analysis.report import ratio as report_ratio
from tests.runfolders import write_grid

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def law(bs: int, lr: float) -> float:
    return 0.9 - 0.02 * math.log(bs / lr) + 0.001 * ((bs * 7 + int(lr * 100)) % 5)


def _table3_layout(report: str) -> str:
    start = report.index("| subset |")
    return report[start:report.index("\n\n", start)]


def test_without_flagged_rows_are_not_repeated_when_no_run_is_flagged(tmp_path):
    write_grid(tmp_path / "runs", law, batch_sizes=(16, 32, 64), lrs=(0.01, 0.02, 0.04),
               sharpness={"lambda_max": 3.0, "trace": 9.0})
    correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| without_flagged |" not in _table3_layout(report)
    assert "without_flagged" not in "".join(line for line in report.splitlines() if line.startswith("| vgg19"))
    assert report.count("`without_flagged`: same as `with_flagged` (no run is flagged in vgg19 on cifar10)") == 3
    t3 = pd.read_csv(tmp_path / "out" / "table3.csv")
    assert "without_flagged" in set(t3["subset"])  # the CSV keeps every row


def test_a_flagged_run_keeps_the_without_flagged_rows(tmp_path):
    write_grid(tmp_path / "runs", law, batch_sizes=(16, 32, 64), lrs=(0.01, 0.02, 0.04))
    write_grid(tmp_path / "runs", law, batch_sizes=(128,), lrs=(0.01,), final_train_accuracy=0.5)
    correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| without_flagged |" in _table3_layout(report)
    assert "same as `with_flagged`" not in report


def _rows(family: str, n: int, floor: float, p: float, p_holm: float) -> dict:
    return {"family": f"{family} | g", "n": n, "reason": "", "spearman_min_p": floor, "spearman_p": p,
            "spearman_p_holm": p_holm}


def test_no_holm_note_beside_a_star():
    """The issue's case: a starred run-level row (its own family, Holm = raw p) and the primary row of a
    family that cannot pass. Counting both rows as one family of 2 gave 'Holm over the family's 2 tests
    cannot' beside the star; per family, the starred family has no note and the other says it cannot."""
    table = pd.DataFrame([_rows("table3_sensitivity", 6, 0.0028, 0.0028, 0.0028),
                          _rows("table3", 6, 0.056, 0.056, 0.056)])
    a = SimpleNamespace(alpha=0.005, groups=lambda t: [({}, "g", t)])
    note = report_ratio.small_n_note(a, table, "Table 3")
    assert "Holm" not in note
    assert note.count("**g**") == 1 and "(family `table3`)" in note and "in this family" in note


def test_a_family_that_holm_cannot_pass_is_named_with_its_own_size():
    table = pd.DataFrame([_rows("table1", 6, 0.0028, 0.0028, 0.0056), _rows("table1", 6, 0.0028, 0.01, 0.01)])
    a = SimpleNamespace(alpha=0.005, groups=lambda t: [({}, "g", t)])
    note = report_ratio.small_n_note(a, table, "Table 1")
    assert "Holm over the family's 2 tests cannot" in note and "family `" not in note


def test_counts_take_their_plural_only_when_not_one(tmp_path):
    from lrbs_tf.core.text import plural

    assert [plural(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert plural(1, "process", "processes") == "1 process" and plural(3, "process", "processes") == "3 processes"
    write_grid(tmp_path / "runs", law, batch_sizes=(16,), lrs=(0.01,))
    correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1 run analysed in 1 group (vgg19 on cifar10)" in report
    assert "**vgg19 on cifar10**: 1 done run in 1 (BS, LR) cell, 1 seed; BS 16, LR 0.01." in report
    assert "1 runs" not in report and "1 groups" not in report and "1 batch sizes" not in report
