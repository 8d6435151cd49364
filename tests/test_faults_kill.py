"""The kill matrix: SIGKILL at a random moment (seeded), then the same command again, for bin/train (one run
and a column), bin/sweep with two workers (with bin/sharpness and bin/correlate under it in the slow set),
consecutive bin/sharpness processes over several runs, and bin/correlate. After the kill every finished file
is the old complete version or the new one; after the rerun no run is lost or trained twice and every
number equals an uninterrupted run's (docs/reliability.md).

A moment is a state, not a time: the kill waits until the files show that many epochs recorded (or
measurements written, or the analysis staged), then a seeded delay of at most a fraction of a second, so a
loaded machine only shifts it within that state. When the work was already complete at the kill the moment
was too late to test anything; it is chosen again, earlier. CI runs seed 0 of the cheap cells; `pytest -m
slow` runs every cell with several seeds (LRBS_KILL_SEEDS=N: N seeds per cell; benchmarks/fault_matrix.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.checkpoints import describe_keras_file
from tests import runfolders
from tests.helpers import REPO, without_seconds

EPOCHS = 5
MODEL = ["--arch=mlp", "--mlp_depth=1", "--mlp_width=16", "--dataset=mnist1d", f"--epochs={EPOCHS}",
         "--intra_op_threads=1", "--inter_op_threads=1"]  # one thread everywhere: equal set-ups, equal numbers
SHARPNESS_FLAGS = ["--quantities=eigenvalues,spectrum", "--top_k=2", "--num_examples=128", "--slq_steps=6",
                   "--slq_runs=1"]
VARYING = ("seconds", "costs", "versions", "checkpoint")  # sharpness.json fields that are not measurements
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ATTEMPTS = 4


SLOW_SEEDS = int(os.environ.get("LRBS_KILL_SEEDS", "4"))


def seeds(ci: int) -> list:
    """Seeds 0..ci-1 in CI, then slow ones up to LRBS_KILL_SEEDS (default 4) per cell."""
    return [*range(ci), *(pytest.param(s, marks=pytest.mark.slow) for s in range(ci, max(SLOW_SEEDS, ci)))]


def command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "bin" / name), *args]


def run(argv: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def kill_when(argv: list[str], ready: Callable[[], bool], delay: float, log: Path, deadline: float = 300,
              env: dict | None = None) -> None:
    """Starts `argv` in a session of its own, waits until ready() (or its end), sleeps `delay` seconds and
    SIGKILLs the whole session (a sweep and its workers together, as a node failure would)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env or ENV)
        try:
            end = time.monotonic() + deadline
            while proc.poll() is None and not ready():
                assert time.monotonic() < end, f"never reached the moment: {log.read_text()[-2000:]}"
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it had ended, and no child was left
            proc.wait()


