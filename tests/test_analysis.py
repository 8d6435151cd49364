"""lrbs_tf.analysis.model: NaN-safe group keys, the group iterator's order and labels, the one expected-sign dict,
and the import graph that keeps it a leaf below correlate, report and correlate_plots."""

import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lrbs_tf.analysis import correlate, model as analysis
from lrbs_tf.analysis.model import group_keys, group_labels, iter_groups
from lrbs_tf.analysis.report import document as report
from tests.runfolders import write_grid

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]
COLS = ["arch", "dataset", "momentum"]


def monotone(bs: int, lr: float) -> float:
    return 0.95 - 0.05 * math.log10(bs / lr)


def frame(momenta: list, dtype: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({"arch": "vgg19", "dataset": "cifar10",
                         "momentum": pd.Series(momenta, dtype=dtype), "x": range(len(momenta))})


@pytest.mark.parametrize("momenta, dtype", [
    ([np.nan, None, pd.NA, float("nan")], "object"),
    ([np.nan, np.nan, np.nan], "float64"),
    ([None, pd.NA, None], "string"),
    ([pd.NA, pd.NA], "Float64"),
])
def test_missing_values_in_a_group_column_form_one_group(momenta, dtype):
    f = frame(momenta, dtype)
    assert set(group_keys(f, COLS)) == {("vgg19", "cifar10", None)}
    labels = group_labels(f, COLS)
    assert labels == {("vgg19", "cifar10", None): "vgg19 on cifar10"}
    groups = list(iter_groups(f, COLS, labels))
    assert len(groups) == 1
    keys, label, rows = groups[0]
    assert keys == {"arch": "vgg19", "dataset": "cifar10", "momentum": None}
    assert label == "vgg19 on cifar10" and list(rows["x"]) == list(range(len(momenta)))


def test_numpy_scalars_and_missing_values_become_plain_python_key_parts():
    values = [analysis.key_value(v) for v in (np.float64(0.9), np.int64(3), np.nan, pd.NA, None, "a")]
    assert values == [0.9, 3, None, None, None, "a"]
    assert [type(v) for v in values[:2]] == [float, int]


def test_groups_come_in_a_stable_order_whatever_the_row_order():
    # Keys mix None with floats (which do not compare); the order is by their text, rows keep theirs.
    f = frame([0.9, None, 0.0, 0.9, np.nan, 0.0])
    labels = group_labels(f, COLS)
    assert list(labels.values()) == ["vgg19 on cifar10, momentum=0.0", "vgg19 on cifar10, momentum=0.9",
                                     "vgg19 on cifar10, momentum=None"]
    expected = [([2, 5], labels[("vgg19", "cifar10", 0.0)]), ([0, 3], labels[("vgg19", "cifar10", 0.9)]),
                ([1, 4], labels[("vgg19", "cifar10", None)])]
    for order in (f, f.iloc[::-1], f.sample(frac=1.0, random_state=3)):
        got = [(sorted(rows["x"]), label) for _, label, rows in iter_groups(order, COLS, labels)]
        assert got == expected


def test_a_group_without_a_label_is_refused_by_name():
    labels = group_labels(frame([0.0]), COLS)
    with pytest.raises(KeyError, match="'momentum': 0.9"):
        list(iter_groups(frame([0.0, 0.9]), COLS, labels))


def test_iterated_labels_are_the_analysis_labels(tmp_path):
    root = tmp_path / "runs"
    write_grid(root, monotone, momentum=0.0)
    write_grid(root, monotone, momentum=0.9, arch="resnet18")
    write_grid(root, monotone, seed=1, optimizer="adam")  # a key only some configs have: NaN elsewhere
    a = correlate.analyse(root, group_by=["momentum", "optimizer"])
    assert list(a.labels.values()) == ["resnet18 on cifar10, momentum=0.9, optimizer=None",
                                       "vgg19 on cifar10, momentum=0.0, optimizer=None",
                                       "vgg19 on cifar10, momentum=0.0, optimizer=adam"]
    seen = [(label, len(rows)) for _, label, rows in a.groups()]
    assert seen == [(label, 16) for label in a.labels.values()]
    for keys, label, rows in a.groups():
        assert a.labels[tuple(keys.values())] == label
        assert {a.label(r) for r in rows.to_dict("records")} == {label}
    t3 = a.tables["table3"]
    assert [label for _, label, _ in a.groups(t3)] == list(a.labels.values())


def test_correlate_and_report_judge_signs_by_the_one_expected_sign_dict(tmp_path, monkeypatch):
    assert analysis.EXPECTED_SIGN == {"table1": -1, "table2": +1, "table3": -1}  # the paper's claims
    write_grid(tmp_path / "runs", monotone)  # Table 1: rho = -1 at every learning rate, as claimed
    a = correlate.analyse(tmp_path / "runs")
    n_table1 = len(a.tables["table1"])

    def against(a):
        summary = correlate.sign_summary(a).set_index("table")
        text = report.signs_section(a, correlate.sign_summary(a))
        listed = text.split("Coefficients with the sign opposite to the paper's claim:")[1]
        return int(summary.loc["table1", "against_paper"]), listed.count("| table1 |")
    assert against(a) == (0, 0)
    monkeypatch.setitem(analysis.EXPECTED_SIGN, "table1", +1)
    assert against(a) == (n_table1, n_table1)


def _imports(path: Path) -> set[str]:
    """Every lrbs_tf module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrbs_tf"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lrbs_tf")}
    return found


def test_the_data_model_is_a_leaf_and_correlate_is_imported_by_no_one_it_uses():
    files = {"model": "analysis/model.py", "correlate": "analysis/correlate.py", "report": "analysis/report/document.py",
             "plots": "analysis/plots/paper.py", "figures": "core/figures.py"}
    imports = {m: _imports(REPO / "lrbs_tf" / f) for m, f in files.items()}
    analysis_modules = {"lrbs_tf.analysis.correlate", "lrbs_tf.analysis.report.document", "lrbs_tf.analysis.plots.paper"}
    assert not imports["model"] & analysis_modules
    assert not imports["figures"] & (analysis_modules | {"lrbs_tf.analysis.model"})
    assert "lrbs_tf.analysis.correlate" not in imports["report"] | imports["plots"]
    assert "lrbs_tf.analysis.report.document" not in imports["plots"]
    for m in ("correlate", "report", "plots"):
        assert "lrbs_tf.analysis.model" in imports[m], m
