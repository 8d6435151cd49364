"""Vectorised learning-rate columns: each member is the same run as training its learning rate alone."""

import numpy as np
import pytest

from lrbs_tf.cli.app import UsageError
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run, run_column
from tests.helpers import small_config as cfg_for

KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm_sq", "effective_lr",
        "grad_norm_sq")


def assert_same_runs(column_dir, alone_dir, name, rtol=1e-6, flips=0):
    """Metrics equal to `rtol`; with `flips`, an accuracy may also differ by that many examples' worth
    (1/num_test or 1/num_train each): rounding-level differences in a logit can move an example that sits
    on a decision boundary."""
    col = runfolder.read_metrics(column_dir / name)
    alone = runfolder.read_metrics(alone_dir / name)
    config = runfolder.read_config(alone_dir / name).raw
    assert len(col) == len(alone) > 0
    for a, b in zip(col, alone):
        for key in KEYS:
            if b[key] is None:
                assert a[key] is None, key
                continue
            slack = 0.0
            if flips and key.endswith("accuracy"):
                slack = flips / config["num_test" if key.startswith("test") else "num_train"]
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=max(1e-12, slack)), (name, a["epoch"], key)
    ra, rb = runfolder.read_result(column_dir / name), runfolder.read_result(alone_dir / name)
    assert ra.status == rb.status and ra.diverged_epoch == rb.diverged_epoch


@pytest.mark.parametrize("engine", ["graph", "stacked"])
def test_column_members_equal_separate_runs_and_a_diverged_member_stops_alone(tmp_path, engine):
    lrs = [0.05, 0.2, 1e5]
    results = run_column(cfg_for(tmp_path / "col", epochs=3, column_engine=engine), lrs)
    assert [r["status"] for r in results] == ["done", "done", "diverged"]
    assert results[2]["diverged_epoch"] == 1 and results[0]["epochs"] == results[1]["epochs"] == 3
    for lr in lrs:
        run(cfg_for(tmp_path / "alone", epochs=3, lr=lr))
        assert_same_runs(tmp_path / "col", tmp_path / "alone", f"mlp-mnist1d-bs64-lr{lr:g}-s0")
    config = runfolder.read_config(tmp_path / "col" / "mlp-mnist1d-bs64-lr0.2-s0").raw
    assert config["lr"] == 0.2 and config["column_lrs"] == lrs