def stamps(run_dir: Path) -> dict[str, int]:
    """mtime (ns) of a run folder's files: a run trained or measured again would change them."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*")) if p.is_file()}


def measurement(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VARYING}


def check_after_kill(run_dir: Path, ref: Path) -> bool:
    """Every file of a killed run folder is whole and agrees with the uninterrupted run so far; True when
    the run had finished."""
    if not (run_dir / runfolder.CONFIG).exists():
        return False
    runfolder.read_config(run_dir)
    rows = without_seconds(runfolder.read_metrics(run_dir))
    assert rows == without_seconds(runfolder.read_metrics(ref))[:len(rows)], run_dir
    if (run_dir / runfolder.MODEL).exists():
        assert describe_keras_file(run_dir / runfolder.MODEL) is None, run_dir
    if (run_dir / runfolder.SHARPNESS).exists():
        assert measurement(run_dir / runfolder.SHARPNESS) == measurement(ref / runfolder.SHARPNESS), run_dir
    result = runfolder.read_result(run_dir)
    if result is not None:
        assert result.raw == runfolder.read_result(ref).raw, run_dir
    return result is not None


def check_after_rerun(run_dir: Path, ref: Path) -> None:
    rows = runfolder.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), run_dir  # none lost, none twice
    assert without_seconds(rows) == without_seconds(runfolder.read_metrics(ref)), run_dir
    assert runfolder.read_result(run_dir).raw == runfolder.read_result(ref).raw, run_dir
    if (ref / runfolder.SHARPNESS).exists():
        assert measurement(run_dir / runfolder.SHARPNESS) == measurement(ref / runfolder.SHARPNESS), run_dir


def kill_and_rerun(argv: list[str], workdir: Path, names: list[str], ref: Path, progress: Callable[[], int],
                   total: int, seed: int, tmp_path: Path) -> list[str]:
    """Kills `argv` once `progress()` reaches a seeded share of `total` (earlier on each retry until the kill
    interrupts something), checks the folders, runs `argv` again and checks them again. Returns the runs
    that were finished at the kill."""
    rng = random.Random(seed)
    target, delay = rng.randint(1, total - 1), rng.uniform(0.0, 0.3)
    for attempt in range(ATTEMPTS):
        shutil.rmtree(workdir, ignore_errors=True)
        kill_when(argv, lambda: progress() >= target, delay, tmp_path / f"killed-{attempt}.log")
        finished = [n for n in names if check_after_kill(workdir / n, ref / n)]
        if len(finished) < len(names) or progress() < total:
            break
        target, delay = max(1, target // 2), delay / 4  # it all finished first: an earlier moment
    else:
        pytest.fail(f"the work finished before the kill in {ATTEMPTS} attempts")
    before = {n: stamps(workdir / n) for n in finished}
    run(argv)
    for n in names:
        check_after_rerun(workdir / n, ref / n)
    for n in finished:  # measured since, perhaps (a new sharpness.json), but nothing written again
        after = stamps(workdir / n)
        assert {k: after.get(k) for k in before[n]} == before[n], f"{n} was finished before the kill but written again"
    return finished


def epochs_recorded(workdir: Path, names: list[str]) -> Callable[[], int]:
    return lambda: sum(len(runfolder.read_metrics(workdir / n)) for n in names)


# --- bin/train: one run and a column --------------------------------------------------------------------

# SVAG (issue 25) and a schedule that changes the batch size and the learning rate inside the 5 epochs (issue
# 26) are columns too: their checkpoints and resumes must be exact like any run's.
TRAIN_CELLS = {"single": ["--batch_size=64", "--lr=0.05"], "column": ["--batch_size=64", "--lr=0.05,0.1"],
               "svag": ["--batch_size=64", "--lr=0.05,0.1", "--svag=2"],
               "schedule": ["--batch_size=64", "--lr=0.05,0.1", "--schedule=bs*2@2+lr*0.5@3"]}
NAME_SUFFIX = {"svag": "-svag2", "schedule": "-lrx0.5at3+bsx2at2"}


def train_names(cell: str) -> list[str]:
    return [f"mlp-mnist1d-bs64-lr{lr}-s0{NAME_SUFFIX.get(cell, '')}"
            for lr in TRAIN_CELLS[cell][1][len("--lr="):].split(",")]


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def reference(cell: str) -> Path:
        if cell not in made:
            made[cell] = tmp_path_factory.mktemp(f"train-{cell}")
            run(command("train", *MODEL, *TRAIN_CELLS[cell], f"--workdir={made[cell]}", "--noprogress"))
        return made[cell]
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SLOW_SEEDS))
@pytest.mark.parametrize("cell", sorted(TRAIN_CELLS))
def test_bin_train_killed_at_a_random_moment(train_reference, tmp_path, cell, seed):
    ref, workdir, names = train_reference(cell), tmp_path / "w", train_names(cell)
    argv = command("train", *MODEL, *TRAIN_CELLS[cell], f"--workdir={workdir}", "--noprogress")
    kill_and_rerun(argv, workdir, names, ref, epochs_recorded(workdir, names), EPOCHS * len(names), seed, tmp_path)


# --- bin/sweep with two workers (and bin/sharpness, bin/correlate under it) -------------------------------

SWEEP = [*MODEL, "--batch_sizes=64,128", "--lrs=0.05,0.1", "--vectorize", "--workers=2"]
SWEEP_RUNS = [f"mlp-mnist1d-bs{bs}-lr{lr}-s0" for bs in (64, 128) for lr in (0.05, 0.1)]
MEASURED = ["--sharpness", "--sharpness_flags=" + " ".join(SHARPNESS_FLAGS), "--correlate",
            "--correlate_flags=--nofigures"]


def sweep_argv(workdir: Path, measured: bool) -> list[str]:
    return command("sweep", *SWEEP, *(MEASURED if measured else ["--nocorrelate"]), f"--workdir={workdir}")


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory) -> Callable[[bool], Path]:
    made: dict[bool, Path] = {}

    def reference(measured: bool) -> Path:
        if measured not in made:
            made[measured] = tmp_path_factory.mktemp("sweep")
            run(sweep_argv(made[measured], measured))
        return made[measured]
    return reference


def _correlate_outputs(root: Path) -> dict[str, bytes]:
    return _outputs(root / "correlate", root)


@pytest.mark.parametrize("measured", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("seed", seeds(1))
def test_bin_sweep_with_two_workers_killed_at_a_random_moment(sweep_reference, tmp_path, seed, measured):
    ref, workdir = sweep_reference(measured), tmp_path / "w"
    recorded = epochs_recorded(workdir, SWEEP_RUNS)
    events = EPOCHS * len(SWEEP_RUNS)
    if measured:  # training, then the four measurements, then the report: any of them may be cut
        events += len(SWEEP_RUNS) + 1

        def progress() -> int:
            return (recorded() + sum((workdir / n / runfolder.SHARPNESS).exists() for n in SWEEP_RUNS)
                    + (workdir / "correlate" / "report.md").exists())
    else:
        progress = recorded
    kill_and_rerun(sweep_argv(workdir, measured), workdir, SWEEP_RUNS, ref, progress, events, seed, tmp_path)
    if measured:
        assert _correlate_outputs(workdir) == _correlate_outputs(ref)


# --- consecutive bin/sharpness processes over several runs -----------------------------------------------

ONE_THREAD = {**ENV, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def whole_figure(path: Path) -> bool:
    content = path.read_bytes()
    if path.suffix == ".png":
        return content.startswith(b"\x89PNG") and content.endswith(b"IEND\xaeB`\x82")
    return content.startswith(b"%PDF") and content.rstrip().endswith(b"%%EOF")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SLOW_SEEDS))
def test_consecutive_bin_sharpness_killed_at_random_moments(train_reference, tmp_path, seed):
    """Each run measured by its own process, killed at a seeded moment of its life (start-up, measuring or
    writing); one run holds an older measurement (other settings) that must stay whole until replaced."""
    ref, rng = train_reference("column"), random.Random(seed)
    names = train_names("column")
    for where in ("uninterrupted", "killed"):
        for name in names:
            shutil.copytree(ref / name, tmp_path / where / name)
    for name in names:
        run(command("sharpness", f"--ckpt={tmp_path / 'uninterrupted' / name}", *SHARPNESS_FLAGS), env=ONE_THREAD)
    old = tmp_path / "killed" / names[1] / runfolder.SHARPNESS
    run(command("sharpness", f"--ckpt={old.parent}", *SHARPNESS_FLAGS, "--top_k=1"), env=ONE_THREAD)
    old_bytes = old.read_bytes()
    for name in names:
        run_dir, log = tmp_path / "killed" / name, tmp_path / f"{name}.log"
        measuring = rng.random() < 0.6  # else at any moment of its start-up and loading
        ready = (lambda: "eigenvalues:" in log.read_text()) if measuring else (lambda: True)
        kill_when(command("sharpness", f"--ckpt={run_dir}", *SHARPNESS_FLAGS), ready,
                  rng.uniform(0, 1.0 if measuring else 6.0), log, env=ONE_THREAD)
        path = run_dir / runfolder.SHARPNESS
        if path.exists() and path.read_bytes() != old_bytes:  # the old measurement, or the whole new one
            assert measurement(path) == measurement(tmp_path / "uninterrupted" / name / runfolder.SHARPNESS)
        assert all(whole_figure(f) for f in run_dir.glob("hessian_spectrum.*"))
    for name in names:
        run(command("sharpness", f"--ckpt={tmp_path / 'killed' / name}", *SHARPNESS_FLAGS), env=ONE_THREAD)
        assert measurement(tmp_path / "killed" / name / runfolder.SHARPNESS) == measurement(
            tmp_path / "uninterrupted" / name / runfolder.SHARPNESS)


# --- bin/correlate -----------------------------------------------------------------------------------------

def _grid(root: Path, lrs) -> None:
    runfolders.write_grid(root, lambda bs, lr: 0.9 - bs / 1000 + lr, batch_sizes=(16, 32, 64), lrs=lrs)


def _outputs(out: Path, *roots: Path) -> dict[str, bytes]:
    """The files of an analysis, its results folder (any of `roots`) and its time in the text made neutral."""
    def read(p: Path) -> bytes:
        content = p.read_bytes()
        if p.suffix in (".csv", ".md"):
            for root in roots:
                content = content.replace(str(root).encode(), b"<results>")
            content = re.sub(rb"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"Generated <time>", content)
        return content
    return {p.name: read(p) for p in sorted(out.iterdir()) if p.is_file()}


def _same(name: str, a: bytes, b: bytes) -> bool:
    """PDFs carry their creation time: equal apart from it is equal."""
    if name.endswith(".pdf"):
        def strip(pdf: bytes) -> bytes:
            return b"\n".join(line for line in pdf.split(b"\n") if b"/CreationDate" not in line)
        return strip(a) == strip(b)
    return a == b


@pytest.fixture(scope="module")
def analyses(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    """A results folder whose correlate/ holds the analysis of 6 runs, with 9 runs there now; the old and
    the new analysis's files (the new one from an uninterrupted bin/correlate)."""
    root = tmp_path_factory.mktemp("correlate")
    src, new = root / "runs", root / "new"
    _grid(src, (0.01, 0.02))
    run(command("correlate", f"--results={src}"))
    old = _outputs(src / "correlate", src)
    _grid(src, (0.01, 0.02, 0.05))
    shutil.copytree(src, new)
    run(command("correlate", f"--results={new}"))
    return src, old, _outputs(new / "correlate", new)


