"""lrbs_tf.sweep.workers: worker slots, the progress line, the correlate lock, and the task pool."""

from __future__ import annotations

import pytest

from lrbs_tf.runs.config import TrainConfig
from lrbs_tf.sweep import workers

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def test_worker_slots_share_cores_and_take_gpus_round_robin():
    envs = workers.slot_environments(3, cores=8, gpus=["0", "1"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert {e["TF_NUM_INTRAOP_THREADS"] for e in envs} == {"2"}  # 8 // 3
    assert all(e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in envs)  # two processes on GPU 0
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in workers.slot_environments(2, cores=8, gpus=["0", "1"])[0]
    cpu = workers.slot_environments(4, cores=2, gpus=[])
    assert all(e["TF_NUM_INTRAOP_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in e for e in cpu)


def test_the_eta_includes_the_sharpness_stage_priced_then_measured():
    import io

    p = workers.Progress(4, {}, stream=io.StringIO(), tty=False, sharpness_weight=0.5)
    p.sharpness_expected = 4  # every run will be measured once trained
    p.ended_items, p.start = 2, p.start - 60  # two runs in 60 s, 2 runs and 4 measurements (= 2 runs) left
    p.counts["done"] = 2
    assert "sharpness 0/4" in p.status_line() and "ETA 2m00s" in p.status_line()
    # Once both kinds have ended, their measured durations decide: a measurement took 3 times a run.
    p.timed("train", 20.0, 2)
    p.timed("sharpness", 60.0, 2)
    p.sharpness_expected, p.sharpness_done, p.ended_sharpness = 2, 2, 2
    assert p.weight() == 3.0
    # 60 s for 2 runs + 2 x 3 run-equivalents = 8 units ended; 2 runs + 2 x 3 = 8 left: 60 s more.
    assert "ETA 1m00s" in p.status_line()


def test_sweep_sharpness_defaults_to_the_cheap_pair_and_is_priced_by_its_quantities():
    from lrbs_tf.sweep import config, grid

    assert config.with_sharpness_defaults(()) == ("--quantities=eigenvalues,trace", "--top_k=1")
    asked = ("--quantities=spectrum", "--num_examples=100")
    assert config.with_sharpness_defaults(asked) == ("--top_k=1", *asked)
    caps = dict(top_k=1, max_hvps=1000, max_probes=300, slq_steps=80, slq_runs=2, eps_steps=20, noise_draws=10)
    cheap = config.measurement_passes(["eigenvalues", "trace"], **caps)
    assert cheap == 2 * 30 + 2 * 300
    assert config.measurement_passes(["eigenvalues", "trace", "spectrum"], **caps) == cheap + 2 * 80 * 2
    g = grid.Grid((40, 80), (0.1,), (0,), TrainConfig(arch="mlp", dataset="mnist1d", epochs=10))  # 4,000 examples
    # A run trains 10 x 4000 examples; a measurement of 1000 examples takes 660 passes: 1.65 runs.
    assert config.sharpness_weight(cheap, 1000, g) == 660 * 1000 / 40_000
    assert config.sharpness_weight(cheap, 1000, grid.Grid((40,), (0.1,), (0,), TrainConfig(dataset="npz"))) == 1.0


def test_progress_counts_and_eta():
    import io

    out = io.StringIO()
    p = workers.Progress(10, {"done": 2, "diverged": 1}, stream=out, tty=False)
    assert p.remaining == 7 and "ETA ?" in p.status_line()
    p.counts["failed"] += 1
    p.ended_items = 2
    p.start -= 60  # two items in 60 s: 30 s each, 6 left
    line = p.status_line()
    assert "runs 3/10 finished (done 2, diverged 1)" in line and "failed 1" in line and "remaining 6" in line
    assert "ETA 3m00s" in line
    p.event("start train x")
    p.event("end train x", counts=True)
    lines = out.getvalue().splitlines()  # a log (not a terminal): one line per event, an end's with the counts
    assert len(lines) == 2 and lines[0].endswith("] start train x") and "|" not in lines[0]
    assert lines[1].endswith(f"] end train x | {line}")
    p.tick()
    assert out.getvalue().count("\n") == 2  # no clock ticks in a log

    term = io.StringIO()
    t = workers.Progress(4, {}, stream=term, tty=True)
    t.event("start train y")
    assert term.getvalue().endswith(t.status_line()) and "\n" in term.getvalue()  # counts line left open
    t._drawn -= 2  # a second and more since the last drawing: redrawn in place, no new line
    t.tick()
    assert term.getvalue().count("\n") == 1 and term.getvalue().endswith("\r\033[K" + t.status_line())


def test_correlate_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    lock = tmp_path / "correlate.lock"
    assert workers.try_lock(lock)
    assert not workers.try_lock(lock)  # held by a live process (this one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{socket.gethostname()}:{dead.stdout.strip()}")  # left by a process that has exited
    assert workers.try_lock(lock)
    lock.write_text("another-host:1")  # another host's holder cannot be checked: never taken over
    assert not workers.try_lock(lock)


def test_pool_runs_training_before_measurements_and_can_drop_tasks(tmp_path):
    def task(kind, label, priority=0):
        return workers.Task(kind, label, ["true"], tmp_path / f"{label}.log", priority=priority)

    started, ended = [], []

    def on_start(t):
        started.append(t.label)
        return t.label != "dropped"

    def on_finish(done):
        ended.append((done.task.label, done.returncode))
        # A column that failed comes back as single runs: they must run before the queued measurements.
        return [task("train", "retry")] if done.task.label == "column" else []

    pool = workers.Pool([{}], poll_seconds=0.01)
    pool.run([task("sharpness", "measure", 1), task("train", "column"), task("sharpness", "dropped", 1)],
             on_start, on_finish)
    assert started == ["column", "retry", "measure", "dropped"]
    assert ended == [("column", 0), ("retry", 0), ("measure", 0)]  # the dropped task never ran
    assert (tmp_path / "column.log").read_text().startswith("=== ")  # each attempt's header
