"""One writer per run folder (lrbs_tf.runs.locking): two bin/train on one folder, readers, bin/sweep, bin/sharpness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from lrbs_tf.api import load_runs
from lrbs_tf.core.errors import LOCKED_EXIT, RunLocked
from lrbs_tf.runs import folder as runfolder, locking, table as runtable
from lrbs_tf.sweep import scheduler as sweep, workers
from tests.helpers import REPO, run_bin, small_config, without_seconds
from tests.runfolders import write_run

TRAIN_ARGS = ["--arch=mlp", "--dataset=mnist1d", "--mlp_depth=2", "--mlp_width=32", "--batch_size=64", "--lr=0.1",
              "--epochs=3", "--progress=false", "--checkpoint_seconds=0", "--intra_op_threads=1",
              "--inter_op_threads=1"]

# Holds a run folder's lock until killed, as a bin/train would (a child process: its own open file).
HOLDER = "import sys, time; from lrbs_tf.runs.locking import RunLock; RunLock(sys.argv[1], 'holder').acquire(); " \
         "print('held', flush=True); time.sleep(600)"


def hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_excludes_a_second_writer_names_the_holder_and_dies_with_it(tmp_path):
    run_dir = tmp_path / "w" / "run"
    assert locking.holder(run_dir) is None and not run_dir.exists()  # a reader creates nothing
    proc = hold(run_dir)
    try:
        assert locking.holder(run_dir) == f"pid {proc.pid} on host {os.uname().nodename} (holder)"
        before = sorted(p.name for p in run_dir.iterdir())
        with pytest.raises(RunLocked, match=rf"{run_dir} is being written by another process \(pid {proc.pid} "):
            locking.RunLock(run_dir, "second").acquire()
        assert sorted(p.name for p in run_dir.iterdir()) == before == [locking.LOCK_FILE]
        assert (run_dir / locking.LOCK_FILE).read_text().split()[0] == str(proc.pid)  # not the second's pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert locking.holder(run_dir) is None  # the kernel released it: no stale lock after a kill
    with locking.RunLock(run_dir, "third"):
        assert locking.holder(run_dir) is not None  # seen from its own process too
    assert locking.holder(run_dir) is None


def test_a_readers_probe_never_turns_a_writer_away(tmp_path, monkeypatch):
    """A reader's shared lock lasts microseconds; the writer retries through it."""
    import fcntl

    run_dir = tmp_path / "run"
    locking.RunLock(run_dir).acquire().release()
    fd = os.open(run_dir / locking.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe that happens to be in progress
    real_sleep = time.sleep

    def sleep(seconds):
        os.close(fd) if not getattr(sleep, "done", False) else None  # the probe ends
        sleep.done = True
        real_sleep(seconds)

    monkeypatch.setattr(locking.time, "sleep", sleep)
    with locking.RunLock(run_dir):
        assert sleep.done


def test_two_bin_train_on_one_folder_one_trains_and_the_metrics_are_an_undisturbed_runs(tmp_path):
    """Case 1 of issue 22: both used to exit 0 and metrics.jsonl held every epoch twice, interleaved. Started
    together, one takes the lock and trains; the other exits LOCKED_EXIT with one line and touches nothing."""
    from lrbs_tf.training import run as train

    workdir = tmp_path / "w"
    args = [*TRAIN_ARGS, f"--workdir={workdir}"]
    procs = [subprocess.Popen([sys.executable, str(REPO / "bin" / "train"), *args], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    run_dir = workdir / "mlp-mnist1d-bs64-lr0.1-s0"
    trained = [i for i, (out, _) in enumerate(outs) if f"{run_dir}: done after 3 epochs" in out]
    assert len(trained) == 1, outs
    winner, loser = procs[trained[0]], procs[1 - trained[0]]
    out, err = outs[1 - trained[0]]
    assert winner.returncode == 0
    if loser.returncode == LOCKED_EXIT:  # the usual case: they overlap for seconds
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"train: error: {run_dir} is being written by another process (pid {winner.pid} on host "), err
    else:  # the loser started so late that the winner had finished: it leaves the run alone
        assert loser.returncode == 0 and "already finished" in out, (out, err)
    rows = runfolder.read_checked_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    reference = tmp_path / "ref"
    train.run(small_config(reference, epochs=3, intra_op_threads=1, inter_op_threads=1))
    assert without_seconds(rows) == without_seconds(runfolder.read_metrics(reference / run_dir.name))
    assert load_runs(workdir)["status"].tolist() == ["done"]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> list[dict]:
    """The metrics of the run TRAIN_ARGS describe, trained alone in this process."""
    from lrbs_tf.training import run as train

    workdir = tmp_path_factory.mktemp("undisturbed")
    train.run(small_config(workdir, epochs=3, intra_op_threads=1, inter_op_threads=1))
    return without_seconds(runfolder.read_metrics(workdir / "mlp-mnist1d-bs64-lr0.1-s0"))


SLOW_SEEDS = int(os.environ.get("LRBS_KILL_SEEDS", "4"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SLOW_SEEDS))
@pytest.mark.parametrize("processes", [2, 3])
def test_concurrent_starts_of_one_run_at_random_offsets(tmp_path, undisturbed, processes, seed):
    """The fault matrix's concurrency cell (benchmarks/fault_matrix.py): `processes` bin/train of one command
    started at seeded random offsets within 3 s (a resubmitted job, a second terminal). Exactly one trains;
    each other exits LOCKED_EXIT with one line, or 0 having found the run finished; the metrics are the
    undisturbed run's."""
    import random

    rng = random.Random(seed)
    offsets = sorted(rng.uniform(0.0, 3.0) for _ in range(processes))
    workdir = tmp_path / "w"
    procs, start = [], time.monotonic()
    for offset in offsets:
        time.sleep(max(0.0, start + offset - time.monotonic()))
        procs.append(subprocess.Popen([sys.executable, str(REPO / "bin" / "train"), *TRAIN_ARGS,
                                       f"--workdir={workdir}"], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    run_dir = workdir / "mlp-mnist1d-bs64-lr0.1-s0"
    trained = [i for i, (out, _) in enumerate(outs) if f"{run_dir}: done after 3 epochs" in out]
    assert len(trained) == 1, (offsets, outs)
    for i, (proc, (out, err)) in enumerate(zip(procs, outs)):
        if i == trained[0]:
            assert proc.returncode == 0, err
        elif proc.returncode == LOCKED_EXIT:
            assert err.count("\n") == 1 and "is being written by another process (pid " in err, err
        else:
            assert proc.returncode == 0 and "already finished" in out, (proc.returncode, out, err)
    assert without_seconds(runfolder.read_checked_metrics(run_dir)) == undisturbed


def test_a_locked_run_is_refused_with_its_own_status_and_nothing_changes(tmp_path):
    run_dir = tmp_path / "w" / "mlp-mnist1d-bs64-lr0.1-s0"
    proc = hold(run_dir)
    try:
        result = run_bin("train", *TRAIN_ARGS, f"--workdir={tmp_path / 'w'}")
        assert result.returncode == LOCKED_EXIT, result.stderr
        assert result.stderr.count("\n") == 1 and f"(pid {proc.pid} on host" in result.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [locking.LOCK_FILE]
    finally:
        proc.kill()
        proc.wait()


def test_readers_list_a_folder_being_written_as_running(tmp_path):
    done = write_run(tmp_path, 0.5, name="done")
    busy = write_run(tmp_path, 0.4, status=None, name="busy")
    proc = hold(busy)
    try:
        runs = load_runs(tmp_path).set_index("run_dir")
        assert runs.loc["busy", "status"] == runtable.STATUS_RUNNING
        assert runs.loc["busy", "problem"].startswith(f"being written by pid {proc.pid}")
        assert runs.loc["done", "status"] == "done"
    finally:
        proc.kill()
        proc.wait()
    assert load_runs(tmp_path).set_index("run_dir").loc["busy", "status"] == runtable.STATUS_UNFINISHED
    assert done.exists()


def _finished(kind: str, names: list[str], code: int, tmp_path: Path) -> workers.Finished:
    from lrbs_tf.sweep import grid as gridlib

    runs = tuple(gridlib.Run(64, 0.1 * (i + 1), 0, name) for i, name in enumerate(names))
    unit = gridlib.WorkUnit(64, 0, runs)
    return workers.Finished(workers.Task(kind, "unit", ["bin/train"], tmp_path / "log", unit), code, 1.0, [])


def test_bin_sweep_counts_a_locked_run_as_running_elsewhere_not_failed(tmp_path):
    cfg = types.SimpleNamespace(workdir=tmp_path, num_shards=1, shard_index=0, sharpness=False, sharpness_weight=1.0)
    session = sweep._Scheduler(cfg, [], 1)
    session.progress.running["train"] = 1
    session.on_finish(_finished("train", ["r1"], LOCKED_EXIT, tmp_path))
    assert session.elsewhere == ["r1"] and session.failed_runs == []
    assert session.progress.counts["failed"] == 0 and not session.failures_path.exists()
    session.progress.running["train"] = 1
    session.on_finish(_finished("train", ["r2"], 1, tmp_path))  # any other exit is a failure, as before
    assert session.failed_runs == ["r2"]
