"""SVAG (bin/train --svag=L, Li, Malladi & Arora 2021): its gradient's moments against numpy, its updates against
a numpy reference, its step and example accounting, columns on both engines, a step budget in SGD steps,
exact resume, and --svag=1 being plain SGD."""

from __future__ import annotations

import json
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.core.errors import UsageError
from lrbs_tf.data.loaders import load_data
from lrbs_tf.data.pipelines import Pipelines
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import TrainConfig, step_cost, svag_batches, svag_coefficients, validate
from lrbs_tf.sweep import grid as gridlib
from lrbs_tf.training.run import run, run_column
from lrbs_tf.training.steps import svag_forward_backward
from tests.helpers import REPO, run_bin, small_config, without_seconds


@pytest.mark.parametrize("svag", [1, 2, 4, 16])
def test_the_coefficients_keep_the_mean_and_multiply_the_second_moment(svag):
    r1, r2 = svag_coefficients(svag)
    assert r1 + r2 == pytest.approx(1.0, abs=1e-12)
    assert r1 * r1 + r2 * r2 == pytest.approx(svag, rel=1e-12)
    assert step_cost(svag) == (1 if svag == 1 else 2 * svag) and svag_batches(svag) == min(svag, 2)


def _per_example_grads(kernel, bias, x, y):
    """Per-example gradients (n, d*c + c) of softmax cross-entropy of a linear model, in Keras' variable
    order (kernel row-major, then bias), in float64."""
    z = x @ kernel + bias
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dz = p - np.eye(p.shape[1])[y]
    return np.concatenate([(x[:, :, None] * dz[:, None, :]).reshape(len(x), -1), dz], axis=1)


@pytest.mark.parametrize("svag", [2, 4])
def test_the_combined_gradient_has_the_full_gradients_mean_and_svag_times_sgds_covariance(svag):
    """Monte Carlo over 4000 draws of two independent minibatches (with replacement, B = 5 of n = 40) on a
    linear softmax model: svag_forward_backward's gradient has mean = the full gradient and covariance =
    svag x Sigma / B (Sigma: the per-example gradients' covariance, numpy), each entry within 5 standard errors
    estimated from the draws themselves; SGD's covariance Sigma / B is rejected by the same criterion."""
    rng = np.random.default_rng(7)
    n, d, c, batch, draws = 40, 3, 2, 5, 4000
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(c)])
    member = types.SimpleNamespace(model=model, cfg=TrainConfig(batch_size=batch, svag=svag),
                                   optimizer=keras.optimizers.SGD(0.1))
    step = tf.function(lambda x1, y1, x2, y2: svag_forward_backward(member, 1, x1, y1, x2, y2)[0])
    samples = np.empty((draws, d * c + c))
    for k in range(draws):
        i, j = rng.integers(0, n, batch), rng.integers(0, n, batch)
        grads = step(x[i], y[i], x[j], y[j])
        samples[k] = np.concatenate([g.numpy().ravel() for g in grads])
    per_example = _per_example_grads(model.layers[0].kernel.numpy().astype(np.float64),
                                     model.layers[0].bias.numpy().astype(np.float64), x.astype(np.float64), y)
    full, sigma = per_example.mean(0), np.cov(per_example.T, bias=True)  # sampling with replacement: 1/n
    mean_se = samples.std(0) / np.sqrt(draws)
    assert np.all(np.abs(samples.mean(0) - full) <= 5 * mean_se + 1e-7)
    centred = samples - samples.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    cov, cov_se = products.mean(0), products.std(0) / np.sqrt(draws)
    assert np.all(np.abs(cov - svag * sigma / batch) <= 5 * cov_se + 1e-9)
    assert np.any(np.abs(cov - sigma / batch) > 5 * cov_se + 1e-9)  # the check can fail: SGD's is not it


