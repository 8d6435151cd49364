"""bin/train's loop and run folder, in-process (fast) — the contract every other binary reads."""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from lrbs_tf.cli.app import UsageError
from lrbs_tf.data.loaders import load_data
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import TrainConfig
from lrbs_tf.training.run import run
from tests.helpers import small_config, without_seconds, write_blobs


def small(tmp_path, **kw) -> TrainConfig:
    return small_config(tmp_path, **{"mlp_width": 64, "epochs": 3, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("ref"))
    result = run(cfg)
    return cfg.resolved(), result


def test_run_folder_contract(reference):
    cfg, result = reference
    run_dir = cfg.run_dir
    assert run_dir.name == "mlp-mnist1d-bs64-lr0.1-s0"
    config = runfolder.read_config(run_dir).raw
    for key in ("arch", "dataset", "batch_size", "lr", "seed", "epochs", "momentum", "weight_decay"):
        assert config[key] == getattr(cfg, key)
    assert config["num_params"] == 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert config["versions"]["tensorflow"] and "git_commit" in config
    rows = runfolder.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {*runfolder.METRIC_KEYS, *runfolder.SCHEDULE_METRIC_KEYS} for r in rows)
    assert all(r["lr"] == 0.1 and r["batch_size"] == 64 for r in rows)  # the epoch's, a constant run's config
    for r in rows:
        assert r["effective_lr"] == pytest.approx(0.1 / r["weight_norm_sq"], rel=1e-12)
    assert set(runfolder.RESULT_KEYS) <= set(result)
    assert result["status"] == "done" and result["epochs"] == 3
    best = max(rows, key=lambda r: r["test_accuracy"])
    assert (result["best_test_accuracy"], result["best_epoch"]) == (best["test_accuracy"], best["epoch"])
    assert result["final_train_loss"] == rows[-1]["train_loss"]
    assert json.loads((run_dir / runfolder.RESULT).read_text()) == result
    assert list((run_dir / runfolder.CKPT_DIR).glob("ckpt-3.index"))
    assert list((run_dir / runfolder.TENSORBOARD_DIR).iterdir())


def test_training_loss_decreases(reference):
    cfg, _ = reference
    losses = [r["train_loss"] for r in runfolder.read_metrics(cfg.run_dir)]
    assert losses[0] < math.log(10) + 0.05  # starts near chance level
    assert losses[2] < losses[1] < losses[0]


def test_saved_model_reproduces_final_test_metrics(reference):
    cfg, result = reference
    model = keras.models.load_model(cfg.run_dir / runfolder.MODEL, compile=False)
    data = load_data("mnist1d")
    logits = model.predict(data.normalize(data.x_test), verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == data.y_test))
    assert accuracy == pytest.approx(result["final_test_accuracy"], abs=1e-12)


def test_reruns_are_identical_and_finished_runs_are_left_alone(reference, tmp_path, capsys):
    cfg, _ = reference
    again = small(tmp_path)
    run(again)
    assert without_seconds(runfolder.read_metrics(again.resolved().run_dir)) == \
        without_seconds(runfolder.read_metrics(cfg.run_dir))
    before = {p: p.stat().st_mtime_ns for p in cfg.run_dir.rglob("*")}
    capsys.readouterr()
    result = run(dataclasses.replace(cfg, run_name=None))
    assert "already finished" in capsys.readouterr().out and result["status"] == "done"
    assert {p: p.stat().st_mtime_ns for p in cfg.run_dir.rglob("*")} == before


def test_divergence_is_a_result(tmp_path):
    result = run(small(tmp_path, lr=1e6, epochs=4))
    assert result["status"] == "diverged" and result["diverged_epoch"] == 1 and result["epochs"] == 1
    rows = runfolder.read_metrics(small(tmp_path, lr=1e6).resolved().run_dir)
    assert len(rows) == 1 and rows[0]["train_loss"] is None  # non-finite values are JSON null


def test_stop_at_train_loss(tmp_path):
    result = run(small(tmp_path, epochs=50, lr=0.2, stop_at_train_loss=1.9))
    assert result["status"] == "done" and result.get("stopped_early")
    assert 1 < result["epochs"] < 50 and result["final_train_loss"] <= 1.9


