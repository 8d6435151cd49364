"""bin/sweep end to end with the real bin/train: a tiny grid, kill -9 and resume, failures, bad input.

Every bin/train process pays several seconds of TensorFlow start-up, so the grids are tiny (2 batch sizes x
2 learning rates of a 1 x 16 MLP on MNIST-1D) and the vectorised columns keep the process count low.
bin/sharpness and bin/correlate are replaced by small fake commands where only the sweep's scheduling is
under test (which runs get measured, when correlate runs); their own tests cover what they compute.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrbs_tf.runs import checkpoints, folder as runfolder
from tests.helpers import REPO, run_bin, without_seconds

EPOCHS = 8
TINY = ["--arch=mlp", "--mlp_depth=1", "--mlp_width=16", "--dataset=mnist1d", f"--epochs={EPOCHS}",
        "--batch_sizes=64,128", "--lrs=0.05,0.1", "--nocorrelate", "--vectorize",
        "--checkpoint_seconds=0"]  # a checkpoint every epoch: the kill below must find a half-trained run
RUNS = [f"mlp-mnist1d-bs{bs}-lr{lr}-s0" for bs in (64, 128) for lr in (0.05, 0.1)]
# Same CPU thread count in every sweep below: identical metrics are only promised for equal set-ups.
ONE_THREAD = ["--intra_op_threads=1", "--inter_op_threads=1"]


def sweep(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return run_bin("sweep", *args, timeout=timeout)


def metrics(workdir: Path, name: str) -> list[dict]:
    return runfolder.read_metrics(workdir / name)


def stamps(run_dir: Path) -> dict[str, int]:
    """mtime (ns) of every file of a run folder: a run trained again would change them."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny grid swept without interruption by two workers."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = sweep(*TINY, *ONE_THREAD, "--workers=2", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return workdir


def test_tiny_grid_end_to_end(reference):
    for name in RUNS:
        result = runfolder.read_result(reference / name)
        assert result.status == "done" and result.epochs == EPOCHS
        assert [r["epoch"] for r in metrics(reference, name)] == list(range(1, EPOCHS + 1))
        config = runfolder.read_config(reference / name).raw
        # The grid point reached the run, and the forwarded flags did too.
        bs, lr = int(name.split("-bs")[1].split("-")[0]), float(name.split("-lr")[1].split("-")[0])
        assert (config["batch_size"], config["lr"], config["mlp_width"], config["mlp_depth"]) == (bs, lr, 16, 1)
    record = json.loads((reference / "sweep.json").read_text())["grid"]
    assert (record["batch_sizes"], record["lrs"], record["seeds"]) == ([64, 128], [0.05, 0.1], [0])
    assert record["epochs"] == EPOCHS and record["mlp_width"] == 16
    assert not list(reference.glob("sweep_failures*"))
    # Different learning rates gave different models (the grid is not one run four times).
    finals = {metrics(reference, n)[-1]["train_loss"] for n in RUNS}
    assert len(finals) == 4


def test_a_finished_sweep_trains_nothing_again(reference):
    before = {n: stamps(reference / n) for n in RUNS}
    proc = sweep(*TINY, *ONE_THREAD, "--workers=2", f"--workdir={reference}")
    assert proc.returncode == 0, proc.stderr
    assert "4 finished, 0 to run in 0 processes" in proc.stdout
    assert {n: stamps(reference / n) for n in RUNS} == before


def test_kill_9_mid_sweep_then_resume_trains_each_run_once_with_identical_metrics(reference, tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, str(REPO / "bin" / "sweep"), *TINY, *ONE_THREAD, "--workers=1", f"--workdir={workdir}"]
    with open(tmp_path / "first.log", "w") as log:
        # Own process group: os.killpg then takes the sweep and its bin/train children, as a node failure would.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        finished, partial = [], []
        while time.monotonic() < deadline and proc.poll() is None:
            finished = [n for n in RUNS if (workdir / n / runfolder.RESULT).exists()]
            partial = [n for n in RUNS if n not in finished
                       and checkpoints.candidates(workdir / n / runfolder.CKPT_DIR)]
            if finished and partial:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = (tmp_path / "first.log").read_text()
    assert finished and partial, f"never saw a finished run beside a half-trained one: {log}"
    unfinished_at_kill = [n for n in RUNS if not (workdir / n / runfolder.RESULT).exists()]
    assert unfinished_at_kill, "every run finished before the kill: nothing was interrupted"
    done_at_kill = {n: stamps(workdir / n) for n in RUNS if n not in unfinished_at_kill}

    again = sweep(*TINY, *ONE_THREAD, "--workers=1", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr + again.stdout
    assert f"{len(done_at_kill)} finished, {len(unfinished_at_kill)} to run" in again.stdout
    for name, files in done_at_kill.items():
        assert stamps(workdir / name) == files, f"{name} was finished before the kill but written again"
    for name in RUNS:
        assert runfolder.read_result(workdir / name).status == "done"
        rows = metrics(workdir, name)
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))  # no epoch lost or logged twice
        assert without_seconds(rows) == without_seconds(metrics(reference, name)), name


