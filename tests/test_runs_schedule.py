"""--schedule (lrbs_tf/runs/schedule.py and its use in runs/config.py and sweep/grid.py): the syntax, one
canonical text, file-name-safe run names, each epoch's learning rate and batch size, the step counts a
batch-size schedule changes, and refusals that name the problem."""

from __future__ import annotations

import pytest

from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import schedule
from lrbs_tf.runs.config import DEFAULTS, RuntimeFacts, TrainConfig, identity_differences, run_name, run_steps, validate
from lrbs_tf.sweep import grid as gridlib
from tests.helpers import run_bin

pytestmark = pytest.mark.fast  # no TensorFlow

SMITH = ("", "lr*0.2@10:20", "bs*5@10:20", "lr*0.2@10+bs*5@20")  # the rebuttal study's four schedules


def test_the_default_is_constant_and_changes_nothing():
    assert DEFAULTS["schedule"] == ""
    cfg = TrainConfig()
    assert [cfg.epoch_lr(e) for e in range(3)] == [cfg.lr] * 3 and cfg.at_epoch(5) is cfg
    assert cfg.epoch_step_counts(4000) == [4000 // 64] * cfg.epochs
    assert cfg.resolved().run_name == "mlp-mnist1d-bs64-lr0.05-s0"
    assert TrainConfig(schedule="none").schedule == "" and TrainConfig(schedule=None).schedule == ""
    # an older config.json has no schedule key: it reads as the default, the same identity
    assert identity_differences({k: v for k, v in DEFAULTS.items() if k != "schedule"}, TrainConfig()) == []


@pytest.mark.parametrize("text, canonical", [
    ("lr*0.2@10:20", "lr*0.2@10:20"),
    ("  bs*5.0@10:20 ", "bs*5@10:20"),
    ("bs*5@20+lr*.2@10", "lr*0.2@10+bs*5@20"),   # the learning-rate term first
    ("lr*1e-1@3", "lr*0.1@3"),
])
def test_one_canonical_text_per_schedule(text, canonical):
    assert schedule.canonical(text) == canonical == TrainConfig(schedule=text).schedule
    assert "," not in canonical  # sweepable as a comma list


def test_run_names_hold_the_schedule_without_special_characters():
    names = [run_name("mlp", "mnist1d", 16, 0.1, 0, schedule=s) for s in SMITH]
    assert names == ["mlp-mnist1d-bs16-lr0.1-s0", "mlp-mnist1d-bs16-lr0.1-s0-lrx0.2at10_20",
                     "mlp-mnist1d-bs16-lr0.1-s0-bsx5at10_20", "mlp-mnist1d-bs16-lr0.1-s0-lrx0.2at10+bsx5at20"]
    assert not any(c in n for n in names for c in "*@:/, ")
    assert run_name("mlp", "mnist1d", 16, 0.1, 0, 0.9, 5e-4, 100, schedule="bs*5@10") == \
        "mlp-mnist1d-bs16-lr0.1-s0-m0.9-wd0.0005-steps100-bsx5at10"
    assert TrainConfig(schedule="bs*5.0@10").resolved().run_name.endswith("-bsx5at10")


def test_each_epochs_learning_rate_and_batch_size():
    """@E: after E epochs, i.e. from 0-based epoch E on; each listed epoch applies the factor once more."""
    cfg = TrainConfig(batch_size=16, lr=0.1, epochs=30, schedule="lr*0.2@10+bs*5@20")
    assert [cfg.epoch_batch_size(e) for e in (0, 9, 10, 19, 20, 29)] == [16, 16, 16, 16, 80, 80]
    assert [cfg.epoch_lr(e) for e in (9, 10, 20)] == [0.1, pytest.approx(0.02), pytest.approx(0.02)]
    both = TrainConfig(batch_size=16, lr=0.1, epochs=30, schedule="bs*5@10:20")
    assert [both.epoch_batch_size(e) for e in (9, 10, 20)] == [16, 80, 400]
    assert both.at_epoch(25).batch_size == 400 and both.at_epoch(25).lr == 0.1 and both.at_epoch(25).schedule


def test_the_ratio_trajectory_of_the_three_schedules_is_equal():
    trajectories = []
    for text in SMITH[1:]:
        cfg = TrainConfig(batch_size=16, lr=0.1, epochs=30, schedule=text)
        trajectories.append([round(cfg.epoch_batch_size(e) / cfg.epoch_lr(e), 6) for e in range(30)])
    assert trajectories[0] == trajectories[1] == trajectories[2]
    assert sorted(set(trajectories[0])) == [160.0, 800.0, 4000.0]


def test_step_counts_and_the_sweeps_cost_know_the_schedule():
    """MNIST-1D's 4000 examples at batch 16: 250 steps an epoch; 80: 50; 400: 10."""
    cfg = TrainConfig(batch_size=16, epochs=30, schedule="bs*5@10:20")
    counts = cfg.epoch_step_counts(4000)
    assert counts == [250] * 10 + [50] * 10 + [10] * 10
    assert run_steps(30, None, 4000, 16, "bs*5@10:20") == 3100
    assert run_steps(30, None, 4000, 16, "lr*0.2@10:20") == run_steps(30, None, 4000, 16) == 7500
    assert run_steps(30, None, 4000, 16, "lr*0.2@10+bs*5@20") == 5500
    assert run_steps(30, 2600, 4000, 16, "bs*5@10:20") == 2600
    # a step budget ends in the epoch that reaches it: 2500 + 50 + 50 = 2600 is the end of epoch 12
    capped = TrainConfig(batch_size=16, epochs=30, max_steps=2600, schedule="bs*5@10:20")
    assert capped.budget_epochs(counts) == 12
    assert [capped.epoch_steps(e, counts) for e in (9, 10, 11, 12)] == [250, 50, 50, 0]
    assert TrainConfig(batch_size=16, epochs=30, max_steps=2580, schedule="bs*5@10:20").epoch_steps(11, counts) == 30
    grid = gridlib.Grid((16,), (0.1,), (0, 1), TrainConfig(arch="mlp", dataset="mnist1d", epochs=30,
                                                             schedule="bs*5@10:20"))
    assert [grid.steps(r) for r in grid.runs()] == [3100, 3100]
    assert [r.name for r in grid.runs()] == [f"mlp-mnist1d-bs16-lr0.1-s{s}-bsx5at10_20" for s in (0, 1)]


@pytest.mark.parametrize("kw, message", [
    (dict(schedule="lr/5@10"), "schedule='lr/5@10': cannot read 'lr/5@10'"),
    (dict(schedule="mom*0.5@3"), "schedule='mom*0.5@3': cannot read"),
    (dict(schedule="lr*x@3"), "schedule='lr*x@3': factor 'x' of lr is not a number"),
    (dict(schedule="lr*0@3"), "schedule='lr*0@3': the lr factor must be a finite number > 0 other than 1"),
    (dict(schedule="lr*1@3"), "schedule='lr*1@3': the lr factor must be"),
    (dict(schedule="lr*inf@3"), "schedule='lr*inf@3': the lr factor must be"),
    (dict(schedule="lr*0.5@3:2"), "schedule='lr*0.5@3:2': the epochs of lr (3:2) must be >= 1, ascending"),
    (dict(schedule="lr*0.5@0"), "schedule='lr*0.5@0': the epochs of lr (0) must be >= 1"),
    (dict(schedule="lr*0.5@2+lr*0.5@3"), "schedule='lr*0.5@2+lr*0.5@3' has two lr terms"),
    (dict(schedule="lr*0.5@4", epochs=4), "schedule='lr*0.5@4': lr changes after epoch 4, but the run trains 4"),
    (dict(schedule="bs*1.5@1", batch_size=25), "schedule='bs*1.5@1': batch_size=25 times 1.5^1 is 37.5, not a whole"),
    (dict(schedule="bs*10@1:2", batch_size=64), "schedule='bs*10@1:2' reaches batch size 6400, larger than the "
                                                "training set (4000"),
    (dict(schedule="bs*5@1", max_steps=75, epochs=2), "max_steps=75 is more than epochs=2 allow at batch_size=64 "
                                                      "(2 x its schedule's steps = 74)"),
])
def test_bad_schedules_are_refused_naming_the_problem(kw, message):
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(**{"epochs": 30, **kw}), RuntimeFacts(num_train=4000))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_scheduled_batch_sizes_must_split_over_the_replicas():
    with pytest.raises(UsageError, match="reaches batch size 20, not divisible by 8 replicas"):
        validate(TrainConfig(batch_size=16, epochs=5, schedule="bs*1.25@1"), RuntimeFacts(num_train=4000, replicas=8))
    validate(TrainConfig(batch_size=16, epochs=5, schedule="bs*1.5@1"), RuntimeFacts(num_train=4000, replicas=8))


def test_bin_train_and_bin_sweep_refuse_a_bad_schedule_on_one_line(tmp_path):
    for binary, args, message in (
            ("train", ["--schedule=lr*0.2@300"], "train: error: schedule='lr*0.2@300': lr changes after epoch 300, "
                                                 "but the run trains 200 epochs"),
            ("sweep", ["--schedule=bs*5@1:2", "--batch_sizes=400", "--lrs=0.1", "--epochs=3"],
             "sweep: error: schedule='bs*5@1:2' reaches batch size 10000, larger than the training set")):
        proc = run_bin(binary, *args, f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message)
        assert not (tmp_path / "w").exists()
