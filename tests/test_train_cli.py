"""bin/train as a user runs it: dry run, one-line errors, and a real kill -9 followed by a resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from lrbs_tf.runs import folder as runfolder
from tests.helpers import REPO, run_bin, without_seconds


def test_dry_run_prints_the_exact_count_and_touches_nothing(tmp_path):
    proc = run_bin("train", "--arch=resnet110", "--dataset=cifar10", "--dry_run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trainable parameters: 1,730,714" in proc.stdout.splitlines()
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_resnet50_on_imagenet2012_needs_no_data(tmp_path):
    """The model summary and torchvision's count, with no ImageNet anywhere (--data_dir names no folder)."""
    proc = run_bin("train", "--arch=resnet50", "--dataset=imagenet2012", "--dry_run",
                   f"--data_dir={tmp_path / 'absent'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "trainable parameters: 25,557,032" in lines
    assert any('Model: "resnet50"' in line for line in lines) and any("(None, 224, 224," in line for line in lines)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--lr=0"], "train: error: lr=0.0 must be > 0"),
    (["--arch=resnet19"], "train: error: flag --arch=resnet19: value should be one of <resnet20|"),
    (["--batch_size=4001"], "train: error: batch_size=4001 is larger than the training set (4000"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = run_bin("train", *args, "--epochs=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # exactly one line, no traceback
    assert proc.stderr.startswith(message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    # case 2 of issue 22: learning rates equal to 10 digits shared one folder and overwrote each other
    (["--lr=0.1,0.10000000001"], "train: error: lr=0.1 and lr=0.10000000001 share the run folder "),
    # case 6: weight decay 1e400 (= inf) was trained and recorded `diverged` with weight_decay null
    (["--weight_decay=1e400"], "train: error: weight_decay=inf must be a finite number"),
    (["--momentum=nan"], "train: error: momentum=nan must be a finite number"),
    (["--stop_at_train_loss=inf"], "train: error: stop_at_train_loss=inf must be a finite number"),
    # case 9: a run name with a newline was accepted
    (["--run_name=a\nb"], "train: error: run_name='a\\nb' must be a plain folder name (no '/', no control "),
])
def test_bad_values_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    proc = run_bin("train", *args, "--epochs=1", "--progress=false", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workdir,message", [
    ("{tmp}/file", "train: error: workdir={tmp}/file is a file, not a folder"),
    ("{tmp}/file/below", "train: error: {tmp}/file/below/mlp-mnist1d-bs64-lr0.05-s0: Not a directory"),
    ("/proc/lrbs_test", "train: error: /proc/lrbs_test: "),
    ("{tmp}/" + "x" * 300, "File name too long"),
])
def test_a_workdir_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, workdir, message):
    """Case 8 of issue 22: each of these was a traceback."""
    (tmp_path / "file").write_text("")
    proc = run_bin("train", f"--workdir={workdir.format(tmp=tmp_path)}", "--epochs=1", "--progress=false",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert message.format(tmp=tmp_path) in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_flagfile_that_is_not_utf8_is_one_line_and_exit_2(tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_bytes(b"--epochs=1\n--run_name=caf\xe9\n")  # Latin-1
    proc = run_bin("train", f"--flagfile={flagfile}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"train: error: --flagfile={flagfile}: not UTF-8 text ('utf-8' codec can't "
                                   "decode byte 0xe9 in position 25: invalid continuation byte)")


ARGS = ["--arch=mlp", "--dataset=mnist1d", "--batch_size=16", "--lr=0.05", "--epochs=6", "--progress=false",
        "--checkpoint_seconds=0"]  # a checkpoint every epoch: the kill may land between any two


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = run_bin("train", *ARGS, f"--workdir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr

    workdir = tmp_path / "killed"
    run_dir = workdir / "mlp-mnist1d-bs16-lr0.05-s0"
    proc = subprocess.Popen([sys.executable, str(REPO / "bin" / "train"), *ARGS, f"--workdir={workdir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while len(runfolder.read_metrics(run_dir)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / runfolder.RESULT).exists(), "the run finished before it could be killed"
    killed_at = len(runfolder.read_metrics(run_dir))
    assert 2 <= killed_at < 6

    resumed = run_bin("train", *ARGS, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    reference = runfolder.read_metrics(tmp_path / "full" / "mlp-mnist1d-bs16-lr0.05-s0")
    assert len(reference) == 6
    assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(reference)
    assert runfolder.read_result(run_dir).raw == runfolder.read_result(tmp_path / "full" / run_dir.name).raw

    again = run_bin("train", *ARGS, f"--workdir={workdir}")
    assert again.returncode == 0 and "already finished" in again.stdout


def test_helpfull_lists_the_training_flags_and_writes_nothing(tmp_path):
    proc = run_bin("train", "--helpfull", cwd=tmp_path)
    assert "--column_engine" in proc.stdout and "--stop_at_train_loss" in proc.stdout
    assert list(tmp_path.iterdir()) == []