def _numpy_sgd(weights, batches, lr, momentum, weight_decay):
    """PyTorch's SGD (b = m b + g + wd w; w -= lr b) on a 1-hidden-layer ReLU MLP with mean softmax
    cross-entropy, written out in float64: an independent reference for the training step.
    Returns the final weights, each batch's loss and each batch's squared L2 norm of the loss gradient
    (weight decay left out), both taken before the batch's update."""
    w = [np.asarray(v, np.float64) for v in weights]  # kernel1, bias1, kernel2, bias2 (Keras' order)
    buf = [np.zeros_like(v) for v in w]
    losses, norms = [], []
    for x, y in batches:
        x = np.asarray(x, np.float64)
        h = np.maximum(x @ w[0] + w[1], 0.0)
        z = h @ w[2] + w[3]
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        losses.append(float(np.mean(-np.log(p[np.arange(len(y)), y]))))
        dz = (p - np.eye(p.shape[1])[y]) / len(y)
        dh = (dz @ w[2].T) * (h > 0)
        grads = [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
        norms.append(float(sum(np.sum(g * g) for g in grads)))
        for i, g in enumerate(grads):
            buf[i] = momentum * buf[i] + g + weight_decay * w[i]
            w[i] = w[i] - lr * buf[i]
    return w, losses, norms


def test_momentum_and_weight_decay_follow_a_numpy_sgd_reference(tmp_path):
    """Two SGD steps with momentum 0.9 and weight decay 0.05 through bin/train's loop equal PyTorch's SGD
    written out in numpy, from the same initial weights on the same two batches; so do the epoch's training
    loss and grad_norm_sq (the mean over its two steps of the squared loss gradient norm, decay left out)."""
    from lrbs_tf.data.pipelines import Pipelines
    from lrbs_tf.models.builders import build_model

    path = tmp_path / "blobs.npz"
    x, y = write_blobs(path, 3)
    cfg = small(tmp_path, dataset="npz", data_path=str(path), mlp_depth=1, mlp_width=8, batch_size=16,
                lr=0.1, momentum=0.9, weight_decay=0.05, epochs=1)
    result = run(cfg)
    run_dir = cfg.resolved().run_dir
    assert run_dir.name == "mlp-npz-bs16-lr0.1-s0-m0.9-wd0.05"
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)  # as the loop does: the run's initial weights
    initial = [v.numpy() for v in build_model("mlp", 3, (6,), mlp_depth=1, mlp_width=8).trainable_variables]
    data = load_data("npz", data_path=str(path))
    batches = [(bx.numpy(), by.numpy()) for bx, by in Pipelines(data, augment=False).train(16, cfg.seed, 0)]
    assert len(batches) == 2
    expected, losses, norms = _numpy_sgd(initial, batches, cfg.lr, cfg.momentum, cfg.weight_decay)
    trained = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
    for got, want in zip([v.numpy() for v in trained.trainable_variables], expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert result["final_train_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    (row,) = runfolder.read_metrics(run_dir)
    assert row["grad_norm_sq"] == pytest.approx(np.mean(norms), rel=1e-5)
    # The reference is sensitive to what it checks: doubling the decay moves the weights beyond the tolerance,
    # and the norm of the second step's gradient with the decay in it is another number.
    doubled, _, _ = _numpy_sgd(initial, batches, cfg.lr, cfg.momentum, 2 * cfg.weight_decay)
    assert max(np.max(np.abs(a - b)) for a, b in zip(doubled, expected)) > 1e-4
    assert abs(norms[1] - norms[0]) > 1e-3 * norms[0]  # the mean is over both steps, not the first alone


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kw,message", [
    (dict(lr=0.0), "lr=0.0 must be > 0"),
    (dict(lr=-1.0), "lr=-1.0 must be > 0"),
    (dict(batch_size=0), "batch_size=0 must be > 0"),
    (dict(epochs=0), "epochs=0 must be > 0"),
    (dict(batch_size=5000), "batch_size=5000 is larger than the training set (4000"),
    (dict(batch_size=33, cpu_devices=2), "batch_size=33 is not divisible by 2 replicas"),
    (dict(arch="resnet20"), "needs image inputs"),
    (dict(augment=True), "--augment crops and flips images; dataset 'mnist1d' has examples of shape (40,)"),
    (dict(arch="nope"), "unknown arch 'nope'; valid: resnet20"),
    (dict(dataset="nope"), "unknown dataset 'nope'; valid: cifar10"),
    (dict(dataset="npz", data_path=None), "needs --data_path"),
    (dict(dataset="npz", data_path="/nonexistent/x.npz"), "does not exist"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kw, message):
    with pytest.raises(UsageError) as info:
        run(small(tmp_path, **kw))
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())


def test_npz_with_missing_keys_or_mismatched_lengths(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((10, 4)), y_train=np.zeros(9, int), x_test=np.zeros((2, 4)),
             y_test=np.zeros(2, int))
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="x_train has 10 examples but y_train has 9"):
        run(small(out, dataset="npz", data_path=str(bad)))
    np.savez(bad, x_train=np.zeros((10, 4)), y_train=np.zeros(10, int))
    with pytest.raises(UsageError, match="lacks x_test, y_test"):
        run(small(out, dataset="npz", data_path=str(bad)))
    np.savez(bad, x_train=np.zeros((10, 4)), y_train=np.zeros(10, int), x_test=np.zeros((2, 4)),
             y_test=np.zeros(2, int))
    with pytest.raises(UsageError, match=r"--augment crops and flips images; dataset 'npz' has examples of shape \(4,\)"):
        run(small(out, dataset="npz", data_path=str(bad), batch_size=5, augment=True))
    assert not out.exists()


