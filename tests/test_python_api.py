"""The Python API: load_runs / load_metrics frames (exact rows and columns), train and correlate as the
binaries run them, the examples of docs/python_api.md, and examples/figure1.py."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import lrbs_tf
from lrbs_tf import api
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as runfolder, table as runtable
from tests.helpers import REPO
from tests.runfolders import write_grid, write_run

QUICK_BS, QUICK_LRS = (32, 48, 64, 80, 96), (0.06, 0.09, 0.12, 0.15, 0.18)
SETTINGS = ["data_source", "dataset_name", "max_steps", "schedule", "svag", "augment", "stop_at_train_loss", "mlp_depth", "mlp_width",
            "mlp_batch_norm", "mixed_precision", "data_dir", "data_path", "workdir", "run_name", "name_settings",
            "eval_batch_size",
            "steps_per_call", "jit_compile", "deterministic", "tf32", "cpu_devices", "checkpoints_to_keep",
            "checkpoint_seconds", "checkpoint_epochs", "checkpoint_every", "checkpoint_geometric",
            "progress", "intra_op_threads", "inter_op_threads", "column_engine"]
RECORDED = ["num_params", "num_classes", "num_train", "num_test", "steps_per_epoch", "replicas", "git_commit",
            "created"]


def quick_accuracy(bs: int, lr: float) -> float:
    """Falls with BS/LR, as the quick study measured (0.66-0.73)."""
    return 0.73 - 0.07 * (bs / lr - 178) / (1600 - 178)


def quick_study(root: Path) -> Path:
    """The quick study's 5 x 5 grid as run folders, each measured (lambda_max and trace rise with BS/LR)."""
    for bs in QUICK_BS:
        for lr in QUICK_LRS:
            write_run(root, quick_accuracy(bs, lr), arch="mlp", dataset="mnist1d", batch_size=bs, lr=lr,
                      epochs=4, sharpness={"lambda_max": bs / lr / 10, "trace": bs / lr, "num_examples": 1024})
    return root


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Every status, a named npz, an old config.json, a corrupt folder."""
    write_grid(tmp_path, lambda bs, lr: 0.5, batch_sizes=(16, 32), lrs=(0.1,), epochs=2)
    write_run(tmp_path, 0.3, status="diverged", batch_size=64, lr=0.1, epochs=2)
    write_run(tmp_path, 0.2, status="failed", batch_size=128, lr=0.1, epochs=2)
    write_run(tmp_path, 0.1, status=None, batch_size=256, lr=0.1, epochs=3)
    write_run(tmp_path, 0.6, dataset="npz", dataset_name="cifar10", name="named", epochs=2,
              sharpness={"lambda_max": 12.5, "trace": 80.0}, mixed_precision="bfloat16")
    bad = tmp_path / "zz-corrupt"
    bad.mkdir()
    (bad / runfolder.CONFIG).write_text("{not json")
    return tmp_path


def test_load_runs_has_runtables_columns_then_every_setting_and_the_flags(mixed):
    runs = lrbs_tf.load_runs(mixed)
    table, _ = runtable.collect_runs(mixed, [], 0.99)
    assert list(runs.columns) == [*table.columns, *SETTINGS, *RECORDED, "finished", "has_sharpness", "path"]
    assert list(runs["run_dir"]) == sorted(table["run_dir"])
    by = runs.set_index("run_dir")
    assert by["status"].to_dict() == {
        "named": "done", "vgg19-cifar10-bs128-lr0.1-s0": "failed", "vgg19-cifar10-bs16-lr0.1-s0": "done",
        "vgg19-cifar10-bs256-lr0.1-s0": "unfinished", "vgg19-cifar10-bs32-lr0.1-s0": "done",
        "vgg19-cifar10-bs64-lr0.1-s0": "diverged", "zz-corrupt": "skipped"}
    assert by["finished"].to_dict() == {k: v in ("done", "diverged") for k, v in by["status"].items()}
    assert by.loc["vgg19-cifar10-bs32-lr0.1-s0", "ratio"] == 320.0
    assert by.loc["vgg19-cifar10-bs16-lr0.1-s0", "best_test_accuracy"] == 0.5
    assert by["has_sharpness"].to_dict() == {k: k == "named" for k in by.index}
    assert (by.loc["named", "lambda_max"], by.loc["named", "trace"]) == (12.5, 80.0)
    # A named npz: its name in `dataset` (how bin/correlate groups), its loader in `data_source`.
    assert (by.loc["named", "dataset"], by.loc["named", "data_source"], by.loc["named", "dataset_name"]) == (
        "cifar10", "npz", "cifar10")
    # Settings a config.json did not record read as their defaults; recorded ones as written.
    assert by.loc["named", "mixed_precision"] == "bfloat16"
    assert by.loc["vgg19-cifar10-bs16-lr0.1-s0", "mixed_precision"] == "off"
    assert by.loc["vgg19-cifar10-bs16-lr0.1-s0", "num_params"] == 1234
    assert by.loc["zz-corrupt", "problem"].startswith(f"{mixed / 'zz-corrupt' / runfolder.CONFIG} is unreadable")
    assert pd.isna(by.loc["zz-corrupt", "data_source"]) and pd.isna(by.loc["zz-corrupt", "num_params"])
    assert by["path"].to_dict() == {k: str(mixed / k) for k in by.index}


def test_load_metrics_is_one_row_per_recorded_epoch_with_the_runs_config(mixed):
    epochs = lrbs_tf.load_metrics(mixed)
    assert list(epochs.columns) == [*api.RUN_KEY_COLUMNS, *SETTINGS, *RECORDED, *runfolder.METRIC_KEYS,
                                    *api.EPOCH_COLUMNS]
    # these folders' rows predate the epoch's lr and batch size in metrics.jsonl: a constant run's own
    assert (epochs["epoch_lr"] == epochs["lr"]).all() and (epochs["epoch_batch_size"] == epochs["batch_size"]).all()
    expected = []
    for run in lrbs_tf.load_runs(mixed).itertuples():
        for line in runfolder.read_metrics(run.path):
            expected.append((run.run_dir, line["epoch"], line["train_loss"], run.batch_size, run.status))
    assert len(expected) == 2 + 2 + 2 + 2 + 3 + 2  # the corrupt folder has no metrics.jsonl
    got = list(epochs[["run_dir", "epoch", "train_loss", "batch_size", "status"]].itertuples(index=False, name=None))
    assert got == expected  # sorted by run_dir, then epoch; the unfinished run's epochs included
    assert epochs["epoch"].dtype == "int64" and epochs["test_accuracy"].dtype == float
    named = epochs[epochs["run_dir"] == "named"]
    assert set(named["dataset"]) == {"cifar10"} and set(named["data_source"]) == {"npz"}


def test_an_empty_folder_gives_empty_frames_and_a_missing_one_is_refused(tmp_path):
    assert lrbs_tf.load_runs(tmp_path).empty
    empty = lrbs_tf.load_metrics(tmp_path)
    assert empty.empty and list(empty.columns) == [*api.RUN_KEY_COLUMNS, *SETTINGS, *RECORDED,
                                                   *runfolder.METRIC_KEYS, *api.EPOCH_COLUMNS]
    with pytest.raises(UsageError, match="no such folder"):
        lrbs_tf.load_runs(tmp_path / "nope")


def test_train_trains_a_column_as_bin_train_and_returns_its_rows(tmp_path):
    assert callable(lrbs_tf.train) and lrbs_tf.training.run.run_column is not None  # a module and the function
    rows = lrbs_tf.train(arch="mlp", mlp_depth=1, mlp_width=16, batch_size=128, lr=[0.05, 0.1], epochs=1,
                         workdir=str(tmp_path))
    assert list(rows["run_dir"]) == ["mlp-mnist1d-bs128-lr0.05-s0", "mlp-mnist1d-bs128-lr0.1-s0"]
    assert list(rows["status"]) == ["done", "done"] and list(rows["epochs"]) == [1, 1]
    for row in rows.itertuples():
        result = runfolder.read_result(row.path)
        assert row.best_test_accuracy == result.best_test_accuracy
        assert runfolder.read_config(row.path).raw["column_lrs"] == [0.05, 0.1]
    # Again: nothing trained, the same rows.
    assert lrbs_tf.train(arch="mlp", mlp_depth=1, mlp_width=16, batch_size=128, lr=[0.05, 0.1], epochs=1,
                         workdir=str(tmp_path)).equals(rows)
    with pytest.raises(UsageError, match=r"unknown setting\(s\) batchsize; valid: arch, augment, batch_size,"):
        lrbs_tf.train(batchsize=3)
    with pytest.raises(UsageError, match="lr=0.0 must be > 0"):
        lrbs_tf.train(lr=0.0, workdir=str(tmp_path))


def test_correlate_is_bin_correlates_run(tmp_path):
    quick_study(tmp_path / "q")
    analysis = lrbs_tf.correlate(tmp_path / "q", figures=False)
    assert (tmp_path / "q" / "correlate" / "report.md").is_file()
    assert len(analysis.runs) == 25 and set(analysis.runs["status"]) == {"done"}
    from lrbs_tf import correlate  # bin/correlate's entry module, callable as lrbs_tf.correlate(...)

    assert correlate.run is lrbs_tf.analysis.correlate.run and callable(correlate)


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_the_examples_of_docs_python_api_run_as_written(tmp_path, monkeypatch, capsys):
    quick_study(tmp_path / "outputs" / "quick")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks((REPO / "docs" / "python_api.md").read_text())
    assert len(blocks) == 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "25 run folders; {'done': 25}" in out
    assert namespace["done"].pivot_table(index="batch_size", columns="lr", values="best_test_accuracy").shape == (5, 5)
    assert list(namespace["mine"]["status"]) == ["done", "done"]
    assert namespace["measured"][["ratio", "lambda_max"]].corr(method="spearman").iloc[0, 1] == pytest.approx(1.0)
    assert (tmp_path / "outputs" / "quick" / "correlate" / "report.md").is_file()


def test_examples_figure1_redraws_figure_1_from_the_study(tmp_path):
    study = quick_study(tmp_path / "quick")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "figure1.py"), f"--results={study}",
                           f"--out={tmp_path / 'fig.png'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"figure1: 25 runs, Spearman rho = -1.00 (p = 0.0e+00); wrote {tmp_path / 'fig.png'}\n"
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import figure1
    finally:
        sys.path.remove(str(REPO / "examples"))
    points = figure1.figure1(study, tmp_path / "fig.pdf")
    assert len(points) == 25 and (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    runs = lrbs_tf.load_runs(study)
    merged = points.merge(runs, on="run_dir", suffixes=("", "_runs"))
    assert (merged["ratio"] == merged["ratio_runs"]).all()
    assert all(math.isclose(a, quick_accuracy(b, lr)) for a, b, lr in
               zip(points["best_test_accuracy"], points["batch_size"], points["lr"]))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "figure1.py"), f"--results={tmp_path / 'no'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"figure1: error: {tmp_path / 'no'}: no such folder\n"
    # Without --out the figure goes beside the runs, not into the directory it was started from.
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "figure1.py"), f"--results={study}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and (study / "figure1.png").is_file() and not (tmp_path / "figure1.png").exists()


def test_the_package_imports_nothing_heavy_and_reading_results_no_tensorflow(tmp_path):
    quick_study(tmp_path)
    code = ("import sys; import lrbs_tf; print(sorted(m for m in ('tensorflow', 'pandas', 'keras', 'lrbs_tf.api') "
            "if m in sys.modules)); print(sorted(lrbs_tf.__all__)); "
            f"print(len(lrbs_tf.load_metrics({str(tmp_path)!r}))); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", str(sorted(["load_runs", "load_metrics", "train", "correlate",
                                                          "TrainConfig", "__version__"])), "100", "[]"]
