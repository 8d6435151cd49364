"""Schedules in the training loop (lrbs_tf/training/scheduling.py): a learning-rate and batch-size change
equals PyTorch's SGD written out in numpy, resuming before, at and after a change gives the uninterrupted
metrics, and a learning-rate column shares the schedule on either engine."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

from lrbs_tf.data.loaders import load_data
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run, run_column
from tests.helpers import small_config, without_seconds, write_blobs
from tests.test_column import assert_same_runs


def _numpy_sgd(weights, batches, lrs, momentum, keras_velocity=False):
    """PyTorch's SGD (b = m b + g; w -= lr b) on a 1-hidden-layer ReLU MLP with mean softmax cross-entropy
    in float64, with a learning rate per batch (`lrs`). keras_velocity: Keras' form instead (v = m v - lr g;
    w += v), which differs from PyTorch's once the learning rate changes."""
    w = [np.asarray(v, np.float64) for v in weights]
    buf = [np.zeros_like(v) for v in w]
    for (x, y), lr in zip(batches, lrs):
        x = np.asarray(x, np.float64)
        h = np.maximum(x @ w[0] + w[1], 0.0)
        z = h @ w[2] + w[3]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - np.eye(p.shape[1])[y]) / len(y)   # the mean over the batch in force
        dh = (dz @ w[2].T) * (h > 0)
        for i, g in enumerate([x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]):
            if keras_velocity:
                buf[i] = momentum * buf[i] - lr * g
                w[i] = w[i] + buf[i]
            else:
                buf[i] = momentum * buf[i] + g
                w[i] = w[i] - lr * buf[i]
    return w


def test_a_learning_rate_and_batch_size_change_follows_pytorchs_sgd(tmp_path):
    """Two epochs of 32 examples: batch 16 at lr 0.1, then (lr*0.5@1+bs*2@1) one batch of 32 at lr 0.05, with
    momentum 0.9. The trained weights equal PyTorch's SGD in numpy over the same batches (the loss averaged
    over the batch in force, the momentum buffer carried across the change), and the rows record each
    epoch's lr, batch size, steps and examples. Keras' own momentum form, without the loop's rescaling of
    its velocity at the change, would end elsewhere: the check can fail."""
    from lrbs_tf.data.pipelines import Pipelines
    from lrbs_tf.models.builders import build_model

    path = tmp_path / "blobs.npz"
    x, y = write_blobs(path, 5)
    cfg = small_config(tmp_path, dataset="npz", data_path=str(path), mlp_depth=1, mlp_width=8, batch_size=16,
                       lr=0.1, momentum=0.9, epochs=2, schedule="bs*2@1+lr*0.5@1")
    result = run(cfg)
    run_dir = cfg.resolved().run_dir
    assert run_dir.name == "mlp-npz-bs16-lr0.1-s0-m0.9-lrx0.5at1+bsx2at1"
    rows = runfolder.read_metrics(run_dir)
    assert [(r["epoch"], r["step"], r["examples_seen"], r["lr"], r["batch_size"]) for r in rows] == [
        (1, 2, 32, 0.1, 16), (2, 3, 64, 0.05, 32)]
    assert rows[1]["effective_lr"] == pytest.approx(0.05 / rows[1]["weight_norm_sq"])
    assert result["steps"] == 3 and runfolder.read_config(run_dir).raw["schedule"] == "lr*0.5@1+bs*2@1"
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    initial = [v.numpy() for v in build_model("mlp", 3, (6,), mlp_depth=1, mlp_width=8).trainable_variables]
    pipes = Pipelines(load_data("npz", data_path=str(path)), augment=False)
    batches = [(bx.numpy(), by.numpy()) for epoch, bs in ((0, 16), (1, 32)) for bx, by in pipes.train(bs, 0, epoch)]
    assert [len(b[1]) for b in batches] == [16, 16, 32]
    expected = _numpy_sgd(initial, batches, [0.1, 0.1, 0.05], 0.9)
    trained = [v.numpy() for v in keras.models.load_model(run_dir / runfolder.MODEL, compile=False).trainable_variables]
    for got, want in zip(trained, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    keras_form = _numpy_sgd(initial, batches, [0.1, 0.1, 0.05], 0.9, keras_velocity=True)
    assert max(np.max(np.abs(a - b)) for a, b in zip(keras_form, expected)) > 1e-4


SCHEDULE = "lr*0.5@1+bs*2@1"  # after epoch 1: half the learning rate, twice the batch (62 -> 31 steps an epoch)
LRS = [0.05, 0.1]
NAMES = [f"mlp-mnist1d-bs64-lr{lr:g}-s0-m0.9-lrx0.5at1+bsx2at1" for lr in LRS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A column of two learning rates with momentum, 3 epochs, every checkpoint kept."""
    root = tmp_path_factory.mktemp("reference")
    cfg = small_config(root, epochs=3, momentum=0.9, schedule=SCHEDULE, checkpoint_epochs=(1, 2))
    run_column(cfg, LRS)
    return root, cfg


def test_the_rows_record_each_epochs_setting(reference):
    root, _ = reference
    for lr, name in zip(LRS, NAMES):
        rows = runfolder.read_metrics(root / name)
        assert [r["step"] for r in rows] == [62, 93, 124]
        assert [r["examples_seen"] for r in rows] == [3968, 3968 + 31 * 128, 3968 + 62 * 128]
        assert [r["batch_size"] for r in rows] == [64, 128, 128]
        assert [r["lr"] for r in rows] == [lr, lr * 0.5, lr * 0.5]
        assert runfolder.read_result(root / name).raw["steps"] == 124


@pytest.mark.parametrize("saved", [1, 2])
def test_resuming_before_and_after_the_change_gives_the_same_metrics(reference, tmp_path, saved):
    """The column cut after epoch `saved`'s checkpoint (1: before the change, which the resumed run makes
    first, rescaling the restored momentum; 2: after it) and run again ends with the uninterrupted
    metrics, exactly."""
    root, cfg = reference
    for name in NAMES:
        shutil.copytree(root / name, tmp_path / name)
        for path in (tmp_path / name).glob(f"{runfolder.CKPT_DIR}/ckpt-*"):
            if int(path.name.split("-")[1].split(".")[0]) > saved:
                path.unlink()
        for lost in (runfolder.RESULT, runfolder.MODEL):
            (tmp_path / name / lost).unlink()
    run_column(small_config(tmp_path, epochs=3, momentum=0.9, schedule=SCHEDULE, checkpoint_epochs=(1, 2)), LRS)
    for name in NAMES:
        assert without_seconds(runfolder.read_metrics(tmp_path / name)) == \
            without_seconds(runfolder.read_metrics(root / name)), (name, saved)


def test_the_stacked_engine_shares_the_schedule(reference, tmp_path):
    """--column_engine=stacked (its learning rates and batch size rebuilt at the change) equals the graph
    engine's column to float tolerance."""
    root, _ = reference
    run_column(small_config(tmp_path, epochs=3, momentum=0.9, schedule=SCHEDULE, checkpoint_epochs=(1, 2),
                            column_engine="stacked"), LRS)
    for name in NAMES:
        assert_same_runs(tmp_path, root, name, rtol=1e-5, flips=2)
