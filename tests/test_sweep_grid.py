"""bin/sweep's pure parts: grid expansion, shard partition, cluster environment, worker slots, sweep.json.

No subprocess and no TensorFlow here: these run in a fraction of a second.
"""

from __future__ import annotations

import itertools
import json

import pytest

from lrbs_tf import config
from lrbs_tf import grid as gridlib
from lrbs_tf import runfolder, sweep, workers

PAPER_BS = tuple(range(16, 321, 16))
PAPER_LR = tuple(round(0.01 * i, 2) for i in range(1, 21))


def make_grid(bs=(16, 32, 48), lrs=(0.1, 0.2), seeds=(0, 1), **kw) -> gridlib.Grid:
    return gridlib.Grid(tuple(bs), tuple(lrs), tuple(seeds), kw.pop("arch", "mlp"), kw.pop("dataset", "mnist1d"),
                        **kw)


def test_grid_expands_to_every_point_once_with_the_train_run_names():
    g = make_grid(momentum=0.9)
    runs = g.runs()
    assert g.size == len(runs) == 12
    assert {(r.batch_size, r.lr, r.seed) for r in runs} == set(itertools.product((16, 32, 48), (0.1, 0.2), (0, 1)))
    # The names are bin/train's default names, so the sweep finds the folders bin/train writes.
    assert {r.name for r in runs} == {config.run_name("mlp", "mnist1d", bs, lr, s, 0.9)
                                      for bs, lr, s in itertools.product((16, 32, 48), (0.1, 0.2), (0, 1))}
    assert "mlp-mnist1d-bs48-lr0.2-s1-m0.9" in {r.name for r in runs}


def test_columns_interleave_small_and_large_batches():
    g = make_grid(bs=(16, 32, 48, 64, 80), seeds=(0,))
    assert g.column_order() == [(0, 16), (0, 80), (0, 32), (0, 64), (0, 48)]


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7, 12, 13])
def test_shards_cover_the_grid_exactly_once_and_are_deterministic(num_shards):
    g = make_grid()  # 12 runs: 13 shards leaves one empty
    shards = [gridlib.shard_runs(g, k, num_shards) for k in range(num_shards)]
    names = [r.name for s in shards for r in s]
    assert sorted(names) == sorted(r.name for r in g.runs())  # every run, none twice
    assert sum(1 for s in shards if not s) == max(0, num_shards - g.size)  # work for every shard it can have
    again = [gridlib.shard_runs(make_grid(), k, num_shards) for k in range(num_shards)]
    assert again == shards
    assert gridlib.shards(g, num_shards) == shards


def paper_grid(**kw) -> gridlib.Grid:
    return make_grid(bs=PAPER_BS, lrs=PAPER_LR, seeds=(0,), arch="resnet110", dataset="cifar10", num_train=50_000,
                     epochs=200, **kw)


