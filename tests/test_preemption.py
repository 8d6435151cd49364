"""Preemption within seconds: bounded tf.function calls, sums that do not depend on them, SIGTERM under bin/sweep.

The latency test only bounds, generously and relative to the machine's own epoch length, what
benchmarks/preemption_bench.py measures (benchmarks/preemption.md has the numbers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.training import loop
from lrbs_tf.training.run import run
from tests.helpers import REPO, small_config, without_seconds


def test_call_pace_sizes_calls_to_about_a_second():
    pace = loop.CallPace()
    assert pace.steps(250) == 1  # the first call traces: one step
    pace.measured(1, 0.5)
    assert pace.steps(250) == 2  # 2 steps per second
    pace.measured(2, 0.004)
    assert pace.steps(1000) == int(500 * loop.SECONDS_PER_CALL) and pace.steps(30) == 30  # never past the epoch
    capped = loop.CallPace(most=5)
    capped.measured(10, 0.01)
    assert capped.steps(250) == 5  # a cap (multi-worker: a fixed share of an epoch)
    bar = loop.CallPace(seconds=loop.PROGRESS_SECONDS_PER_CALL)  # a progress bar: shorter calls, not more
    bar.measured(1000, 1.0)
    assert bar.steps(10_000) == int(1000 * loop.PROGRESS_SECONDS_PER_CALL) < 10_000 // 2
    fixed = loop.CallPace(fixed=7)
    fixed.measured(7, 100.0)
    assert fixed.steps(250) == 7 and fixed.steps(3) == 3  # --steps_per_call


def test_an_interruption_says_what_running_again_does():
    assert loop.resume_note(["w/a"], 4) == "run the same command again to resume w/a from its checkpoint of epoch 4"
    assert loop.resume_note(["w/a", "w/b"], 0) == ("no checkpoint was written yet: run the same command again "
                                                  "to start w/a, w/b over")


def test_how_an_epoch_is_cut_into_calls_does_not_change_a_single_bit(tmp_path):
    """Each call continues the epoch's float64 sums, so one step per call, seven, or the paced default give
    the same metrics.jsonl (the losses to the last bit) and result.json."""
    rows, results = [], []
    for steps in (1, 7, 0):
        cfg = small_config(tmp_path / f"spc{steps}", steps_per_call=steps, batch_size=32, epochs=2)
        results.append(run(cfg))
        rows.append(without_seconds(runfolder.read_metrics(cfg.resolved().run_dir)))
    assert len(rows[0]) == 2 and rows[1] == rows[0] and rows[2] == rows[0]
    assert results[1] == results[0] == results[2]


EPOCH_ARGS = ["--arch=mlp", "--mlp_depth=4", "--mlp_width=1024", "--dataset=mnist1d", "--batch_sizes=16",
              "--lrs=0.01", "--epochs=1000", "--workers=1", "--nocorrelate", "--intra_op_threads=1",
              "--inter_op_threads=1", "--checkpoint_seconds=0"]
RUN = "mlp-mnist1d-bs16-lr0.01-s0"


def _wait(predicate, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    return None


def test_sigterm_to_a_sweep_stops_its_bin_train_mid_epoch_and_leaves_it_resumable(tmp_path):
    workdir = tmp_path / "w"
    log = open(tmp_path / "sweep.out", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "bin" / "sweep"), *EPOCH_ARGS, f"--workdir={workdir}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics = workdir / RUN / runfolder.METRICS

        def second_epoch():
            lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
            return json.loads(lines[1])["seconds"] if len(lines) >= 2 else None

        epoch = _wait(second_epoch, proc, 300)
        assert epoch, (tmp_path / "sweep.out").read_text()
        time.sleep(epoch / 3)  # a third into epoch 3: before, the signal waited for the other two thirds
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        train_log = workdir / "sweep_logs" / f"{RUN}.log"
        handled = _wait(lambda: "interrupted; " in train_log.read_text() and time.monotonic(),
                        proc, 120)
        code = proc.wait(timeout=120)
        exited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert handled is not None, train_log.read_text()
    # Generous: calls last about a second; a whole-epoch call would have held the signal for ~2/3 epoch.
    assert handled - sent < max(3.0, epoch / 3), (handled - sent, epoch)
    assert exited < handled - sent + 60  # TensorFlow's teardown, then the sweep's own exit
    assert code == 130
    assert runfolder.run_status(workdir / RUN) is None  # unfinished: resumable, not failed
    assert len(runfolder.read_metrics(workdir / RUN)) == 2  # the interrupted epoch left no line
    assert [e for e, _ in checkpoints.candidates(workdir / RUN / runfolder.CKPT_DIR)][0] == 2
    assert not list(workdir.glob("sweep_failures*"))  # an interruption is not a failure


def test_the_column_loop_passes_one_pace_to_every_epoch(tmp_path, monkeypatch):
    """train_column gives run_epoch one CallPace for the whole run (its rate carries over epochs)."""
    seen = []
    real = loop.run_epoch

    def spy(strategy, pipes, functions, cfg, epoch, num_members, chunk, show_progress, test=None):
        seen.append(chunk)
        return real(strategy, pipes, functions, cfg, epoch, num_members, chunk, show_progress, test)

    monkeypatch.setattr(loop, "run_epoch", spy)
    run(small_config(tmp_path, epochs=3))
    assert len(seen) == 3 and all(isinstance(p, loop.CallPace) for p in seen)
    assert seen[0] is seen[1] is seen[2] and seen[0].rate > 0
