"""lrbs_tf.sweep.grid: grid expansion, shard partition by optimizer steps, the cluster environment.

No subprocess and no TensorFlow here: these run in a fraction of a second.
"""

from __future__ import annotations

import itertools

import pytest

from lrbs_tf.runs import config
from lrbs_tf.sweep import grid as gridlib

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

PAPER_BS = tuple(range(16, 321, 16))
PAPER_LR = tuple(round(0.01 * i, 2) for i in range(1, 21))


def make_grid(bs=(16, 32, 48), lrs=(0.1, 0.2), seeds=(0, 1), axes=(), **kw) -> gridlib.Grid:
    return gridlib.Grid(tuple(bs), tuple(lrs), tuple(seeds), config.TrainConfig(**kw), tuple(axes))


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
    assert g.column_order() == [(0, (), 16), (0, (), 80), (0, (), 32), (0, (), 64), (0, (), 48)]


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
    return make_grid(bs=PAPER_BS, lrs=PAPER_LR, seeds=(0,), arch="resnet110", dataset="cifar10", epochs=200, **kw)


def steps_of(runs) -> int:
    """Optimizer steps, computed here from the definition: 200 epochs x floor(50000 / batch size) per run."""
    return sum(200 * (50_000 // r.batch_size) for r in runs)


def test_paper_grid_shards_are_balanced_by_optimizer_steps_not_by_runs():
    g = paper_grid()
    assert g.steps(g.run(16, 0.1, 0)) == 200 * 3125 and g.steps(g.run(320, 0.1, 0)) == 200 * 156
    assert gridlib.shard_steps(g, g.runs()) == steps_of(g.runs())
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
    g = make_grid(epochs=3)  # MNIST-1D: 4,000 training examples
    assert g.steps(g.run(48, 0.1, 0)) == 3 * 83
    npz = make_grid(dataset="npz", data_path="x.npz", epochs=1)  # unknown size: ratios only
    assert npz.steps(npz.run(16, 0.1, 0)) == gridlib.NOMINAL_TRAIN // 16


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


def test_column_size_cuts_columns_into_consecutive_pieces():
    g = make_grid(bs=(32,), lrs=PAPER_LR[:7], seeds=(0,))
    units = gridlib.work_units(g.runs(), vectorize=True, column_size=3)
    assert [u.lrs for u in units] == [PAPER_LR[0:3], PAPER_LR[3:6], PAPER_LR[6:7]]
    assert len({u.label for u in units}) == 3  # one log file each


