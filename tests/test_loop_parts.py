"""The named parts of the training loop, each alone: building members, the step functions, one epoch, and
closing an epoch (records, divergence, checkpoints, early stopping)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.data.loaders import load_data
from lrbs_tf.data.pipelines import Pipelines
from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.runs.config import settings
from lrbs_tf.training import loop, members as mem, steps
from tests.helpers import small_config


@pytest.fixture(scope="module")
def data():
    return load_data("mnist1d")


def _members(tmp_path, data, lrs, **kw):
    cfgs = [small_config(tmp_path, lr=lr, **kw).resolved() for lr in lrs]
    provenance = lambda: {"versions": {}, "git_commit": None, "created": "now", "command": "test"}  # noqa: E731
    return mem.build_members(tf.distribute.get_strategy(), data, cfgs, [settings(c) for c in cfgs], provenance,
                             [c.run_dir for c in cfgs])


def test_build_members_share_the_initial_weights_and_write_config(tmp_path, data):
    a, b = _members(tmp_path, data, [0.05, 0.2])
    for va, vb in zip(a.model.trainable_variables, b.model.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    config = runfolder.read_config(a.run_dir)
    assert (config.lr, config.raw["column_lrs"], config.raw["steps_per_epoch"]) == (0.05, [0.05, 0.2], 62)
    assert config.num_params == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10 == config.raw["num_params"]
    assert int(a.epochs_done.numpy()) == 0 and a.rows == []


def test_build_members_resumes_from_the_checkpoint_and_trims_later_metric_lines(tmp_path, data):
    (member,) = _members(tmp_path, data, [0.1])
    member.model.trainable_variables[0].assign(member.model.trainable_variables[0] + 1.0)
    for epoch in (1, 2):
        runfolder.append_jsonl(member.run_dir / runfolder.METRICS, {"epoch": epoch, "train_loss": 1.0 / epoch})
    mem.save_checkpoint(member, 1)  # epoch 2's line has no checkpoint: a kill came in between
    runfolder.atomic_write_json(member.run_dir / runfolder.RESULT, {"status": "failed", "epochs": 1})
    saved = member.model.trainable_variables[0].numpy()
    (resumed,) = _members(tmp_path, data, [0.1])
    assert int(resumed.epochs_done.numpy()) == 1
    np.testing.assert_array_equal(resumed.model.trainable_variables[0].numpy(), saved)
    assert resumed.rows == [{"epoch": 1, "train_loss": 1.0}] == runfolder.read_metrics(resumed.run_dir)
    assert not (resumed.run_dir / runfolder.RESULT).exists()  # a failed run being retried is unfinished again


def test_train_chunk_stops_each_member_at_its_first_non_finite_loss():
    """Members' sums include the batch whose loss is non-finite, then stop; the chunk ends when none is alive.
    Gradient norms are summed over the same steps, less those whose norm is not finite (float16 overflow)."""
    losses = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [1.0, 5.0, np.inf], [1.0, 5.0, 7.0]])
    hits = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]], np.int64)
    norms = np.array([[0.5, 1.0, 2.0], [np.inf, 3.0, 4.0], [0.5, 1.0, 8.0], [0.5, 1.0, 16.0]])
    batches = tf.data.Dataset.from_tensor_slices((losses, hits, norms))
    chunk = tf.function(lambda it, n, alive, *sums: steps.train_chunk(
        tf.distribute.get_strategy(), lambda l, h, g: (l, h, g), it, n, alive, *sums))
    loss_sum, correct, counted, grad_sq, normed, alive = chunk(iter(batches), tf.constant(4), tf.ones([3], tf.bool))
    assert counted.numpy().tolist() == [4, 2, 3]
    assert correct.numpy().tolist() == [4, 4, 9]
    assert loss_sum.numpy()[0] == 4.0 and math.isnan(loss_sum.numpy()[1]) and math.isinf(loss_sum.numpy()[2])
    assert grad_sq.numpy().tolist() == [1.5, 4.0, 14.0] and normed.numpy().tolist() == [3, 2, 3]
    assert alive.numpy().tolist() == [True, False, False]
    # Sums passed in are continued: two calls of two steps give the sums of one call of four.
    it = iter(batches)
    first = chunk(it, tf.constant(2), tf.ones([3], tf.bool))
    second = chunk(it, tf.constant(2), first[-1], *first[:-1])
    assert [t.numpy().tolist() for t in second[2:5]] == [[4, 2, 3], [1.5, 4.0, 14.0], [3, 2, 3]]
    dead = np.array([[np.nan, np.nan]] * 3)
    batches = tf.data.Dataset.from_tensor_slices((dead, np.ones((3, 2), np.int64), np.ones((3, 2))))
    _, _, counted, _, _, alive = chunk(iter(batches), tf.constant(3), tf.ones([2], tf.bool))
    assert counted.numpy().tolist() == [1, 1] and not alive.numpy().any()  # stopped after one batch, not three


def test_forward_backward_adds_coupled_weight_decay_split_over_replicas(tmp_path, data):
    (member,) = _members(tmp_path, data, [0.1], weight_decay=0.5, batch_size=8)
    x, y = data.normalize(data.x_train[:4]), data.y_train[:4].astype(np.int32)
    grads, loss_grads, loss_sum, correct = steps.forward_backward(member, 2, tf.constant(x), tf.constant(y))
    tvars = member.model.trainable_variables
    with tf.GradientTape() as tape:
        logits = member.model(x, training=True)
        per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        loss = tf.reduce_sum(per_example) / 8  # this replica's 4 examples of a global batch of 8
    plain = tape.gradient(loss, tvars)
    for g, lg, p, v in zip(grads, loss_grads, plain, tvars):
        np.testing.assert_allclose(g.numpy(), p.numpy() + 0.25 * v.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(lg.numpy(), p.numpy(), rtol=1e-5, atol=1e-7)  # the decay left out
    assert loss_sum.dtype == tf.float64 and float(loss_sum) == pytest.approx(float(tf.reduce_sum(per_example)),
                                                                              rel=1e-6)
    assert int(correct) == int(np.sum(np.argmax(logits.numpy(), -1) == y))


@pytest.mark.parametrize("engine", ["graph", "stacked"])
def test_run_epoch_trains_evaluates_and_leaves_the_state_in_the_member_models(tmp_path, data, engine):
    members = _members(tmp_path, data, [0.05, 0.1], column_engine=engine)
    before = [m.model.trainable_variables[0].numpy().copy() for m in members]
    strategy = tf.distribute.get_strategy()
    functions = steps.make_step_functions(strategy, members)
    assert isinstance(functions.engine, steps.GraphEngine) == (engine == "graph")
    pipes = Pipelines(data, augment=False)
    stats = loop.run_epoch(strategy, pipes, functions, members[0].cfg, 0, 2, chunk=10, show_progress=False)
    assert stats.seen.tolist() == [62 * 64, 62 * 64]
    assert np.all(np.isfinite(stats.grad_norm_sq) & (stats.grad_norm_sq > 0))
    assert np.all((0 <= stats.test_accuracy) & (stats.test_accuracy <= 1)) and np.all(stats.test_loss > 0)
    assert 0 < stats.train_seconds <= stats.seconds
    for m, w0 in zip(members, before):  # the stacked engine copied its weights back (unstack)
        assert np.max(np.abs(m.model.trainable_variables[0].numpy() - w0)) > 1e-4
    # Evaluating the member models now gives the epoch's recorded test numbers.
    test_loss, test_accuracy = loop.evaluate(strategy, pipes, steps.make_step_functions(strategy, members).eval_step)
    np.testing.assert_allclose(test_loss, stats.test_loss, rtol=1e-6)
    np.testing.assert_array_equal(test_accuracy, stats.test_accuracy)


def test_close_epoch_records_all_checkpoints_early_stoppers_and_lets_diverged_and_stoppers_leave(tmp_path, data):
    members = _members(tmp_path, data, [0.01, 0.02, 0.03], stop_at_train_loss=0.5)
    stats = loop.EpochStats(loss_sum=np.array([2.0 * 64, np.nan, 0.25 * 64]), correct=np.array([10, 0, 60]),
                            seen=np.array([64, 64, 64]), test_loss=np.array([2.1, 9.0, 0.3]),
                            test_accuracy=np.array([0.2, 0.1, 0.9]), seconds=1.5, train_seconds=1.0)
    leaving = loop.close_epoch(members, 1, stats, labelled=True, checkpoint=False)  # no checkpoint due
    going_on, diverged, stopped = members
    assert leaving == [diverged, stopped]
    assert (diverged.status, diverged.diverged_epoch) == (runfolder.STATUS_DIVERGED, 1)
    assert (stopped.status, stopped.stopped_early) == (runfolder.STATUS_DONE, True) and going_on.status is None
    rows = [runfolder.read_metrics(m.run_dir) for m in members]
    assert rows[0][0]["train_loss"] == 2.0 and rows[0][0]["train_accuracy"] == 10 / 64
    assert rows[1][0]["train_loss"] is None and rows[1][0]["test_accuracy"] is None  # not a measurement
    # A stopper is saved although no checkpoint was due (its final state); a diverged run never is.
    assert [[e for e, _ in checkpoints.candidates(m.run_dir / runfolder.CKPT_DIR)] for m in members] == [[], [], [1]]
    assert [int(m.epochs_done.numpy()) for m in members] == [0, 0, 1]
    loop.close_epoch([going_on], 2, loop.EpochStats(loss_sum=np.array([64.0]), correct=np.array([30]),
                     seen=np.array([64]), test_loss=np.array([1.0]), test_accuracy=np.array([0.5]), seconds=1.0,
                     train_seconds=0.5), labelled=False, checkpoint=True)
    assert [e for e, _ in checkpoints.candidates(going_on.run_dir / runfolder.CKPT_DIR)] == [2]
    assert [r["epoch"] for r in runfolder.read_metrics(going_on.run_dir)] == [1, 2]


def test_finish_writes_the_model_then_the_result(tmp_path, data):
    (member,) = _members(tmp_path, data, [0.1])
    member.rows = [{"epoch": 1, "test_accuracy": 0.4, "train_loss": 1.0, "train_accuracy": 0.5},
                   {"epoch": 2, "test_accuracy": 0.4, "train_loss": 0.5, "train_accuracy": 0.7}]
    member.status = runfolder.STATUS_DONE
    mem.finish(member)
    result = runfolder.read_result(member.run_dir)
    assert (result.status, result.epochs, result.best_epoch, result.final_train_loss) == ("done", 2, 1, 0.5)
    assert (member.run_dir / runfolder.MODEL).stat().st_mtime_ns <= \
        (member.run_dir / runfolder.RESULT).stat().st_mtime_ns
