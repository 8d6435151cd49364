"""lrbs_tf.sweep.config: bin/sweep's command line into a grid, --grid axes over any identity setting.

No subprocess and no TensorFlow: flags are parsed with bin/sweep's own FlagValues (lrbs_tf.cli.flags).
"""

from __future__ import annotations

import itertools

import pytest

from lrbs_tf.cli.flags import binary_flags
from lrbs_tf.runs import config as runconfig
from lrbs_tf.sweep import config, grid as gridlib, scheduler
from tests.helpers import REPO

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

TINY = ["--mlp_depth=1", "--dataset=mnist1d", "--batch_sizes=64,128", "--lrs=0.05,0.1", "--workdir=unused"]


def sweep_config(*args: str) -> config.SweepConfig:
    fv = binary_flags("sweep").values
    fv(["sweep", *TINY, *args])
    return config.config_from_flags(fv, {})


def train_names(cfg: config.SweepConfig, unit: gridlib.WorkUnit) -> list[str]:
    """The run names bin/train gives the runs of `unit` from the argv the sweep starts it with."""
    fv = binary_flags("train").values
    fv(["train", *scheduler._train_argv(cfg, unit, 1)[2:]])  # the argv less the interpreter and bin/train
    return [runconfig.TrainConfig.from_flags(fv, lr=float(lr)).resolved().run_name for lr in fv.lr]


def test_grid_axes_multiply_the_grid_and_every_point_gets_its_own_run_name():
    cfg = sweep_config("--grid=weight_decay=0.01,0", "--grid=momentum=0,0.9", "--grid=mlp_width=32,16",
                       "--grid=mlp_batch_norm=true,false")
    g = cfg.grid
    assert g.axes == (("weight_decay", (0.0, 0.01)), ("momentum", (0.0, 0.9)), ("mlp_width", (16, 32)),
                      ("mlp_batch_norm", (False, True)))  # parsed as bin/train parses them, sorted
    runs = g.runs()
    assert g.size == len(runs) == 2 * 2 * 2 * 2 * 2 * 2
    expected = set(itertools.product((64, 128), (0.05, 0.1), (0.0, 0.01), (0.0, 0.9), (16, 32), (False, True)))
    assert {(r.batch_size, r.lr, *(v for _, v in r.point)) for r in runs} == expected
    assert len({r.name for r in runs}) == len(runs)
    # -m and -wd as before (absent at 0); width and batch norm, which names never carried, because asked.
    names = {r.name for r in runs}
    assert "mlp-mnist1d-bs64-lr0.05-s0-w16-nobn" in names
    assert "mlp-mnist1d-bs128-lr0.1-s0-m0.9-wd0.01-w32-bn" in names
    assert cfg.train.name_settings == ("mlp_width", "mlp_batch_norm")
    assert "--name_settings=mlp_width,mlp_batch_norm" in cfg.train_args
    # Each column's bin/train command names its folders exactly as the sweep expects.
    units = gridlib.work_units(runs, vectorize=True)
    assert len(units) == 2 * 16 and {len(u.runs) for u in units} == {2}
    for unit in units:
        assert train_names(cfg, unit) == [r.name for r in unit.runs]
    assert len({u.label for u in units}) == len(units)  # one log file each


def test_without_grid_axes_the_quick_study_is_the_same_grid_with_the_same_names_and_record():
    fv = binary_flags("sweep").values
    fv(["sweep", "--flagfile=" + str(REPO / "flags" / "quick.flags")])
    cfg = config.config_from_flags(fv, {})
    assert cfg.grid.axes == () and cfg.grid.size == 25 and cfg.train.name_settings == ()
    assert cfg.grid.runs()[0].name == "mlp-mnist1d-bs32-lr0.06-s0"  # the 128-wide MLP's name is unchanged
    assert not any("name_settings" in a for a in cfg.train_args)
    record = scheduler.grid_record(cfg)
    assert "grid_axes" not in record and record["mlp_width"] == 128 and record["weight_decay"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["--grid=weight_decay"], "write --grid=FLAG=V1,V2"),
    (["--grid=weight_decay="], "no values"),
    (["--grid=wieght_decay=0,1"], "bin/train has no setting 'wieght_decay'"),
    (["--grid=workdir=a,b"], "workdir is an execution setting"),
    (["--grid=eval_batch_size=100,200"], "eval_batch_size is an execution setting"),
    (["--grid=lr=0.1,0.2"], "given with --lrs"),
    (["--grid=weight_decay=0,0.01", "--weight_decay=0.02"], "both given"),
    (["--grid=momentum=0,0.9", "--grid=momentum=0.5"], "given twice"),
    (["--grid=momentum=0.5,0.50"], "repeats 0.5"),
    (["--grid=momentum=0.5,x"], "'x' is not a value of --momentum"),
    (["--grid=mixed_precision=off,fp8"], "'fp8' is not a value of --mixed_precision"),
    (["--grid=momentum=0,1.5"], r"momentum=1.5 must be in \[0, 1\) \(at --grid momentum=1.5\)"),
    (["--grid=arch=mlp,resnet20"], r"resnet20.*\(at --grid arch=resnet20\)"),
    (["--epochs=2", "--grid=max_steps=10,1000"], r"max_steps=1000 is more than epochs=2 allow .*\(at --grid max_steps=1000\)"),
    (["--grid=mlp_width=16,0"], r"mlp_width=0 must be > 0"),
    (["--dataset=npz", "--dataset_name=x", "--grid=data_path=a/x.npz,b/x.npz"], "cannot go into a run name"),
])
def test_bad_grid_axes_are_refused_before_anything_runs_naming_the_value(args, message):
    with pytest.raises(config.UsageError, match=message):
        sweep_config(*args)


