"""bin/train's loop and run folder, in-process (fast) — the contract every other binary reads."""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from lrbs_tf import runfolder
from lrbs_tf.cli import UsageError
from lrbs_tf.data import load_data
from lrbs_tf.train import TrainConfig, run
from tests.helpers import without_seconds


def small(tmp_path, **kw) -> TrainConfig:
    base = dict(arch="mlp", dataset="mnist1d", mlp_depth=2, mlp_width=64, batch_size=64, lr=0.1, epochs=3,
                workdir=str(tmp_path), progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("ref"))
    result = run(cfg)
    return cfg.resolved(), result


def test_run_folder_contract(reference):
    cfg, result = reference
    run_dir = cfg.run_dir
    assert run_dir.name == "mlp-mnist1d-bs64-lr0.1-s0"
    config = runfolder.read_config(run_dir)
    for key in ("arch", "dataset", "batch_size", "lr", "seed", "epochs", "momentum", "weight_decay"):
        assert config[key] == getattr(cfg, key)
    assert config["num_params"] == 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert config["versions"]["tensorflow"] and "git_commit" in config
    rows = runfolder.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(set(r) == set(runfolder.METRIC_KEYS) for r in rows)
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


def test_momentum_and_weight_decay_change_the_run_and_its_name(tmp_path):
    cfg = small(tmp_path, momentum=0.9, weight_decay=5e-4, epochs=1)
    result = run(cfg)
    assert cfg.resolved().run_name == "mlp-mnist1d-bs64-lr0.1-s0-m0.9-wd0.0005"
    plain = run(small(tmp_path, epochs=1))
    assert result["final_train_loss"] != plain["final_train_loss"]


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
    with pytest.raises(UsageError, match=r"--augment crops and flips images; npz examples have shape \(4,\)"):
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
    config = runfolder.read_config(tmp_path / "mlp-npz-bs16-lr0.1-s0")
    assert config["input_shape"] == [6, 6, 1] and config["num_classes"] == 3 and config["num_test"] == 60
    assert result["status"] == "done" and result["best_test_accuracy"] > 0.9


def test_cifar10_through_tfds_mock_data_with_a_conv_net(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=32):
        result = run(small(tmp_path, arch="resnet20", dataset="cifar10", batch_size=16, epochs=1, lr=0.01))
    config = runfolder.read_config(tmp_path / "resnet20-cifar10-bs16-lr0.01-s0")
    assert config["augment"] is True and config["num_params"] == 272_474 and config["steps_per_epoch"] == 2
    assert result["status"] == "done" and result["epochs"] == 1


def test_two_logical_devices_match_one(tmp_path):
    one = run(small(tmp_path / "one", epochs=2))
    two = run(small(tmp_path / "two", epochs=2, cpu_devices=2))
    assert runfolder.read_config(tmp_path / "two" / "mlp-mnist1d-bs64-lr0.1-s0")["replicas"] == 2
    rows1 = runfolder.read_metrics(tmp_path / "one" / "mlp-mnist1d-bs64-lr0.1-s0")
    rows2 = runfolder.read_metrics(tmp_path / "two" / "mlp-mnist1d-bs64-lr0.1-s0")
    for a, b in zip(rows1, rows2):
        for key in ("train_loss", "test_loss", "weight_norm_sq"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert one["final_test_accuracy"] == pytest.approx(two["final_test_accuracy"], abs=0.003)
