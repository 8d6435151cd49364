"""Readers check what they read (issue 22): a damaged metrics.jsonl, a result.json that disagrees with it, or
a mistyped field costs that run (`corrupt` or `skipped`, with the line or the field), never the study, and
never a silently shortened log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrbs_tf import api
from lrbs_tf.analysis import correlate
from lrbs_tf.core.errors import RunFolderError
from lrbs_tf.runs import folder as runfolder, table as runtable
from tests.helpers import REPO
from tests.runfolders import loss_rows, write_grid, write_run, write_scaling_study


def lines_of(run_dir):
    return (run_dir / runfolder.METRICS).read_text().splitlines(keepends=True)


def damage(run_dir, edit) -> None:
    lines = lines_of(run_dir)
    (run_dir / runfolder.METRICS).write_text("".join(edit(lines)))


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ls[:2] + ["{\"epoch\": 3, \"test_acc\n"] + ls[3:], "line 3 is not JSON"),
    (lambda ls: ls[:2] + [b"\xff\xfe".decode("latin-1") + "\n"] + ls[3:], "line 3 is not JSON"),
    (lambda ls: ls[:2] + ["[1, 2]\n"] + ls[3:], "line 3 is not a JSON object"),
    (lambda ls: ls[:3] + ls[1:], "line 4 repeats epoch 2 where epoch 4 belongs"),  # two writers, interleaved
    (lambda ls: ls[:1] + ls[2:], "line 2 skips to epoch 3 where epoch 2 belongs"),
    (lambda ls: ls[:2] + [json.dumps({k: v for k, v in json.loads(ls[2]).items() if k != "epoch"}) + "\n"]
     + ls[3:], "line 3 has no epoch"),
    (lambda ls: ls[:1] + [json.dumps({**json.loads(ls[1]), "epoch": 2.0}) + "\n"] + ls[2:],
     "line 2 has epoch=2.0, not an epoch number"),
])
def test_a_damaged_metrics_file_makes_its_run_corrupt_naming_the_line(tmp_path, edit, message):
    good = write_run(tmp_path, 0.6, name="good", epochs=5)
    bad = write_run(tmp_path, 0.5, name="bad", epochs=5, batch_size=128)
    damage(bad, edit)
    with pytest.raises(RunFolderError, match=message):
        runfolder.read_checked_metrics(bad)
    runs = api.load_runs(tmp_path).set_index("run_dir")
    assert runs.loc["bad", "status"] == runtable.STATUS_CORRUPT and message in runs.loc["bad", "problem"]
    assert runs.loc["good", "status"] == "done" and runs.loc["good", "problem"] == ""
    with pytest.warns(UserWarning, match=message):
        epochs = api.load_metrics(tmp_path)
    assert epochs["run_dir"].unique().tolist() == ["good"]  # the damaged run left out whole, not cut short
    assert epochs["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert good.exists()


def test_steps_that_do_not_increase_are_damage(tmp_path):
    rows = loss_rows(300.0, 0.05, 100, 5, curve="linear", with_step=True, batch_size=32)
    rows[3]["step"] = rows[2]["step"]
    run = write_run(tmp_path, 0.5, metrics=rows, epochs=5)
    with pytest.raises(RunFolderError, match=rf"line 4 has step {rows[2]['step']}, not more than .* at line 3"):
        runfolder.read_checked_metrics(run)


def test_a_torn_last_line_is_not_damage(tmp_path):
    run = write_run(tmp_path, 0.5, status=None, epochs=3)
    with open(run / runfolder.METRICS, "a") as f:
        f.write('{"epoch": 4, "train_lo')  # a kill while appending: no newline
    assert [r["epoch"] for r in runfolder.read_checked_metrics(run)] == [1, 2, 3]
    assert api.load_runs(tmp_path)["status"].tolist() == [runtable.STATUS_UNFINISHED]


def test_one_damaged_line_no_longer_turns_a_reached_run_into_not_reached(tmp_path):
    """Case 4 of issue 22: the line cut the records short, the run was counted 'not reached', n_reached fell."""
    root = tmp_path / "runs"
    write_scaling_study(root, 2000.0, 256.0, (64, 128, 256), (0.05, 0.1, 0.2), num_train=8192)
    runs = api.load_runs(root)
    victim = runs.loc[(runs["batch_size"] == 128) & (runs["lr"] == 0.1), "path"].iloc[0]
    before = correlate.analyse(root, target_train_loss=0.05).steps_to_result.steps.set_index("batch_size")
    damage(Path(victim), lambda ls: ls[:1] + ["garbage\n"] + ls[2:])
    a = correlate.analyse(root, target_train_loss=0.05)
    status = a.runs.set_index("run_dir")["status"]
    assert (status == runtable.STATUS_CORRUPT).sum() == 1
    steps = a.steps_to_result.steps.set_index("batch_size")
    # the damaged run is out of the count (3 runs left of 3 -> 2 of 2 at that cell's batch size), not a miss
    assert steps.loc[128, "n_runs"] == before.loc[128, "n_runs"] - 1
    assert steps.loc[128, "n_reached"] == before.loc[128, "n_reached"] - 1
    assert steps.loc[128, "n_runs"] == steps.loc[128, "n_reached"]


@pytest.mark.parametrize("override, message", [
    ({"best_test_accuracy": 0.9}, "has best_test_accuracy=0.9 but metrics.jsonl records 0.5 (epoch 3) as the best"),
    ({"best_epoch": 2}, "has best_epoch=2 but metrics.jsonl records test accuracy"),
])
def test_a_result_that_disagrees_with_its_metrics_is_corrupt(tmp_path, override, message):
    """Case 9 of issue 22: such a result.json moved rho without a flag."""
    write_grid(tmp_path, lambda bs, lr: 0.4 + bs / 1000, batch_sizes=(16, 32, 64), lrs=(0.1, 0.2))
    write_run(tmp_path, 0.5, name="edited", batch_size=128, lr=0.1, result_overrides=override)
    runs = api.load_runs(tmp_path).set_index("run_dir")
    assert runs.loc["edited", "status"] == runtable.STATUS_CORRUPT and message in runs.loc["edited", "problem"]
    assert (runs["status"] == "done").sum() == 6


def test_ties_let_best_epoch_name_any_tied_epoch(tmp_path):
    rows = [{"epoch": e, "test_accuracy": a} for e, a in ((1, 0.5), (2, 0.7), (3, 0.7))]
    result = runfolder.parse_result({"status": "done", "best_test_accuracy": 0.7, "best_epoch": 3}, tmp_path)
    runfolder.check_result_against_metrics(result, rows, tmp_path)


@pytest.mark.parametrize("field, value", [("best_epoch", 99.5), ("best_epoch", 0), ("epochs", "3"),
                                          ("diverged_epoch", 2.5), ("stopped_early", "yes"), ("error", 3)])
def test_a_mistyped_result_field_skips_that_run_and_the_study_goes_on(tmp_path, field, value):
    """Case 7 of issue 22: best_epoch 99.5 stopped load_runs and bin/correlate for the whole folder."""
    write_grid(tmp_path, lambda bs, lr: 0.4 + bs / 1000 - lr, batch_sizes=(16, 32, 64, 128), lrs=(0.1, 0.2))
    write_run(tmp_path, 0.5, name="typo", batch_size=256, lr=0.1, result_overrides={field: value})
    runs = api.load_runs(tmp_path).set_index("run_dir")
    assert runs.loc["typo", "status"] == runtable.STATUS_SKIPPED
    assert f"has {field}={value!r}" in runs.loc["typo", "problem"]
    result = subprocess.run([sys.executable, str(REPO / "bin" / "correlate"), f"--results={tmp_path}",
                             f"--out={tmp_path / 'out'}", "--nofigures"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"correlate: skipped typo: {tmp_path / 'typo' / runfolder.RESULT} has {field}=" in result.stderr
    assert "8 done, 1 skipped" in result.stdout


def test_load_metrics_of_a_line_without_epoch_is_no_traceback(tmp_path):
    """Case 8 of issue 22: KeyError/astype traceback."""
    run = write_run(tmp_path, 0.5, status=None, epochs=2)
    damage(run, lambda ls: ls + ['{"test_accuracy": 0.5}\n'])
    with pytest.warns(UserWarning, match="line 3 has no epoch"):
        assert api.load_metrics(tmp_path).empty
    assert api.load_runs(tmp_path)["status"].tolist() == [runtable.STATUS_CORRUPT]