FAKE_TRAIN = """
import os, signal, sys
# Plays a bin/train killed by the kernel (e.g. out of memory) whenever it is asked to train lr=0.2;
# otherwise it is the real bin/train.
if any(a.startswith("--lr=") and "0.2" in a[5:].split(",") for a in sys.argv[1:]):
    os.kill(os.getpid(), signal.SIGKILL)
os.execv(sys.executable, [sys.executable, {train!r}, *sys.argv[1:]])
"""


def test_failed_runs_are_recorded_and_the_others_finish(tmp_path):
    workdir = tmp_path / "w"
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN.format(train=str(REPO / "bin" / "train")))
    # lr=0.1's folder holds another configuration: the real bin/train refuses it (exit 2, no result.json).
    foreign = workdir / "mlp-mnist1d-bs128-lr0.1-s0"
    foreign.mkdir(parents=True)
    (foreign / runfolder.CONFIG).write_text(json.dumps({"arch": "vgg19", "dataset": "cifar10", "lr": 0.1}))
    foreign_bytes = (foreign / runfolder.CONFIG).read_bytes()
    args = [a for a in TINY if not a.startswith(("--batch_sizes", "--lrs"))]
    proc = sweep(*args, *ONE_THREAD, "--batch_sizes=128", "--lrs=0.05,0.1,0.2", "--workers=2",
                 f"--workdir={workdir}", f"--train_command={sys.executable} {fake}")
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert runfolder.read_result(workdir / "mlp-mnist1d-bs128-lr0.05-s0").status == "done"
    assert len(metrics(workdir, "mlp-mnist1d-bs128-lr0.05-s0")) == EPOCHS
    records = [json.loads(line) for line in (workdir / "sweep_failures.jsonl").read_text().splitlines()]
    # The column process was killed: each of its runs got one process of its own before being called failed.
    retried = [r for r in records if r.get("retry")]
    column = [f"mlp-mnist1d-bs128-lr{lr}-s0" for lr in ("0.05", "0.1", "0.2")]
    assert sorted(r["run"] for r in retried) == column
    assert {r["exit_code"] for r in retried} == {-signal.SIGKILL}
    final = {r["run"]: r for r in records if not r.get("retry")}
    assert set(final) == {"mlp-mnist1d-bs128-lr0.1-s0", "mlp-mnist1d-bs128-lr0.2-s0"}
    assert final["mlp-mnist1d-bs128-lr0.2-s0"]["exit_code"] == -signal.SIGKILL
    assert final["mlp-mnist1d-bs128-lr0.1-s0"]["exit_code"] == 2
    # Neither wrote a result.json: the sweep's record is the only trace of these failures.
    assert {r["result_status"] for r in final.values()} == {None}
    assert any("holds another configuration" in line for line in final["mlp-mnist1d-bs128-lr0.1-s0"]["log_tail"])
    assert "2 failed" in proc.stdout
    # The sweep never writes a run folder: no result.json invented, the foreign folder untouched.
    assert not (workdir / "mlp-mnist1d-bs128-lr0.2-s0" / runfolder.RESULT).exists()
    assert (foreign / runfolder.CONFIG).read_bytes() == foreign_bytes
    assert sorted(p.name for p in foreign.iterdir()) == [runfolder.CONFIG]


FAKE_TOOL = """
import json, pathlib, sys
# Plays bin/sharpness or bin/correlate: logs its arguments; as sharpness, writes the run's sharpness.json.
with open({calls!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
ckpt = [a[len("--ckpt="):] for a in sys.argv[1:] if a.startswith("--ckpt=")]
if ckpt:
    if {refuse}:
        print("sharpness: error: refused", file=sys.stderr)
        sys.exit(2)
    for run in ckpt[0].split(","):  # one process measures a column's runs
        (pathlib.Path(run) / "sharpness.json").write_text("{{}}")
"""