def test_values_equal_to_ten_digits_would_share_a_folder_and_are_refused():
    with pytest.raises(config.UsageError, match="would share the run folder"):
        sweep_config("--grid=weight_decay=0.1,0.10000000001")


def test_shards_cover_a_multi_axis_grid_once_balanced_by_each_runs_own_steps():
    cfg = sweep_config("--grid=epochs=1,4", "--grid=weight_decay=0,0.01", "--seeds=0,1")
    g = cfg.grid
    # From the definition: epochs x floor(4000 / batch size), MNIST-1D's 4,000 training examples.
    steps = {r.name: dict(r.point)["epochs"] * (4000 // r.batch_size) for r in g.runs()}
    assert {r.name: g.steps(r) for r in g.runs()} == steps
    assert all("-ep1" in n or "-ep4" in n for n in steps)  # epochs is asked into the names
    for num_shards in (1, 3, 5):
        shards = gridlib.shards(g, num_shards)
        assert sorted(r.name for s in shards for r in s) == sorted(steps)
        loads = [sum(steps[r.name] for r in s) for s in shards]
        # LPT over pieces no larger than one run's column: within a column's steps of the mean.
        assert max(loads) - min(loads) <= max(steps.values()) * len(g.lrs)
        for shard in shards:  # a work unit is one column: one batch size, seed and point
            for unit in gridlib.work_units(shard, vectorize=True):
                assert len({(r.batch_size, r.seed, r.point) for r in unit.runs}) == 1


def test_a_grid_axis_grows_in_place_and_a_change_elsewhere_is_refused(tmp_path):
    def record(*args):
        return scheduler.grid_record(sweep_config(*args))

    # An older sweep with one weight decay (a setting recorded as one value) grows into a --grid axis.
    assert scheduler.check_sweep_record(tmp_path, record("--weight_decay=0.01")) == {}
    grown = record("--grid=weight_decay=0.005,0.01")
    assert grown["weight_decay"] == [0.005, 0.01] and grown["grid_axes"] == ["weight_decay"]
    assert scheduler.check_sweep_record(tmp_path, grown) == {"weight_decay": [0.005]}
    assert scheduler.check_sweep_record(tmp_path, record("--grid=weight_decay=0.01,0.005", "--lrs=0.1,0.05")) == {}
    assert scheduler.check_sweep_record(tmp_path, record("--grid=weight_decay=0.005,0.01,0.02")) == {
        "weight_decay": [0.02]}
    with pytest.raises(config.UsageError, match=r"leaves out \(weight_decay 0.005\).*--grid=weight_decay="
                                                r"0.005,0.01,0.02"):
        scheduler.check_sweep_record(tmp_path, record("--grid=weight_decay=0.01,0.02"))
    with pytest.raises(config.UsageError, match=r"leaves out \(weight_decay 0.005, 0.02\)"):
        scheduler.check_sweep_record(tmp_path, record("--weight_decay=0.01"))  # back to one value
    with pytest.raises(config.UsageError, match=r"another sweep \(momentum: 0.0 there, 0.9 now\)"):
        scheduler.check_sweep_record(tmp_path, record("--grid=weight_decay=0.005,0.01,0.02", "--momentum=0.9"))
    # A setting made an axis that keeps its recorded value grows too: the recorded runs are its first value's.
    assert scheduler.check_sweep_record(tmp_path, record("--grid=weight_decay=0.005,0.01,0.02",
                                                         "--grid=momentum=0,0.9")) == {"momentum": [0.9]}


def test_a_dry_list_whose_reader_leaves_early_ends_without_a_traceback():
    """`bin/sweep --dry_list | head`: the reader closes the pipe after one line; bin/sweep, blocked on a full
    pipe (a 2,500-run grid lists far more than a pipe holds), gets EPIPE on its next write and must end
    quietly with 141 (128 + SIGPIPE), not a BrokenPipeError traceback."""
    import subprocess
    import sys

    from lrbs_tf.cli.app import PIPE_CLOSED_EXIT

    argv = [sys.executable, str(REPO / "bin" / "sweep"), "--flagfile=" + str(REPO / "flags" / "quick.flags"),
            "--seeds=" + ",".join(map(str, range(100))), "--novectorize", "--workdir=/nonexistent/lrbs_dry",
            "--dry_list"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == PIPE_CLOSED_EXIT, err
    assert first.startswith(b"shard 0 of 1: 2500 of the grid's 2500 runs") and "Traceback" not in err and not err
