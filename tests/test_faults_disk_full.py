"""A disk that fills while bin/train, bin/sharpness and bin/correlate write: a clear error, a non-zero exit,
every file finished before the fault intact, and, once space returns, the same command completes the work
with the results of an uninterrupted run (docs/reliability.md).

The disk fills at the write calls (tests/faultshim.py): in-process for the matrix of moments, around the
real binary for the command line. TensorBoard's event files are written by TensorFlow's C++ code, which
the shim cannot reach, so they are left out of the comparisons; the slow test on a real size-limited
file system (where an unprivileged user namespace can mount one) covers them too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lrbs_tf.runs import folder as runfolder, locking
from lrbs_tf.runs.config import TrainingFailed
from lrbs_tf.training.run import run
from tests import runfolders
from tests.faultshim import DiskFull
from tests.helpers import REPO, small_config, without_seconds

EPOCHS = 4
NAME = "mlp-mnist1d-bs64-lr0.1-s0"


def finished_files(root: Path) -> dict[str, bytes]:
    """Every file below `root` but temporary ones (hidden names) and TensorBoard's (see the docstring)."""
    return {str(p): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not p.name.startswith(".") and runfolder.TENSORBOARD_DIR not in p.parts}


def finished_at_the_fault(disk: DiskFull) -> dict[str, bytes]:
    return {p: b for p, b in disk.snapshot.items()
            if not Path(p).name.startswith(".") and runfolder.TENSORBOARD_DIR not in Path(p).parts}


def temporaries(root: Path) -> list[str]:
    """Hidden files left behind, but the run folder's lock file (runs/locking: it stays, by design, and
    holds no result)."""
    return sorted(str(p) for p in Path(root).rglob(".*") if p.is_file() and p.name != locking.LOCK_FILE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("reference")
    run(small_config(workdir, epochs=EPOCHS))
    return workdir / NAME


# Where the disk fills: (a file-name pattern or "ckpt" for checkpoint saves, the n-th such write).
MOMENTS = [("config.json", 1), ("metrics.jsonl", 3), ("ckpt", 3), ("model", 1), ("result.json", 1)]


@pytest.mark.parametrize("pattern,n", MOMENTS)
def test_training_on_a_disk_that_fills_then_resumes_to_the_same_run(reference, tmp_path, pattern, n):
    cfg = small_config(tmp_path, epochs=EPOCHS)
    with DiskFull(tmp_path, pattern, n) as disk:
        with pytest.raises((TrainingFailed, OSError)) as info:
            run(cfg)
    assert disk.full, "the disk never filled"
    message = str(info.value)
    if pattern == "config.json":  # before training: the storage error itself (bin/train: one line, exit 1)
        assert info.value.errno == errno.ENOSPC and info.value.filename.endswith(runfolder.CONFIG)
    else:
        assert isinstance(info.value, TrainingFailed) and "\n" not in message
        assert "failed: a storage fault (" in message and "No space left on device" in message, message
        if pattern != "ckpt":  # the file that could not be written is named
            assert f"{tmp_path / NAME}/{'model.keras' if pattern == 'model' else pattern}'" in message, message
        assert "run the same command again: it resumes from the last checkpoint" in message
        # The failure could not be recorded either (the disk is full): the run stays resumable.
        assert message.endswith(f"(not recorded in {tmp_path / NAME}: the same fault)")
    assert finished_files(tmp_path) == finished_at_the_fault(disk)  # nothing finished before the fault changed
    assert temporaries(tmp_path) == []
    result = run(cfg)  # space is back
    assert without_seconds(runfolder.read_metrics(tmp_path / NAME)) == without_seconds(
        runfolder.read_metrics(reference))
    assert result == runfolder.read_result(reference).raw


@pytest.mark.slow  # the same message as the in-process matrix shows, through train's one-line path
def test_bin_train_on_a_full_disk_is_one_line_and_exit_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "faultshim.py"), str(REPO / "bin" / "train"), "--arch=mlp",
         "--mlp_depth=1", "--mlp_width=16", "--epochs=3", f"--workdir={tmp_path}", "--noprogress"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "LRBS_FAULT_ROOT": str(tmp_path), "LRBS_FAULT_AT": "metrics.jsonl:2", "LRBS_FAULT_TF": "1"})
    run_dir = tmp_path / "mlp-mnist1d-bs64-lr0.05-s0"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"train: error: {run_dir} failed: a storage fault (OSError: [Errno 28] No space "
                                  f"left on device: '{run_dir / runfolder.METRICS}'); free space")
    assert [r["epoch"] for r in runfolder.read_metrics(run_dir)] == [1]  # epoch 1 intact, no half of epoch 2
    assert (run_dir / runfolder.METRICS).read_bytes().endswith(b"}\n")
    assert not (run_dir / runfolder.RESULT).exists()  # unfinished: the next run resumes it


