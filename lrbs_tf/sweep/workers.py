"""Local parallelism for bin/sweep: a queue of subprocess tasks run by N worker slots, and a progress line.

Each slot has its own environment: a share of the CPU threads (of the cores this process may use: its
affinity mask and its cgroup's CPU quota), or one GPU (CUDA_VISIBLE_DEVICES). Children
stay in the sweep's process group, so a Ctrl-C or a kill of the group reaches them too; SIGTERM to the
sweep alone (SLURM's `--signal=B:TERM@...`) is forwarded to them, and bin/train treats it as an
interruption that the next start resumes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import heapq
import itertools
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO


def slot_environments(workers: int, cores: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    """Environment overrides for each of `workers` slots.

    CPU threads: max(1, cores // workers) per slot, so N workers do not oversubscribe the cores; TF reads
    TF_NUM_INTRAOP/INTEROP_THREADS (bin/sharpness has no thread flags), bin/train also gets flags.
    GPUs: slot i sees GPU i mod len(gpus) only (more workers than GPUs share them round-robin; then
    TF_FORCE_GPU_ALLOW_GROWTH, since by default each TensorFlow process takes all of a GPU's memory).
    """
    threads = str(max(1, cores // workers))
    envs = []
    for i in range(workers):
        env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            if workers > len(gpus):
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        envs.append(env)
    return envs


@dataclasses.dataclass
class Task:
    """One subprocess: `argv`, its log file, and whatever the caller needs back when it ends (`payload`)."""
    kind: str                  # "train" or "sharpness": counted separately in the progress line
    label: str                 # what the progress line calls it
    argv: list[str]
    log_path: Path
    payload: Any = None
    priority: int = 0          # lower first; equal priorities run in the order queued


@dataclasses.dataclass
class Finished:
    """A task's end: exit status (negative: killed by that signal) and the last lines of its log."""
    task: Task
    returncode: int
    seconds: float
    log_tail: list[str]


def _tail(path: Path, offset: int, lines: int = 15) -> list[str]:
    """The last `lines` lines written to `path` after byte `offset` (this attempt's output only)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class Interrupted(Exception):
    """The sweep got SIGTERM or SIGINT; running children were told to stop and have exited."""


class Pool:
    """Runs tasks from a priority queue (FIFO within a priority) in `len(slot_envs)` parallel subprocesses.

    `on_start(task)` is called as a task leaves the queue and may return False to drop it instead (e.g.
    measurements after bin/sharpness refused its flags). `on_finish(finished)` is called in the main thread
    as each task ends and may return new tasks to queue (e.g. a sharpness measurement for a run that just
    finished). Nothing is retried here: the caller decides.
    """

    def __init__(self, slot_envs: Sequence[Mapping[str, str]], poll_seconds: float = 0.2) -> None:
        self.slot_envs = [dict(e) for e in slot_envs]
        self.poll_seconds = poll_seconds
        self._stop_signal: int | None = None

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], bool],
            on_finish: Callable[[Finished], Sequence[Task]], on_poll: Callable[[], None] | None = None) -> None:
        queue: list[tuple[int, int, Task]] = []
        order = itertools.count()

        def push(new: Sequence[Task]) -> None:
            for t in new:
                heapq.heappush(queue, (t.priority, next(order), t))

        push(tasks)
        running: dict[int, tuple[subprocess.Popen, Task, float, int, TextIO]] = {}  # slot -> process
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while queue or running:
                if self._stop_signal is None:
                    for slot in range(len(self.slot_envs)):
                        while slot not in running and queue:
                            task = heapq.heappop(queue)[2]
                            if on_start(task):
                                running[slot] = self._start(task, slot)
                if self._stop_signal is not None:
                    self._stop(running)
                    raise Interrupted(signal.Signals(self._stop_signal).name)
                time.sleep(self.poll_seconds)
                if on_poll is not None:
                    on_poll()
                for slot, (proc, task, t0, offset, log) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    log.close()
                    del running[slot]
                    done = Finished(task, code, time.monotonic() - t0, _tail(task.log_path, offset))
                    push(on_finish(done))
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _start(self, task: Task, slot: int) -> tuple[subprocess.Popen, Task, float, int, TextIO]:
        task.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(task.log_path, "a")
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} slot {slot}: {' '.join(shlex.quote(a) for a in task.argv)}\n")
        log.flush()
        offset = log.tell()
        env = {**os.environ, **self.slot_envs[slot]}
        proc = subprocess.Popen(task.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        return proc, task, time.monotonic(), offset, log

    def _stop(self, running: dict) -> None:
        """Forwards SIGTERM to every child and waits for them: bin/train leaves its runs resumable."""
        for proc, *_ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _, _, log in running.values():
            proc.wait()
            log.close()
        running.clear()


def try_lock(path: Path) -> bool:
    """Takes an exclusive lock file (host:pid inside); a lock left by a dead process on this host is taken over."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = path.read_text().strip().rsplit(":", 1)
                if host != socket.gethostname():
                    return False
                os.kill(int(pid), 0)
                return False
            except ProcessLookupError:
                path.unlink(missing_ok=True)  # its holder died (e.g. kill -9): stale
                continue
            except (OSError, ValueError):
                return False
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Counts and the status line: in a log, one line per event, an end's line closed by the counts; on a
    terminal, a counts line redrawn in place each second below the events.

    Work items are runs trained and sharpness measurements. The ETA is (elapsed this session / work ended
    this session) x work left, counting a trained run as 1 and a measurement as `sharpness_weight`: the
    sweep's estimate from the quantities asked for (sweep.config.sharpness_weight) until both kinds have
    ended, then the measured ratio of their mean durations. Measurements still to come count from the start
    (`sharpness_expected`: runs to train that will be measured), so the ETA includes the sharpness stage.
    It assumes the items left cost what the ended ones did on average, which is all a sweep knows.
    """

    def __init__(self, total_runs: int, finished: Mapping[str, int], stream: TextIO | None = None,
                 tty: bool | None = None, sharpness_weight: float = 1.0) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else tty
        self.total_runs = total_runs
        self.counts = collections.Counter({"done": 0, "diverged": 0, "failed": 0, **finished})
        self.running = collections.Counter()
        self.sharpness_done = 0
        self.sharpness_todo = 0      # measurements queued
        self.sharpness_expected = 0  # measurements of runs not trained yet
        self.sharpness_weight = sharpness_weight
        self.ended_items = 0         # trained runs ended this session
        self.ended_sharpness = 0     # measurements ended this session
        self.seconds = collections.Counter()  # per kind: process seconds of ended tasks, and runs in them
        self.start = time.monotonic()
        self._drawn = self.start

    @property
    def remaining(self) -> int:
        return self.total_runs - self.counts["done"] - self.counts["diverged"] - self.counts["failed"]

    def timed(self, kind: str, seconds: float, runs: int) -> None:
        """A task of `kind` ('train' / 'sharpness') over `runs` runs ended after `seconds`."""
        self.seconds[kind] += seconds
        self.seconds[kind + "_runs"] += runs

    def weight(self) -> float:
        """A measurement's cost in trained runs: measured once both kinds have ended, else the estimate."""
        if self.seconds["train_runs"] and self.seconds["sharpness_runs"] and self.seconds["train"] > 0:
            return ((self.seconds["sharpness"] / self.seconds["sharpness_runs"])
                    / (self.seconds["train"] / self.seconds["train_runs"]))
        return self.sharpness_weight

    def eta_seconds(self) -> float | None:
        """Seconds left (0 when nothing is), None before anything has ended."""
        w = self.weight()
        left = self.remaining + w * (self.sharpness_todo + self.sharpness_expected)
        ended = self.ended_items + w * self.ended_sharpness
        if left <= 0:
            return 0.0
        return (time.monotonic() - self.start) / ended * left if ended > 0 else None

    def status_line(self) -> str:
        parts = [f"runs {self.counts['done'] + self.counts['diverged']}/{self.total_runs} finished "
                 f"(done {self.counts['done']}, diverged {self.counts['diverged']})",
                 f"failed {self.counts['failed']}", f"running {self.running['train']}",
                 f"remaining {self.remaining}"]
        waiting = self.sharpness_todo + self.sharpness_expected
        if waiting or self.sharpness_done:
            parts.append(f"sharpness {self.sharpness_done}/{self.sharpness_done + waiting}")
        elapsed = time.monotonic() - self.start
        eta = self.eta_seconds()
        return " | ".join(parts) + f" | elapsed {format_duration(elapsed)}, ETA " + (
            "?" if eta is None else format_duration(eta))

    def event(self, message: str, counts: bool = False) -> None:
        """Prints `message`; with `counts` (an end: the counts changed), the status after it on the same line
        in a log. A start's line carries none: a log of 100 processes is 200 lines, not 400."""
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        if self.tty:
            self.stream.write(f"\r\033[K[{stamp}] {message}\n{self.status_line()}")
        else:
            self.stream.write(f"[{stamp}] {message}" + (f" | {self.status_line()}" if counts else "") + "\n")
        self.stream.flush()

    def tick(self) -> None:
        """On a terminal, redraws the counts line about once a second, so elapsed time and ETA move."""
        now = time.monotonic()
        if self.tty and now - self._drawn >= 1.0:
            self._drawn = now
            self.stream.write(f"\r\033[K{self.status_line()}")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