def test_batch_norm_members_keep_their_own_statistics(tmp_path):
    import keras

    lrs = [0.02, 0.3]
    run_column(cfg_for(tmp_path / "col", mlp_batch_norm=True), lrs)
    moving = []
    for lr in lrs:
        run(cfg_for(tmp_path / "alone", mlp_batch_norm=True, lr=lr))
        name = f"mlp-mnist1d-bs64-lr{lr:g}-s0"
        assert_same_runs(tmp_path / "col", tmp_path / "alone", name)
        col = keras.models.load_model(tmp_path / "col" / name / runfolder.MODEL, compile=False)
        alone = keras.models.load_model(tmp_path / "alone" / name / runfolder.MODEL, compile=False)
        stats = [v.numpy() for v in col.non_trainable_variables]
        for a, b in zip(stats, [v.numpy() for v in alone.non_trainable_variables]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moving.append(stats[0])
    assert not np.allclose(moving[0], moving[1])  # different learning rates, different statistics


def test_conv_bn_column_on_images(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 96)
    x = (rng.normal(size=(96, 12, 12, 3)) * 30 + 100 + y[:, None, None, None] * 20).clip(0, 255).astype(np.uint8)
    path = tmp_path / "imgs.npz"
    np.savez(path, x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    kw = dict(arch="resnet20", dataset="npz", data_path=str(path), batch_size=16, epochs=1)
    run_column(cfg_for(tmp_path / "col", **kw), [0.01, 0.1])
    for lr in (0.01, 0.1):
        run(cfg_for(tmp_path / "alone", lr=lr, **kw))
        assert_same_runs(tmp_path / "col", tmp_path / "alone", f"resnet20-npz-bs16-lr{lr:g}-s0", rtol=1e-5)


def test_column_under_mirrored_strategy(tmp_path):
    run_column(cfg_for(tmp_path / "col", cpu_devices=2), [0.05, 0.2])
    for lr in (0.05, 0.2):
        run(cfg_for(tmp_path / "alone", cpu_devices=2, lr=lr))
        assert_same_runs(tmp_path / "col", tmp_path / "alone", f"mlp-mnist1d-bs64-lr{lr:g}-s0")


def test_finished_members_are_skipped_and_early_stoppers_leave_alone(tmp_path, capsys):
    run(cfg_for(tmp_path, lr=0.05))
    capsys.readouterr()
    results = run_column(cfg_for(tmp_path, epochs=2), [0.05, 0.1])
    assert "mlp-mnist1d-bs64-lr0.05-s0 already finished" in capsys.readouterr().out
    assert [r["status"] for r in results] == ["done", "done"]
    stop = run_column(cfg_for(tmp_path / "stop", epochs=6, stop_at_train_loss=2.0), [0.02, 0.4])
    assert stop[1].get("stopped_early") and stop[1]["epochs"] < 6
    assert stop[0]["epochs"] == 6 and not stop[0].get("stopped_early")


@pytest.mark.parametrize("kw,lrs,message", [
    ({}, [0.1, 0.1], "repeats a learning rate"),
    ({"run_name": "x"}, [0.1, 0.2], "names one folder but lr lists 2"),
    ({}, [0.1, -0.2], "lr=-0.2 must be > 0"),
])
def test_bad_columns_write_nothing(tmp_path, kw, lrs, message):
    with pytest.raises(UsageError, match=message):
        run_column(cfg_for(tmp_path, **kw), lrs)
    assert not any(tmp_path.iterdir())


def test_one_mismatched_member_refuses_the_whole_column(tmp_path):
    run(cfg_for(tmp_path, lr=0.2, epochs=1))
    with pytest.raises(UsageError, match="epochs=1 in config.json but epochs=2 now"):
        run_column(cfg_for(tmp_path), [0.1, 0.2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp-mnist1d-bs64-lr0.2-s0"]


def test_stacked_and_graph_engines_equal_separate_runs_with_momentum_and_weight_decay(tmp_path):
    from lrbs_tf.models.builders import build_model
    from lrbs_tf.training import stacked

    assert stacked.supports(build_model("mlp", 10, (40,), mlp_batch_norm=True))
    assert stacked.supports(build_model("mlp", 10, (8, 8, 1)))
    assert not stacked.supports(build_model("alexnet", 10, (32, 32, 3)))
    kw = dict(mlp_batch_norm=True, momentum=0.9, weight_decay=5e-4)
    # Learning rates where training is not chaotic: at lr 0.05 with momentum 0.9 and BN, float rounding
    # (1e-7 per step, see test_stacked_steps_equal_keras_steps) grew to 1e-4 within two epochs and flipped a
    # few argmaxes under the stacked engine's batched matmuls (the graph engine, which runs each member's
    # own ops, stayed within 1e-6). The strict check of the stacked semantics is the step-by-step test below.
    lrs = [0.005, 0.01]
    for engine in ("stacked", "graph"):
        run_column(cfg_for(tmp_path / engine, column_engine=engine, **kw), lrs)
    for lr in lrs:
        run(cfg_for(tmp_path / "alone", lr=lr, **kw))
        name = f"mlp-mnist1d-bs64-lr{lr:g}-s0-m0.9-wd0.0005"
        assert_same_runs(tmp_path / "stacked", tmp_path / "alone", name, rtol=1e-5)
        assert_same_runs(tmp_path / "graph", tmp_path / "alone", name)


def test_stacked_steps_equal_keras_steps():
    """The stacked engine's update is Keras SGD's: after 60 steps on the same batches, each member's weights
    and BN statistics equal a plain Keras model trained alone (momentum, weight decay, BN all on)."""
    import keras
    import tensorflow as tf

    from lrbs_tf.data.loaders import load_data
    from lrbs_tf.models.builders import build_model
    from lrbs_tf.training.stacked import StackedColumn

    def make(lr):
        keras.utils.set_random_seed(0)
        model = build_model("mlp", 10, (40,), mlp_depth=2, mlp_width=32, mlp_batch_norm=True)
        opt = keras.optimizers.SGD(lr, momentum=0.9)
        opt.build(model.trainable_variables)
        return model, opt

    lrs = [0.01, 0.05]
    members = [make(lr) for lr in lrs]
    engine = StackedColumn([m for m, _ in members], [o for _, o in members], lrs, 0.9, 5e-4, 64)
    refs = [make(lr) for lr in lrs]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def keras_step(model, opt, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(y, model(x, training=True))) / 64
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients([(g + 5e-4 * v, v) for g, v in zip(grads, model.trainable_variables)])

    steps = [tf.function(lambda x, y, m=m, o=o: keras_step(m, o, x, y)) for m, o in refs]
    engine_step = tf.function(engine.train_step)
    data = load_data("mnist1d")
    x, y = data.normalize(data.x_train), data.y_train
    rng = np.random.default_rng(0)
    for _ in range(60):
        idx = rng.choice(len(y), 64, replace=False)
        xb, yb = tf.constant(x[idx]), tf.constant(y[idx])
        engine_step(xb, yb)
        for step in steps:
            step(xb, yb)
    engine.unstack()
    for (model, opt), (ref, ref_opt) in zip(members, refs):
        for a, b in zip(model.variables + opt.momentums, ref.variables + ref_opt.momentums):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
        assert int(opt.iterations.numpy()) == int(ref_opt.iterations.numpy()) == 60


def test_stacked_engine_refuses_what_it_cannot_stack(tmp_path):
    with pytest.raises(UsageError, match="column_engine=stacked needs an mlp"):
        run_column(cfg_for(tmp_path, column_engine="stacked", cpu_devices=2), [0.1, 0.2])


def test_interrupted_stacked_column_resumes_to_the_same_metrics(tmp_path):
    """SIGTERM (a cluster's preemption) mid-column, then the same call again: identical metrics, and the
    resumed momentum state (copied back from the stacked engine into each member's checkpoint) is right.
    The stacked engine is asked for explicitly ('auto' picks the graph engine), so a wrong stacked.unstack
    (the state checkpointed) makes the resumed members differ from the uninterrupted ones."""
    import os
    import signal
    import threading

    kw = dict(batch_size=16, epochs=4, momentum=0.9, column_engine="stacked")
    lrs = [0.01, 0.03, 0.05]
    run_column(cfg_for(tmp_path / "full", **kw), lrs)
    cfg = cfg_for(tmp_path / "cut", **kw)
    first = tmp_path / "cut" / "mlp-mnist1d-bs16-lr0.01-s0-m0.9"

    def preempt():
        while len(runfolder.read_metrics(first)) < 2:
            threading.Event().wait(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_column(cfg, lrs)
    assert runfolder.read_result(first) is None
    run_column(cfg, lrs)
    for lr in lrs:
        name = f"mlp-mnist1d-bs16-lr{lr:g}-s0-m0.9"
        a = runfolder.read_metrics(tmp_path / "cut" / name)
        b = runfolder.read_metrics(tmp_path / "full" / name)
        assert [{k: r[k] for k in KEYS} for r in a] == [{k: r[k] for k in KEYS} for r in b]


def test_xla_compiled_column_equals_the_plain_one(tmp_path):
    """--jit_compile fuses the whole step (forward, backward, update) on one device; same runs to rounding."""
    lrs = [0.05, 0.1]
    run_column(cfg_for(tmp_path / "plain", column_engine="graph"), lrs)
    run_column(cfg_for(tmp_path / "xla", column_engine="graph", jit_compile=True), lrs)
    for lr in lrs:
        # XLA fuses the step differently: on an AVX-512 CPU its rounding drifts to ~3e-4 relative in two epochs
        # and one test example of 1,000 flips.
        assert_same_runs(tmp_path / "xla", tmp_path / "plain", f"mlp-mnist1d-bs64-lr{lr:g}-s0", rtol=1e-3, flips=2)