def _numpy_svag(weights, pairs, lr, svag):
    """SVAG on a 1-hidden-layer ReLU MLP with mean softmax cross-entropy in float64: w -= (lr / svag)
    (r1 g1 + r2 g2) for each pair of batches; an independent reference for the training step."""
    w = [np.asarray(v, np.float64) for v in weights]  # kernel1, bias1, kernel2, bias2 (Keras' order)
    r1, r2 = (1 + np.sqrt(2 * svag - 1)) / 2, (1 - np.sqrt(2 * svag - 1)) / 2

    def grads(x, y):
        x = np.asarray(x, np.float64)
        h = np.maximum(x @ w[0] + w[1], 0.0)
        z = h @ w[2] + w[3]
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        dz = (p - np.eye(p.shape[1])[y]) / len(y)
        dh = (dz @ w[2].T) * (h > 0)
        return [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]

    for (x1, y1), (x2, y2) in pairs:
        g1, g2 = grads(x1, y1), grads(x2, y2)
        w = [v - lr / svag * (r1 * a + r2 * b) for v, a, b in zip(w, g1, g2)]
    return w


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    path = tmp_path_factory.mktemp("blobs") / "blobs.npz"
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    return path


def test_an_svag_epoch_follows_a_numpy_reference_on_the_documented_batches(tmp_path, blobs):
    """32 examples, batch 16, svag 2: an epoch is 2 x 2 = 4 steps on 4 shuffled passes (seeded as epochs
    0-3), cut into consecutive pairs of batches; the weights equal numpy's SVAG on those pairs, and the
    metrics count 4 steps of 32 examples."""
    from lrbs_tf.models.builders import build_model

    cfg = small_config(tmp_path, dataset="npz", data_path=str(blobs), mlp_depth=1, mlp_width=8, batch_size=16,
                       lr=0.2, epochs=1, svag=2)
    result = run(cfg)
    run_dir = cfg.resolved().run_dir
    assert run_dir.name == "mlp-npz-bs16-lr0.2-s0-svag2"
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    initial = [v.numpy() for v in build_model("mlp", 3, (6,), mlp_depth=1, mlp_width=8).trainable_variables]
    pipes = Pipelines(load_data("npz", data_path=str(blobs)), augment=False)
    batches = [(bx.numpy(), by.numpy()) for e in range(4) for bx, by in pipes.train(16, cfg.seed, e)]
    expected = _numpy_svag(initial, list(zip(batches[::2], batches[1::2])), cfg.lr, 2)
    trained = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
    for got, want in zip([v.numpy() for v in trained.trainable_variables], expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Sensitive: plain SGD's rate (no 1/svag) on the same pairs lands elsewhere.
    assert max(np.max(np.abs(a - b)) for a, b in
               zip(_numpy_svag(initial, list(zip(batches[::2], batches[1::2])), 2 * cfg.lr, 2), expected)) > 1e-4
    (row,) = runfolder.read_metrics(run_dir)
    assert (row["step"], row["examples_seen"], result["steps"]) == (4, 128, 4)
    config = runfolder.read_config(run_dir).raw
    assert (config["svag"], config["steps_per_epoch"]) == (2, 4)


def test_a_column_on_either_engine_equals_its_separate_runs(tmp_path):
    """An SVAG column of two rates on the graph and the stacked engine: each member's metrics equal its
    run alone (graph engine) to float tolerance; all members take svag x the SGD steps."""
    kw = dict(epochs=1, svag=2, batch_size=256, max_steps=10)
    alone = [run(small_config(tmp_path / f"alone{lr}", lr=lr, **kw)) for lr in (0.05, 0.2)]
    for engine in ("graph", "stacked"):
        column = run_column(small_config(tmp_path / engine, column_engine=engine, **kw), [0.05, 0.2])
        for got, want in zip(column, alone):
            assert got["steps"] == want["steps"] == 20
            for key in ("final_train_loss", "final_train_accuracy", "best_test_accuracy"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (engine, key)


def test_max_steps_counts_sgd_steps_and_an_interrupted_run_resumes_to_the_same_metrics(tmp_path, capsys):
    """svag 2, batch 64: 62 SGD steps an epoch, so 124 SVAG steps; --max_steps=100 (SGD steps of equal SDE
    time) is 200 SVAG steps, a whole epoch and a partial one. A kill before the second checkpoint resumes
    from epoch 1 to the uninterrupted run's metrics.jsonl and result.json."""
    kw = dict(epochs=3, svag=2, max_steps=100)
    reference = tmp_path / "reference"
    result = run(small_config(reference, **kw))
    name = "mlp-mnist1d-bs64-lr0.1-s0-svag2-steps100"
    rows = runfolder.read_metrics(reference / name)
    assert [(r["epoch"], r["step"], r["examples_seen"]) for r in rows] == [(1, 124, 124 * 128), (2, 200, 200 * 128)]
    assert (result["steps"], result["epochs"], result["stop_reason"]) == (200, 2, "max_steps")
    run_dir = tmp_path / "cut" / name
    shutil.copytree(reference / name, run_dir)
    for pattern in (f"{runfolder.CKPT_DIR}/ckpt-2.*", runfolder.RESULT, runfolder.MODEL):
        for path in run_dir.glob(pattern):
            path.unlink()
    capsys.readouterr()
    again = run(small_config(tmp_path / "cut", **kw))
    assert f"resuming {run_dir} after epoch 1" in capsys.readouterr().out
    assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(rows)
    assert again == result


@pytest.mark.parametrize("svag", [0, -2])
def test_a_bad_svag_is_refused(tmp_path, svag):
    with pytest.raises(UsageError, match=f"svag={svag} must be an integer >= 1"):
        validate(small_config(tmp_path, svag=svag))


def test_a_step_budget_beyond_the_epochs_is_refused_in_sgd_steps(tmp_path):
    from lrbs_tf.runs.config import RuntimeFacts

    with pytest.raises(UsageError, match=r"max_steps=200 is more than epochs=3 allow at batch_size=64 "
                                         r"\(3 x 62 steps = 186\)"):
        validate(small_config(tmp_path, epochs=3, svag=4, max_steps=200), RuntimeFacts(num_train=4000))


def test_the_sweep_names_svag_runs_and_weighs_them_by_their_minibatch_gradients():
    plain = gridlib.Grid((64,), (0.1,), (0,), TrainConfig(arch="mlp", dataset="mnist1d", epochs=2))
    svag = gridlib.Grid((64,), (0.1,), (0,), TrainConfig(arch="mlp", dataset="mnist1d", epochs=2, svag=4))
    assert svag.steps(svag.runs()[0]) == 8 * plain.steps(plain.runs()[0]) == 8 * 124
    assert svag.runs()[0].name == "mlp-mnist1d-bs64-lr0.1-s0-svag4"
    assert plain.runs()[0].name == "mlp-mnist1d-bs64-lr0.1-s0"


def test_svag_1_on_the_command_line_is_plain_sgd(tmp_path):
    """bin/train with --svag=1 and without the flag: the same run folder name, config.json (svag 1) and
    metrics, bit for bit."""
    args = ("--mlp_depth=1", "--mlp_width=16", "--batch_size=500", "--epochs=2", "--noprogress")
    rows = []
    for sub, extra in (("without", ()), ("with", ("--svag=1",))):
        proc = run_bin("train", f"--workdir={tmp_path / sub}", *args, *extra, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        run_dir = tmp_path / sub / "mlp-mnist1d-bs500-lr0.05-s0"
        assert json.loads((run_dir / runfolder.CONFIG).read_text())["svag"] == 1
        rows.append(without_seconds(runfolder.read_metrics(run_dir)))
    assert rows[0] == rows[1] and len(rows[0]) == 2
    proc = run_bin("train", f"--workdir={tmp_path / 'bad'}", *args, "--svag=0", cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "svag=0 must be an integer >= 1 (1: plain SGD)")


def test_two_logical_devices_match_one(tmp_path):
    """Each replica takes its slice of both batches of a pair: two replicas train the one-device SVAG run."""
    kw = dict(epochs=1, svag=2, max_steps=20)
    one = run(small_config(tmp_path / "one", **kw))
    two = run(small_config(tmp_path / "two", cpu_devices=2, **kw))
    name = "mlp-mnist1d-bs64-lr0.1-s0-svag2-steps20"
    assert runfolder.read_config(tmp_path / "two" / name).raw["replicas"] == 2 and one["steps"] == two["steps"] == 40
    (a,), (b,) = runfolder.read_metrics(tmp_path / "one" / name), runfolder.read_metrics(tmp_path / "two" / name)
    for key in ("train_loss", "test_loss", "weight_norm_sq", "grad_norm_sq"):
        assert a[key] == pytest.approx(b[key], rel=1e-4), key