@pytest.mark.parametrize("seed", seeds(1))
def test_bin_correlate_killed_at_a_random_moment(analyses, tmp_path, seed):
    src, old, new = analyses
    results, rng = tmp_path / "runs", random.Random(seed)
    out = results / "correlate"
    for attempt in range(ATTEMPTS):
        shutil.rmtree(results, ignore_errors=True)
        shutil.copytree(src, results)
        staged = rng.random() < 0.7  # mostly while the new analysis is staged and moved into place
        kill_when(command("correlate", f"--results={results}"),
                  (lambda: any(p.name.startswith(".staging-") for p in out.iterdir())) if staged else (lambda: True),
                  rng.uniform(0, 1.5 / (attempt + 1)), tmp_path / f"killed-{attempt}.log")
        now = _outputs(out, results, src)
        assert set(now) == set(old)  # nothing half-gone
        for name, content in now.items():  # each file the old analysis's or the new one's, whole
            assert _same(name, content, old[name]) or _same(name, content, new[name]), name
        if any(not _same(n, c, new[n]) for n, c in now.items()):
            break  # the kill came before the new analysis was complete: a moment worth testing
    else:
        pytest.fail(f"bin/correlate finished before the kill in {ATTEMPTS} attempts")
    run(command("correlate", f"--results={results}"))
    final = _outputs(out, results, src)
    assert set(final) == set(new) and all(_same(n, c, new[n]) for n, c in final.items())