def steps_of(runs) -> int:
    """Optimizer steps, computed here from the definition: 200 epochs x floor(50000 / batch size) per run."""
    return sum(200 * (50_000 // r.batch_size) for r in runs)


def test_paper_grid_shards_are_balanced_by_optimizer_steps_not_by_runs():
    g = paper_grid()
    assert g.steps(16) == 200 * 3125 and g.steps(320) == 200 * 156 and gridlib.shard_steps(g, g.runs()) == steps_of(
        g.runs())
    mean = steps_of(g.runs()) / 20
    steps = [steps_of(gridlib.shard_runs(g, k, 20)) for k in range(20)]
    assert max(steps) <= 1.15 * mean and min(steps) >= 0.8 * mean
    # One batch size per shard (contiguous blocks of the interleaved order), as before: the batch-16 shard
    # held 5.6 times the mean, and the array waited for it.
    runs = g.runs()
    blocks = [steps_of(runs[k * 20:(k + 1) * 20]) for k in range(20)]
    assert max(blocks) > 5.5 * mean
    # Over-sharded for a throttled array (100 tasks, 20 at a time): every shard holds work, and none more
    # than the one run that cannot be split (a batch-16 run is 1.39 times the mean shard).
    over = [gridlib.shard_runs(g, k, 100) for k in range(100)]
    assert all(over) and max(steps_of(s) for s in over) == 200 * 3125
    assert all(len(gridlib.work_units(s, vectorize=True)) <= 2 for s in over)
    assert [len(gridlib.shard_runs(g, k, 400)) for k in range(400)] == [1] * 400


def test_a_shards_columns_stay_whole_or_in_pieces_and_vectorising_never_moves_a_run():
    g = paper_grid()
    for k in range(20):
        shard = gridlib.shard_runs(g, k, 20)
        columns = gridlib.work_units(shard, vectorize=True)
        singles = gridlib.work_units(shard, vectorize=False)
        assert [u.runs[0] for u in singles] == [r for u in columns for r in u.runs]
        for unit in columns:  # a piece of a column: consecutive learning rates
            first = PAPER_LR.index(unit.lrs[0])
            assert unit.lrs == PAPER_LR[first:first + len(unit.lrs)]
        # The costliest (smallest batch size) column first, so the shard's workers start the longest one.
        assert [u.batch_size for u in columns] == sorted(u.batch_size for u in columns)
    assert len(gridlib.work_units(gridlib.shard_runs(g, 0, 1), vectorize=True)) == 20  # one shard: whole columns


def test_steps_use_the_datasets_size_or_a_nominal_one():
    assert make_grid(num_train=4000, epochs=3).steps(48) == 3 * 83
    assert make_grid().steps(16) == gridlib.NOMINAL_TRAIN // 16  # unknown size (an npz): ratios only
    from lrbs_tf.theory.bounds import KNOWN_TRAIN_SIZES

    assert gridlib.TRAIN_SIZES == KNOWN_TRAIN_SIZES


def test_column_labels_name_batch_seed_and_learning_rates():
    g = make_grid(bs=(64,), lrs=(0.01, 0.2, 0.05), seeds=(3,))
    (unit,) = gridlib.work_units(g.runs(), vectorize=True)
    assert unit.lrs == (0.01, 0.05, 0.2)  # ascending inside a column
    assert unit.label == "bs64-s3-lr0.01..0.2x3"
    assert gridlib.work_units(g.runs()[:1], vectorize=True)[0].label == g.runs()[0].name


@pytest.mark.parametrize("bs, lrs, seeds, message", [
    ((), (0.1,), (0,), "--batch_sizes is empty"),
    ((16,), (), (0,), "--lrs is empty"),
    ((16, 16), (0.1,), (0,), "--batch_sizes repeats 16"),
    ((0,), (0.1,), (0,), "batch sizes must be > 0"),
    ((16,), (0.1, float("nan")), (0,), "learning rates must be finite"),
    ((16,), (0.1,), (-1,), "seeds must be >= 0"),
])
def test_bad_axes_are_refused_with_the_value(bs, lrs, seeds, message):
    with pytest.raises(ValueError, match=message):
        gridlib.check_axes(bs, lrs, seeds)


@pytest.mark.parametrize("flags_, env, expected", [
    ((None, None), {}, (0, 1)),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"},
     (3, 8)),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "20"},
     (0, 20)),  # --array=1-20
    ((None, 4), {"JOB_COMPLETION_INDEX": "2"}, (2, 4)),
    ((1, 2), {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}, (1, 2)),  # flags win
    ((None, 3), {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "8"}, (2, 3)),
])
def test_shard_defaults_come_from_the_cluster_environment(flags_, env, expected):
    assert gridlib.resolve_shard(*flags_, env) == expected


@pytest.mark.parametrize("flags_, env, message", [
    ((None, None), {"JOB_COMPLETION_INDEX": "2"}, "needs --num_shards"),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID='x'"),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT is not"),
])
def test_incomplete_cluster_environment_is_refused(flags_, env, message):
    with pytest.raises(ValueError, match=message):
        gridlib.resolve_shard(*flags_, env)


@pytest.mark.parametrize("index, num", [(3, 3), (-1, 2), (0, 0)])
def test_shard_index_out_of_range_is_refused(index, num):
    with pytest.raises(ValueError, match="out of range|must be >= 1"):
        gridlib.shard_runs(make_grid(), index, num)


