"""SIGTERM-to-exit latency of a bin/train run under bin/sweep: how long a preempted cluster task takes to stop.

    .venv/bin/python benchmarks/preemption_bench.py                      # this checkout
    .venv/bin/python benchmarks/preemption_bench.py --repo=/tmp/before   # another checkout (e.g. git archive)

Each trial starts `bin/sweep` on a one-run grid whose epochs take several seconds (an MNIST-1D MLP of
4 x 1024 units at batch 16: 250 steps per epoch on one thread), waits for the second epoch's metrics line
(the first epoch includes tracing; the second's `seconds` is the steady epoch length E), sleeps a uniformly
random time in [0, E), then sends SIGTERM to the sweep, as SLURM's `--signal=B:TERM` or a Kubernetes
eviction does. Two latencies are timed from the signal: until bin/train reports the interruption in its
log ("interrupted; run the same command again ...": the signal handler has run, between two tf.function
calls), and until the sweep has exited (it forwards SIGTERM to bin/train and waits for it; this adds
TensorFlow's process teardown). It checks the exit status (130) and that the run was left resumable (no
result.json). Results: benchmarks/preemption.md.

Prints one JSON object: per trial E, the delay and both latencies; their medians and maxima; CPU seconds
of the processes measured; the load average before and after (the machine may be shared: say so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
GRID = ["--arch=mlp", "--mlp_depth=4", "--mlp_width=1024", "--dataset=mnist1d", "--batch_sizes=16", "--lrs=0.01",
        "--epochs=1000", "--workers=1", "--nocorrelate", "--intra_op_threads=1", "--inter_op_threads=1"]
RUN = "mlp-mnist1d-bs16-lr0.01-s0"


def epoch_seconds(run_dir: Path, proc: subprocess.Popen, epoch: int, timeout: float) -> float:
    """Waits for metrics.jsonl's line of `epoch` (1-based); returns that epoch's `seconds`."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sweep exited early with status {proc.returncode}")
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
        if len(lines) >= epoch:
            return float(json.loads(lines[epoch - 1])["seconds"])
        time.sleep(0.02)
    raise RuntimeError(f"epoch {epoch} did not finish within {timeout} s")


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> float:
    """Polls `path` until it holds `text`; returns when (time.monotonic), or inf if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            return math.inf
        time.sleep(0.01)
    return math.inf


def trial(repo: Path, rng: random.Random, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="preempt_") as tmp:
        workdir = Path(tmp) / "w"
        log = open(Path(tmp) / "sweep.log", "w")
        proc = subprocess.Popen([sys.executable, str(repo / "bin" / "sweep"), *GRID, f"--workdir={workdir}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            epoch = epoch_seconds(workdir / RUN, proc, 2, timeout)
            delay = rng.uniform(0.0, epoch)
            time.sleep(delay)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            handled = wait_for_text(workdir / "sweep_logs" / f"{RUN}.log", "interrupted; run the same command",
                                    proc, timeout)
            code = proc.wait(timeout=timeout)
            latency = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        resumable = not (workdir / RUN / "result.json").exists() and (workdir / RUN / "ckpt").is_dir()
        return {"epoch_seconds": round(epoch, 2), "signal_after_seconds": round(delay, 2),
                "handled_after_seconds": round(handled - sent, 2), "exit_after_seconds": round(latency, 2),
                "exit_code": code, "resumable": resumable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(HERE), help="checkout whose bin/sweep is measured")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seeds the signal delays")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    trials = [trial(Path(args.repo), rng, args.timeout) for _ in range(args.trials)]
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    handled = [t["handled_after_seconds"] for t in trials]
    exited = [t["exit_after_seconds"] for t in trials]
    print(json.dumps({
        "repo": args.repo, "grid": GRID, "trials": trials,
        "handled_median_seconds": statistics.median(handled), "handled_max_seconds": max(handled),
        "exit_median_seconds": statistics.median(exited), "exit_max_seconds": max(exited),
        "children_cpu_seconds": round(cpu_after.ru_utime + cpu_after.ru_stime
                                      - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