QUICK = dict(quantities=("eigenvalues", "spectrum"), top_k=1, num_examples=64, slq_steps=4, slq_runs=1)
VARYING = ("seconds", "costs", "versions", "checkpoint")  # time, machine and path: not measurements


def _measurement(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VARYING}


@pytest.fixture(scope="module")
def measured(reference, tmp_path_factory) -> dict:
    """An uninterrupted measurement with top_k=2."""
    from lrbs_tf.curvature import session as sharpness
    from lrbs_tf.curvature.settings import Settings

    run_dir = tmp_path_factory.mktemp("measured") / NAME
    shutil.copytree(reference, run_dir)
    sharpness.run(str(run_dir), Settings(**{**QUICK, "top_k": 2}), log=lambda *_: None)
    return _measurement(run_dir / runfolder.SHARPNESS)


@pytest.mark.parametrize("pattern", [runfolder.SHARPNESS, pytest.param("hessian_spectrum", marks=pytest.mark.slow)])
def test_sharpness_on_a_disk_that_fills_keeps_the_old_measurement(reference, measured, tmp_path, pattern):
    from lrbs_tf.curvature import session as sharpness
    from lrbs_tf.curvature.settings import Settings

    run_dir = tmp_path / NAME
    shutil.copytree(reference, run_dir)
    sharpness.run(str(run_dir), Settings(**QUICK), log=lambda *_: None)  # an earlier measurement, top_k=1
    before = finished_files(run_dir)
    with DiskFull(run_dir, pattern) as disk:
        with pytest.raises(OSError) as info:
            sharpness.run(str(run_dir), Settings(**{**QUICK, "top_k": 2}), log=lambda *_: None)
    assert disk.full and info.value.errno == errno.ENOSPC and pattern in info.value.filename
    after = finished_files(run_dir)
    assert set(after) == set(before) and temporaries(run_dir) == []
    # sharpness.json, the record of a measurement, is the old one; the spectrum plot is written first, so
    # when the disk fills at sharpness.json it is already the new figure, whole (bin/sharpness measures
    # again until sharpness.json is written, replacing both).
    assert after[str(run_dir / runfolder.SHARPNESS)] == before[str(run_dir / runfolder.SHARPNESS)]
    for path, content in after.items():
        assert content == before[path] or pattern == runfolder.SHARPNESS and whole_figure(path, content), path
    sharpness.run(str(run_dir), Settings(**{**QUICK, "top_k": 2}), log=lambda *_: None)  # space is back
    assert _measurement(run_dir / runfolder.SHARPNESS) == measured


def whole_figure(path: str, content: bytes) -> bool:
    if path.endswith(".png"):
        return content.startswith(b"\x89PNG") and content.endswith(b"IEND\xaeB`\x82")
    return path.endswith(".pdf") and content.startswith(b"%PDF") and content.rstrip().endswith(b"%%EOF")


def _grid(root: Path, lrs) -> None:
    runfolders.write_grid(root, lambda bs, lr: 0.9 - bs / 1000 + lr, batch_sizes=(16, 32, 64), lrs=lrs)