def test_a_run_folder_of_another_configuration_is_not_touched(reference):
    cfg, _ = reference
    before = _snapshot(cfg.run_dir)
    with pytest.raises(UsageError, match=r"epochs=3 in config.json but epochs=5 now"):
        run(dataclasses.replace(cfg, epochs=5))
    with pytest.raises(UsageError, match=r"momentum=0.0 in config.json but momentum=0.5 now"):
        run(dataclasses.replace(cfg, momentum=0.5))
    assert _snapshot(cfg.run_dir) == before


def test_npz_dataset_trains(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6, 6)) * 3
    y = rng.integers(0, 3, 300)
    x = (centers[y] + rng.normal(size=(300, 6, 6)) * 0.5 + 128).clip(0, 255).astype(np.uint8)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    result = run(small(tmp_path, dataset="npz", data_path=str(path), batch_size=16, epochs=3))
    config = runfolder.read_config(tmp_path / "mlp-npz-bs16-lr0.1-s0").raw
    assert config["input_shape"] == [6, 6, 1] and config["num_classes"] == 3 and config["num_test"] == 60
    assert result["status"] == "done" and result["best_test_accuracy"] > 0.9


def test_cifar10_through_tfds_mock_data_with_a_conv_net(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=32):
        result = run(small(tmp_path, arch="resnet20", dataset="cifar10", batch_size=16, epochs=1, lr=0.01))
    config = runfolder.read_config(tmp_path / "resnet20-cifar10-bs16-lr0.01-s0").raw
    assert config["augment"] is True and config["num_params"] == 272_474 and config["steps_per_epoch"] == 2
    assert result["status"] == "done" and result["epochs"] == 1


def test_two_logical_devices_match_one(tmp_path):
    one = run(small(tmp_path / "one", epochs=2))
    two = run(small(tmp_path / "two", epochs=2, cpu_devices=2))
    assert runfolder.read_config(tmp_path / "two" / "mlp-mnist1d-bs64-lr0.1-s0").raw["replicas"] == 2
    rows1 = runfolder.read_metrics(tmp_path / "one" / "mlp-mnist1d-bs64-lr0.1-s0")
    rows2 = runfolder.read_metrics(tmp_path / "two" / "mlp-mnist1d-bs64-lr0.1-s0")
    for a, b in zip(rows1, rows2):
        # grad_norm_sq too: two replicas' gradient parts are summed before the norm is taken
        for key in ("train_loss", "test_loss", "weight_norm_sq", "grad_norm_sq"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert one["final_test_accuracy"] == pytest.approx(two["final_test_accuracy"], abs=0.003)


def test_bin_train_sizes_tensorflows_threads_to_the_quota(tmp_path, monkeypatch):
    """Under a quota, --intra_op_threads=0 (TensorFlow's default: every core of the node) becomes the
    quota's cores; a value the user gave is kept, and without a quota nothing changes."""
    from lrbs_tf.core import resources
    from lrbs_tf.training import loop, run as train
    from tests.helpers import small_config

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfgs, settings, provenance: seen.append(cfgs) or [{}] * len(cfgs))
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda root=None: 1.5)
    train.run_column(small_config(tmp_path), [0.1, 0.2])
    train.run_column(small_config(tmp_path, intra_op_threads=3), [0.1])
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda root=None: None)
    train.run_column(small_config(tmp_path), [0.1])
    assert [[c.intra_op_threads for c in cfgs] for cfgs in seen] == [[1, 1], [3], [0]]
