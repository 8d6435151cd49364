"""report.md's Summary section (lrbs_tf.analysis.report.summary): first, one line per primary result read from
the rows the detailed sections print, the warnings after them; bin/correlate prints it."""

from __future__ import annotations

import pandas as pd
import pytest

from lrbs_tf.analysis import correlate
from lrbs_tf.analysis.report import summary
from lrbs_tf.cli import correlate as correlate_cli
from tests.runfolders import write_grid

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

BS, LRS = (16, 32, 64, 128, 256), (0.01, 0.02, 0.04, 0.08, 0.16)


def law(bs: int, lr: float) -> float:
    """Accuracy falling with BS/LR, with a deterministic wiggle so no two runs tie."""
    return 0.9 - 0.02 * __import__("math").log(bs / lr) + 0.001 * ((bs * 7 + int(lr * 100)) % 5)


def _summary(report: str) -> list[str]:
    start = report.index("## Summary\n\n") + len("## Summary\n\n")
    return report[start:report.index("\n\n## ", start)].splitlines()


def test_the_summary_comes_first_and_states_table_3s_primary_row(tmp_path):
    write_grid(tmp_path / "runs", law, batch_sizes=BS, lrs=LRS)
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.index("## Summary") < report.index("## Premise") < report.index("## Table 3")
    lines = _summary(report)
    assert 2 <= len(lines) <= summary.MAX_LINES
    t3 = pd.read_csv(tmp_path / "out" / "table3.csv")
    primary = t3[t3["primary"]].iloc[0]
    assert primary["subset"] == "column_permutation"  # one seed
    table3 = next(line for line in lines if line.startswith("- Table 3"))
    assert f"rho = {primary['spearman_rho']:+.2f}" in table3 and f"p = {primary['spearman_p']:.2g}" in table3
    assert f"n = {int(primary['n'])}" in table3 and "(column_permutation" in table3
    ratio_row = a.ratio_test[a.ratio_test["measure"] == "best_test_accuracy"].iloc[0]
    assert any(f"p_ratio = {ratio_row['p_ratio']:.2g} ({ratio_row['p_ratio_method']}" in line for line in lines)
    assert "the seed noise is unmeasured" in lines[-1]  # one seed per cell: said, as a warning
    assert "1 seed;" in lines[0] and "25 done runs in 25 (BS, LR) cells" in lines[0]


def test_with_seeds_the_primary_is_the_cell_means_and_no_seed_warning(tmp_path):
    for seed in (0, 1, 2):
        write_grid(tmp_path / "runs", lambda b, l: law(b, l) + 0.003 * seed, batch_sizes=BS[:3], lrs=LRS[:3],
                   seed=seed)
    correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    lines = _summary((tmp_path / "out" / "report.md").read_text())
    assert "(cell_means, n = 9" in next(line for line in lines if line.startswith("- Table 3"))
    assert not any("seed noise is unmeasured" in line for line in lines)
    assert "3 seeds" in lines[0]


def test_bin_correlate_prints_the_summary_unless_told_not_to(tmp_path, capsys):
    write_grid(tmp_path / "runs", law, batch_sizes=BS, lrs=LRS)
    args = ["correlate", f"--results={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}", "--nofigures"]
    with pytest.raises(SystemExit) as exit_:
        correlate_cli.main(args)
    assert exit_.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == _summary((tmp_path / "out" / "report.md").read_text())
    with pytest.raises(SystemExit):
        correlate_cli.main([*args, "--nosummary"])
    assert len(capsys.readouterr().out.splitlines()) == 1