def test_worker_slots_share_cores_and_take_gpus_round_robin():
    envs = workers.slot_environments(3, cores=8, gpus=["0", "1"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert {e["TF_NUM_INTRAOP_THREADS"] for e in envs} == {"2"}  # 8 // 3
    assert all(e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in envs)  # two processes on GPU 0
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in workers.slot_environments(2, cores=8, gpus=["0", "1"])[0]
    cpu = workers.slot_environments(4, cores=2, gpus=[])
    assert all(e["TF_NUM_INTRAOP_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in e for e in cpu)


@pytest.mark.parametrize("value, expected", [("", []), ("-1", []), ("2,3", ["2", "3"]),
                                             ("GPU-ab12", ["GPU-ab12"])])
def test_visible_gpus_respects_an_allocation(value, expected):
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


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


MOUNTINFO_V2 = ("24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
                "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
                "rw,nsdelegate,memory_recursiveprot\n")
MOUNTINFO_V1 = ("31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
                "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup "
                "cgroup rw,cpu,cpuacct\n"
                "35 31 0:32 {root} /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup "
                "rw,memory\n")


def fake_cgroup(tmp_path, mountinfo: str, membership: str, files: dict[str, str]):
    """A /proc/self and /sys/fs/cgroup tree in the kernel's formats under tmp_path."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    (tmp_path / "proc/self/cgroup").write_text(membership)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


@pytest.mark.parametrize("mountinfo, membership, files, limit", [
    # cgroup v2 in a container (its own namespace: the process's cgroup is the mount's root), `--cpus=2`.
    (MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "200000 100000\n"}, 2.0),
    (MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
    # v2 seen from the host (systemd): a Kubernetes pod's 1.5 CPUs set on the pod, none on the container.
    (MOUNTINFO_V2, "0::/kubepods.slice/kubepods-pod1.slice/cri-abc.scope\n",
     {"sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cpu.max": "150000 100000\n",
      "sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-abc.scope/cpu.max": "max 100000\n",
      "sys/fs/cgroup/kubepods.slice/cpu.max": "max 100000\n"}, 1.5),
    # ... and the smallest of nested limits wins.
    (MOUNTINFO_V2, "0::/a/b\n", {"sys/fs/cgroup/a/cpu.max": "300000 100000\n",
                                  "sys/fs/cgroup/a/b/cpu.max": "400000 100000\n"}, 3.0),
    # A path of the host's view that the container cannot see: the mount point is the nearest folder.
    (MOUNTINFO_V2, "0::/user.slice/gone.scope\n", {"sys/fs/cgroup/cpu.max": "50000 100000\n"}, 0.5),
    # cgroup v1 (docker): the cpu controller's CFS quota; -1 is unlimited.
    (MOUNTINFO_V1.format(root="/docker/0123"), "12:memory:/docker/0123\n4:cpu,cpuacct:/docker/0123\n",
     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
    (MOUNTINFO_V1.format(root="/"), "4:cpu,cpuacct:/slurm/uid_1/job_7\n",
     {"sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_quota_us": "-1\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_period_us": "100000\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_quota_us": "400000\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_period_us": "100000\n"}, 4.0),
    (MOUNTINFO_V1.format(root="/"), "4:cpu,cpuacct:/\n", {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                                          "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     None),
])
def test_the_cgroup_cpu_quota_is_read_from_the_kernels_files(tmp_path, mountinfo, membership, files, limit):
    root = fake_cgroup(tmp_path, mountinfo, membership, files)
    assert workers.cgroup_cpu_limit(root) == limit
    import os

    affinity = len(os.sched_getaffinity(0))
    expected = affinity if limit is None else max(1, min(affinity, int(limit)))
    assert workers.available_cores(root) == expected


def test_a_quota_caps_the_cores_below_the_affinity_mask(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    root = fake_cgroup(tmp_path, MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "800000 100000\n"})
    assert workers.available_cores(root) == 8  # the pod's limits.cpu: 8, not the node's 64
    (root / "sys/fs/cgroup/cpu.max").write_text("150000 100000\n")
    assert workers.available_cores(root) == 1  # 1.5 CPUs: a second thread would be throttled
    (root / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    assert workers.available_cores(root) == 64
    assert workers.available_cores(tmp_path / "no-proc-here") == 64  # nothing readable: affinity alone


def test_bin_train_sizes_tensorflows_threads_to_the_quota(tmp_path, monkeypatch):
    """Under a quota, --intra_op_threads=0 (TensorFlow's default: every core of the node) becomes the
    quota's cores; a value the user gave is kept, and without a quota nothing changes."""
    from lrbs_tf import loop, train
    from tests.helpers import small_config

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfgs, settings, provenance: seen.append(cfgs) or [{}] * len(cfgs))
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda root=None: 1.5)
    train.run_column(small_config(tmp_path), [0.1, 0.2])
    train.run_column(small_config(tmp_path, intra_op_threads=3), [0.1])
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda root=None: None)
    train.run_column(small_config(tmp_path), [0.1])
    assert [[c.intra_op_threads for c in cfgs] for cfgs in seen] == [[1, 1], [3], [0]]


def test_sweep_record_is_written_once_and_a_different_grid_refused(tmp_path):
    record = {"batch_sizes": [16, 32], "lrs": [0.1], "seeds": [0], "arch": "mlp", "epochs": 2}
    sweep.check_sweep_record(tmp_path, record)
    path = tmp_path / sweep.SWEEP_RECORD
    before = path.read_bytes()
    assert json.loads(before)["grid"] == record
    sweep.check_sweep_record(tmp_path, dict(record))  # the same grid again: accepted, file untouched
    assert path.read_bytes() == before
    with pytest.raises(sweep.UsageError, match=r"another sweep \(epochs: 2 there, 3 now\)"):
        sweep.check_sweep_record(tmp_path, {**record, "epochs": 3})
    with pytest.raises(sweep.UsageError, match="lrs"):
        sweep.check_sweep_record(tmp_path, {**record, "lrs": [0.1, 0.2]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.SWEEP_RECORD]  # no temp file left
    # A setting added to bin/train after the record was written is absent from it: the default is recorded.
    sweep.check_sweep_record(tmp_path, {**record, "mixed_precision": "off"})
    with pytest.raises(sweep.UsageError, match="mixed_precision: 'off' there, 'bfloat16' now"):
        sweep.check_sweep_record(tmp_path, {**record, "mixed_precision": "bfloat16"})


def test_only_done_runs_without_sharpness_are_measured(tmp_path):
    def folder(name, status, files=()):
        d = tmp_path / name
        d.mkdir()
        (d / runfolder.CONFIG).write_text("{}")
        if status:
            runfolder.atomic_write_json(d / runfolder.RESULT, {"status": status})
        for f in files:
            (d / f).write_text("{}")
        return d

    assert sweep._needs_sharpness(folder("a", "done", [runfolder.MODEL]))
    assert not sweep._needs_sharpness(folder("b", "done", [runfolder.MODEL, runfolder.SHARPNESS]))
    assert not sweep._needs_sharpness(folder("c", "diverged", [runfolder.MODEL]))  # no minimum to measure
    assert not sweep._needs_sharpness(folder("d", "failed", [runfolder.MODEL]))
    assert not sweep._needs_sharpness(folder("e", None))  # unfinished
    assert runfolder.run_status(tmp_path / "e") is None and runfolder.run_status(tmp_path / "c") == "diverged"
    (tmp_path / "e" / runfolder.RESULT).write_text("{not json")
    assert runfolder.run_status(tmp_path / "e") == "unreadable"


def test_column_size_cuts_columns_into_consecutive_pieces():
    g = make_grid(bs=(32,), lrs=PAPER_LR[:7], seeds=(0,))
    units = gridlib.work_units(g.runs(), vectorize=True, column_size=3)
    assert [u.lrs for u in units] == [PAPER_LR[0:3], PAPER_LR[3:6], PAPER_LR[6:7]]
    assert len({u.label for u in units}) == 3  # one log file each


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