def _analysis(out: Path) -> dict[str, bytes]:
    """What an analysis wrote: every file but the PDFs, whose bytes carry their creation time, and the
    report's time made neutral."""
    return {p.name: re.sub(rb"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"Generated <time>", p.read_bytes())
            for p in sorted(out.iterdir()) if p.is_file() and p.suffix != ".pdf"}


@pytest.mark.parametrize("pattern,figures", [("report.md", False), pytest.param("fig2", True, marks=pytest.mark.slow)])
def test_correlate_on_a_disk_that_fills_changes_nothing_in_its_output(tmp_path, pattern, figures):
    from lrbs_tf.analysis import correlate

    results, out = tmp_path / "runs", tmp_path / "runs" / "correlate"
    _grid(results, (0.01, 0.02))
    correlate.run(results, figures=figures)  # an earlier analysis
    before = finished_files(out)
    _grid(results, (0.01, 0.02, 0.05))  # more runs since
    with DiskFull(out, pattern) as disk:
        with pytest.raises(OSError) as info:
            correlate.run(results, figures=figures)
    assert disk.full and info.value.errno == errno.ENOSPC
    assert finished_files(out) == before  # the old analysis, whole: not part old, part new
    assert [p for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    correlate.run(results, figures=figures)  # space is back
    correlate.run(results, out=tmp_path / "uninterrupted", figures=figures)
    assert _analysis(out) == _analysis(tmp_path / "uninterrupted")


def test_bin_correlate_on_a_full_disk_is_one_line_and_exit_1(tmp_path):
    _grid(tmp_path, (0.01, 0.02))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "faultshim.py"), str(REPO / "bin" / "correlate"),
         f"--results={tmp_path}", "--nofigures"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "LRBS_FAULT_ROOT": str(tmp_path), "LRBS_FAULT_AT": "table1.csv:1"})
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.splitlines()[-1]  # the report's own lines (runs skipped) may come before
    assert line.startswith(f"correlate: error: {tmp_path / 'correlate'}/.staging-")  # written there first
    assert line.endswith("/table1.csv: No space left on device") and "Traceback" not in proc.stderr
    assert not (tmp_path / "correlate" / "report.md").exists()


# --- a real full disk: a size-limited tmpfs in an unprivileged user namespace (slow; skipped where the
# kernel or the container forbids such namespaces) ---------------------------------------------------------

TMPFS_DRIVER = r"""
import os, shutil, subprocess, sys
mnt, out, size, *train = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", mnt], check=True)
def attempt(name):
    proc = subprocess.run(train, capture_output=True, text=True)
    with open(os.path.join(out, name + ".stderr"), "w") as f:
        f.write(proc.stderr)
    with open(os.path.join(out, name + ".rc"), "w") as f:
        f.write(str(proc.returncode))
    shutil.copytree(os.path.join(mnt, "w"), os.path.join(out, name), symlinks=True)
attempt("full")
subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)  # space returns
attempt("resumed")
"""
TMPFS_TRAIN = ["--arch=mlp", "--mlp_depth=1", "--mlp_width=16", "--epochs=6", "--noprogress", "--intra_op_threads=1",
               "--inter_op_threads=1"]


def _user_namespaces() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("size", ["20k", "44k", "56k"])  # full at an early checkpoint, a later one, model.keras
def test_training_on_a_real_full_file_system(tmp_path, size):
    if not _user_namespaces():
        pytest.skip("no unprivileged user namespace here (unshare -Urm cannot mount a tmpfs)")
    ref = tmp_path / "reference"
    train = [sys.executable, str(REPO / "bin" / "train"), *TMPFS_TRAIN]
    subprocess.run([*train, f"--workdir={ref}"], check=True, capture_output=True, timeout=600)
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(TMPFS_DRIVER)
    subprocess.run(["unshare", "-Urm", sys.executable, str(driver), str(mnt), str(out), size, *train,
                    f"--workdir={mnt / 'w'}"], check=True, timeout=900)
    name = "mlp-mnist1d-bs64-lr0.05-s0"
    stderr = (out / "full.stderr").read_text()
    assert (out / "full.rc").read_text() == "1", stderr  # it did fill: a size that fits the run tests nothing
    assert stderr.splitlines()[-1].startswith("train: error: ") and "No space left on device" in stderr, stderr
    assert "Traceback" not in stderr
    at_fault = out / "full" / name
    runfolder.read_config(at_fault)
    rows = without_seconds(runfolder.read_metrics(at_fault))
    assert rows == without_seconds(runfolder.read_metrics(ref / name))[:len(rows)]
    assert (at_fault / runfolder.METRICS).read_bytes().endswith(b"\n")
    assert (out / "resumed.rc").read_text() == "0", (out / "resumed.stderr").read_text()
    resumed = out / "resumed" / name
    assert without_seconds(runfolder.read_metrics(resumed)) == without_seconds(runfolder.read_metrics(ref / name))
    assert runfolder.read_result(resumed).raw == runfolder.read_result(ref / name).raw