def fake_tool(tmp_path: Path, name: str, refuse: bool = False) -> tuple[str, Path]:
    calls = tmp_path / f"{name}.calls"
    script = tmp_path / f"{name}.py"
    script.write_text(FAKE_TOOL.format(calls=str(calls), refuse=refuse))
    return f"{sys.executable} {script}", calls


def calls_of(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def copy_runs(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("sweep_logs"))
    return dst


def test_sharpness_on_each_done_run_once_one_process_per_column_then_correlate(reference, tmp_path):
    workdir = copy_runs(reference, tmp_path / "w")
    (workdir / RUNS[0] / runfolder.SHARPNESS).write_text("{}")  # measured already: skipped
    sharp, sharp_calls = fake_tool(tmp_path, "sharpness")
    corr, corr_calls = fake_tool(tmp_path, "correlate")
    args = [a for a in TINY if a != "--nocorrelate"]
    proc = sweep(*args, "--workers=2", f"--workdir={workdir}", "--sharpness",
                 "--sharpness_flags=--quantities=eigenvalues,trace --top_k=1", "--correlate",
                 f"--sharpness_command={sharp}", f"--correlate_command={corr}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    measured = sorted(c[0] for c in calls_of(sharp_calls))
    # RUNS[0] (batch 64, lr 0.05) was measured: batch 64's column has one run left, batch 128's both.
    assert measured == sorted([f"--ckpt={workdir / RUNS[1]}", f"--ckpt={workdir / RUNS[2]},{workdir / RUNS[3]}"])
    assert all(c[1:] == ["--quantities=eigenvalues,trace", "--top_k=1"] for c in calls_of(sharp_calls))
    assert calls_of(corr_calls) == [[f"--results={workdir}"]]
    # Started again: every run measured, nothing to do but correlate.
    proc = sweep(*args, "--workers=2", f"--workdir={workdir}", "--sharpness", f"--sharpness_command={sharp}",
                 f"--correlate_command={corr}")
    assert proc.returncode == 0 and len(calls_of(sharp_calls)) == 2 and len(calls_of(corr_calls)) == 2


def test_correlate_waits_for_the_whole_grid_and_sharpness_stops_on_bad_input(reference, tmp_path):
    workdir = copy_runs(reference, tmp_path / "w")
    (workdir / "sweep.json").unlink()  # this test's grid is larger than the reference's
    (workdir / "elsewhere" / "other-run").mkdir(parents=True)  # a run folder that is not of the grid
    (workdir / "elsewhere" / "other-run" / runfolder.CONFIG).write_text("{}")
    sharp, sharp_calls = fake_tool(tmp_path, "sharpness", refuse=True)
    corr, corr_calls = fake_tool(tmp_path, "correlate")
    args = [a for a in TINY if not a.startswith(("--lrs", "--nocorrelate"))]
    # lr=0.2's runs are not there and the train command fails without training them.
    proc = sweep(*args, "--lrs=0.05,0.1,0.2", "--workers=1", f"--workdir={workdir}", "--sharpness",
                 f"--train_command={sys.executable} -c 'import sys; sys.exit(3)'",
                 f"--sharpness_command={sharp}", f"--correlate_command={corr}")
    assert proc.returncode == 1
    assert len(calls_of(sharp_calls)) == 1, "after bin/sharpness refused its input, no other run was tried"
    assert calls_of(corr_calls) == [], "correlate ran on an unfinished grid"
    assert "2 run(s) of the grid are not finished" in proc.stdout
    other = workdir / "elsewhere" / "other-run"
    assert f"1 run folder(s) under {workdir} are not of this grid (e.g. {other})" in proc.stdout
    failures = [json.loads(line) for line in (workdir / "sweep_failures.jsonl").read_text().splitlines()]
    assert {(f["run"], f["exit_code"]) for f in failures if f["kind"] == "train" and not f.get("retry")} == {
        ("mlp-mnist1d-bs64-lr0.2-s0", 3), ("mlp-mnist1d-bs128-lr0.2-s0", 3)}
    # --correlate_now: with what exists, training nothing.
    proc = sweep(*args, "--lrs=0.05,0.1,0.2", f"--workdir={workdir}", "--correlate_now",
                 "--correlate_flags=--nofigures", f"--correlate_command={corr}")
    assert proc.returncode == 0 and calls_of(corr_calls) == [[f"--results={workdir}", "--nofigures"]]


@pytest.mark.parametrize("args, message", [
    (["--batch_sizes=", "--lrs=0.1"], "--batch_sizes is empty"),
    (["--batch_sizes=16", "--lrs=0.1", "--shard_index=2", "--num_shards=2"], "--shard_index=2 is out of range"),
    (["--batch_sizes=16", "--lrs=0.1", "--lr=0.3"], "--lr is not a bin/sweep flag: the grid sets it per run"),
    (["--batch_sizes=16", "--lrs=0.1", "--batch_size=32,64"], "give the grid's batch sizes with --batch_sizes"),
    (["--batch_sizes=16,x", "--lrs=0.1"], "--batch_sizes holds 'x'"),
    (["--batch_sizes=16", "--lrs=0.1", "--arch=nope"], "nope"),
    (["--batch_sizes=16", "--lrs=-0.1"], "--lrs holds -0.1"),
    (["--batch_sizes=16", "--lrs=0.1", "--sharpness_flags=--ckpt=x"], "sets that flag itself"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "w"
    proc = sweep(*args, f"--workdir={workdir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: error: ") and message in lines[0], proc.stderr
    assert not workdir.exists()


def test_unknown_flag_in_a_flagfile_is_one_line(tmp_path):
    flagfile = tmp_path / "study.flags"
    flagfile.write_text("# a study\n--batch_sizes=16\n--lrs=0.1\n--no_such_flag=3\n")
    proc = sweep(f"--flagfile={flagfile}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no_such_flag" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_a_folder_of_another_experiment_is_refused_untouched(reference, tmp_path):
    workdir = copy_runs(reference, tmp_path / "w")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    args = [a for a in TINY if not a.startswith("--epochs")]
    proc = sweep(*args, f"--epochs={EPOCHS + 1}", "--seeds=0,1", f"--workdir={workdir}")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert f"holds another sweep (epochs: {EPOCHS} there, {EPOCHS + 1} now): its runs would be" in proc.stderr
    # --dry_list names the runs that would conflict (their names do not carry --epochs), then refuses.
    proc = sweep(*args, f"--epochs={EPOCHS + 1}", f"--workdir={workdir}", "--dry_list")
    assert proc.returncode == 2 and "holds another sweep (epochs" in proc.stderr
    lines = proc.stdout.splitlines()
    assert "runs: 4 exist, 0 new, 4 would conflict" in lines
    assert f"conflict\t{RUNS[0]}\tepochs={EPOCHS} in config.json but epochs={EPOCHS + 1} now" in lines
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_a_grid_grows_in_place_training_only_the_new_runs(reference, tmp_path):
    workdir = copy_runs(reference, tmp_path / "w")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for n in RUNS for p in (workdir / n).rglob("*")
              if p.is_file()}
    new = [n.replace("-s0", "-s1") for n in RUNS]
    proc = sweep(*TINY, "--seeds=0,1", f"--workdir={workdir}", "--dry_list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "sweep.json: this grid grows the recorded one (seeds + 1)" in lines
    assert "runs: 4 exist, 4 new, 0 would conflict" in lines
    assert {line for line in lines if line.startswith(("exists", "new"))} == (
        {f"exists\t{n}\tdone" for n in RUNS} | {f"new\t{n}" for n in new})
    proc = sweep(*TINY, *ONE_THREAD, "--seeds=0,1", "--workers=2", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "the grid grows in place (seeds + 1)" in proc.stdout
    assert "4 finished, 4 to run in 2 processes" in proc.stdout
    # The finished runs were not touched, byte for byte and by modification time; the new ones trained.
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for n in RUNS for p in (workdir / n).rglob("*")
            if p.is_file()} == before
    assert all(runfolder.read_result(workdir / n).status == "done" for n in new)
    raw = json.loads((workdir / "sweep.json").read_text())
    assert raw["grid"]["seeds"] == [0, 1] and [g["added"] for g in raw["grown"]] == [{"seeds": [1]}]
    assert "--seeds=0,1" in raw["grown"][0]["argv"]


def test_dry_list_prints_this_shards_columns(tmp_path):
    proc = sweep("--batch_sizes=16,32,48,64", "--lrs=0.1,0.2", "--seeds=0", "--num_shards=2", "--shard_index=1",
                 "--vectorize", "--workers=2", f"--workdir={tmp_path / 'w'}", "--dry_list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Balanced by optimizer steps (MNIST-1D: 4000 // batch size per epoch): the batch-16 column (250 steps
    # per epoch per run) is shard 0 alone, 48% of the grid's steps; shard 1 holds the other three columns.
    assert lines[0] == ("shard 1 of 2: 6 of the grid's 8 runs (52% of its optimizer steps), 0 finished, "
                        "3 work units to run")
    assert [line.split("\t")[0] for line in lines[1:]] == ["bs32-s0-lr0.1..0.2x2", "bs48-s0-lr0.1..0.2x2",
                                                           "bs64-s0-lr0.1..0.2x2"]
    assert "--batch_sizes" not in lines[1] and "--lr=0.1,0.2" in lines[1] and "--intra_op_threads=1" in lines[1]
    assert not (tmp_path / "w").exists()


def test_a_weight_decay_by_momentum_grid_grows_lists_shards_trains_and_correlates_as_one_study(reference, tmp_path):
    """Issue 26's done-when: --grid=weight_decay x --grid=momentum x batch sizes x learning rates, listed and
    trained as two shards, then bin/correlate (run by the shard that finished the grid) groups the runs by
    the two settings. The reference's four runs are the point (wd 0, momentum 0): the recorded grid grows
    into the --grid axes, and only the 12 new runs train."""
    workdir = copy_runs(reference, tmp_path / "w")
    before = {n: stamps(workdir / n) for n in RUNS}
    grid = [*(a for a in TINY if a != "--nocorrelate"), "--grid=weight_decay=0.01,0", "--grid=momentum=0,0.9",
            f"--workdir={workdir}", "--correlate_flags=--nofigures --nosummary", "--num_shards=2"]
    units, shares, listed = [], [], set()
    for k in (0, 1):
        proc = sweep(*grid, f"--shard_index={k}", "--dry_list")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[:2] == ["axis\tweight_decay\t0.0,0.01", "axis\tmomentum\t0.0,0.9"]
        assert lines[2].startswith(f"shard {k} of 2: ") and "of the grid's 16 runs" in lines[2]
        shares.append(int(lines[2].split("(")[1].split("%")[0]))
        assert lines[3] == "sweep.json: this grid grows the recorded one (weight_decay + 0.01; momentum + 0.9)"
        listed |= {tuple(line.split("\t")[:2]) for line in lines if line.startswith(("exists\t", "new\t"))}
        for line in lines:
            if line.startswith("bs"):
                label, command = line.split("\t")
                units.append(label)
                assert "--weight_decay=" in command and "--momentum=" in command and "--grid" not in command
    assert sorted(n for kind, n in listed if kind == "exists") == sorted(RUNS)
    assert len({n for kind, n in listed if kind == "new"}) == 12
    # 6 columns to train (2 batch sizes x 3 new points), each named by its point, none in both shards.
    assert len(units) == len(set(units)) == 6 and "bs64-s0-lr0.05..0.1x2-wd0.01-m0.9" in units
    assert sum(shares) in (99, 100, 101) and abs(shares[0] - shares[1]) <= 20  # balanced by steps
    outputs = []
    for k in (0, 1):
        proc = sweep(*grid, *ONE_THREAD, f"--shard_index={k}", "--workers=2", timeout=600)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        outputs.append(proc.stdout)
    assert "the grid grows in place (weight_decay + 0.01; momentum + 0.9)" in outputs[0]
    assert sum("correlate --results=" in out for out in outputs) == 1  # by the shard that found the grid done
    assert {n: stamps(workdir / n) for n in RUNS} == before  # the recorded runs were kept as they were
    names = sorted(d.name for d in workdir.iterdir() if (d / runfolder.CONFIG).exists())
    assert len(names) == 16
    for name in names:
        config = runfolder.read_config(workdir / name).raw
        assert runfolder.read_result(workdir / name).status == "done"
        assert ("-wd0.01" in name, "-m0.9" in name) == (config["weight_decay"] == 0.01, config["momentum"] == 0.9)
    raw = json.loads((workdir / "sweep.json").read_text())
    assert raw["grid"]["grid_axes"] == ["weight_decay", "momentum"] and raw["grid"]["momentum"] == [0.0, 0.9]
    assert [g["added"] for g in raw["grown"]] == [{"weight_decay": [0.01], "momentum": [0.9]}]
    report = (workdir / "correlate" / "report.md").read_text()
    assert "16 runs analysed in 4 groups" in report
    for m, wd in itertools.product(("0.0", "0.9"), ("0.0", "0.01")):
        assert f"mlp on mnist1d, momentum={m}, weight_decay={wd}" in report
