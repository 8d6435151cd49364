"""Batch sharpness and the Gauss-Newton matrix against dense float64 references on tiny models (issue 24):

- batch_sharpness is the mean over the drawn minibatches of g_B' H_B g_B / |g_B|^2 with g_B, H_B each
  minibatch's own dense gradient and Hessian (BN inference mode and batch mode, the minibatch's statistics);
  with the batch the whole set it is one Rayleigh quotient of H, at most lambda_max;
- G v equals a dense J' H_out J in both BN modes; G = H exactly for softmax regression (logits linear in
  the parameters); its top eigenvalues and trace through the Hessian's solvers match the dense G's;
- the minibatches are drawn as training draws them (permutations, remainder dropped) and seeded.
"""

import keras
import numpy as np
import pytest

from lrbs_tf.curvature import eigen, hvp, trace
from lrbs_tf.curvature.batch_sharpness import batch_sharpness, draw_batches
from lrbs_tf.curvature.ggn import GaussNewton
from lrbs_tf.curvature.hvp import keras_logits_fn
from lrbs_tf.models.builders import build_model
from tests import curvature_oracles as oracles


@pytest.fixture(scope="module")
def bn_mlp():
    """A 1 x 8 BN MLP (6 inputs, 4 classes: 6*8+8 + 8+8 + 8*4+4 = 108 parameters) with moving statistics
    far from the batch statistics, so the two BN modes differ."""
    keras.utils.set_random_seed(0)
    model = build_model("mlp", 4, (6,), mlp_depth=1, mlp_width=8, mlp_batch_norm=True)
    rng = np.random.default_rng(1)
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    bn.moving_mean.assign(rng.normal(0.0, 0.5, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.3, 3.0, 8).astype(np.float32))
    x = rng.standard_normal((24, 6)).astype(np.float32)
    y = rng.integers(0, 4, 24).astype(np.int32)
    return model, x, y


def _params(model):
    return [v.value for v in model.trainable_variables]


def test_batches_are_drawn_as_training_draws_them():
    a = draw_batches(10, 4, 5, seed=3)
    assert [len(b) for b in a] == [4] * 5
    # Two batches per pass (the remainder of 2 dropped), each pass a permutation: no repeat inside a pass.
    for first, second in ((a[0], a[1]), (a[2], a[3])):
        assert len(set(first) | set(second)) == 8
    assert all(np.array_equal(u, v) for u, v in zip(a, draw_batches(10, 4, 5, seed=3)))
    assert not np.array_equal(a[0], draw_batches(10, 4, 5, seed=4)[0])
    full = draw_batches(10, 64, 5, seed=3)  # a batch as large as the set is the set: one batch
    assert len(full) == 1 and np.array_equal(full[0], np.arange(10))


@pytest.mark.parametrize("bn_mode", ["inference", "batch"])
def test_batch_sharpness_equals_dense_per_batch_quotients(bn_mlp, bn_mode):
    model, x, y = bn_mlp
    traces = {}
    res = batch_sharpness(hvp.keras_losses_fn(model, bn_mode, traces), _params(model), x, y, batch_size=8,
                          count=5, seed=7, chunk_size=8, traces=traces)
    truth = []
    for idx in draw_batches(len(x), 8, 5, seed=7):
        weights = oracles.mlp_weights(model)
        import tensorflow as tf
        theta = tf.Variable(np.concatenate([w.ravel() for w in weights]))
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                parts = [tf.reshape(p, w.shape) for p, w in zip(tf.split(theta, [w.size for w in weights]), weights)]
                loss = tf.reduce_mean(oracles.mlp_losses64(model, parts, x[idx], y[idx], bn_mode == "batch"))
            g = inner.gradient(loss, theta)
        h = outer.jacobian(g, theta).numpy()
        g = g.numpy()
        truth.append(g @ h @ g / (g @ g))
    assert res.batches == 5 and res.batch_size == 8 and res.num_hvps == 5 and res.num_gradients == 5
    np.testing.assert_allclose(res.values, truth, rtol=2e-4)
    assert res.mean == pytest.approx(np.mean(truth), rel=2e-4)
    assert res.stderr == pytest.approx(np.std(truth, ddof=1) / np.sqrt(5), rel=2e-3)


def test_full_batch_sharpness_is_a_rayleigh_quotient_below_lambda_max():
    keras.utils.set_random_seed(0)
    model = build_model("mlp", 4, (6,), mlp_depth=1, mlp_width=16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 4, 64).astype(np.int32)
    _, grad, h = oracles.mlp_dense_hessian(model, x, y)
    res = batch_sharpness(hvp.keras_losses_fn(model), _params(model), x, y, batch_size=1000, count=20, seed=0,
                          chunk_size=24)
    assert res.batches == 1 and res.batch_size == 64 and res.stderr == 0.0
    assert res.mean == pytest.approx(grad @ h @ grad / (grad @ grad), rel=1e-4)
    assert res.mean <= np.linalg.eigvalsh(h)[-1]
    # Weight decay: g + wd theta and H + wd I.
    theta = np.concatenate([w.ravel() for w in oracles.mlp_weights(model)])
    g, hw = grad + 0.1 * theta, h + 0.1 * np.eye(len(theta))
    res = batch_sharpness(hvp.keras_losses_fn(model), _params(model), x, y, batch_size=64, count=1, seed=0,
                          chunk_size=64, weight_decay=0.1)
    assert res.mean == pytest.approx(g @ hw @ g / (g @ g), rel=1e-4)


@pytest.mark.parametrize("bn_mode", ["inference", "batch"])
def test_gauss_newton_products_equal_the_dense_ggn(bn_mlp, bn_mode):
    model, x, _ = bn_mlp
    dense = oracles.mlp_dense_ggn(model, x[:12], batch_stats=bn_mode == "batch")
    # Batch mode: one chunk of the 12 examples (their statistics); inference mode: uneven chunks 5+5+2.
    chunk = 12 if bn_mode == "batch" else 5
    gn = GaussNewton(keras_logits_fn(model, bn_mode), _params(model), hvp.make_batches(x[:12], np.zeros(12), chunk))
    assert gn.dim == 108 == dense.shape[0]
    for seed in range(3):
        v = np.random.default_rng(seed).standard_normal(gn.dim)
        assert np.linalg.norm(gn.gvp(v) - dense @ v) <= 1e-5 * np.linalg.norm(dense @ v)
    truth = np.linalg.eigvalsh(dense)[::-1]
    assert truth[-1] > -1e-10  # positive semi-definite
    res = eigen.top_k(gn.gvp, gn.dim, 3, "lanczos", tol=1e-8, max_hvps=2000, seed=0)
    np.testing.assert_allclose(res.eigenvalues, truth[:3], rtol=1e-4)
    tr = trace.hutchinson(gn.gvp, gn.dim, rtol=0.01, max_probes=400, seed=0)
    assert abs(tr.trace - np.trace(dense)) <= 4 * tr.trace_stderr and tr.trace_stderr < 0.05 * np.trace(dense)


def test_ggn_differs_from_the_hessian_of_an_mlp_and_equals_it_for_softmax_regression(bn_mlp):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)])
    x = rng.standard_normal((30, 5)).astype(np.float32)
    h = oracles.softmax_regression_hessian(*model.get_weights(), x)
    gn = GaussNewton(keras_logits_fn(model), _params(model), hvp.make_batches(x, np.zeros(30), 30),
                     weight_decay=0.01)
    v = rng.standard_normal(gn.dim)
    assert np.linalg.norm(gn.gvp(v) - (h + 0.01 * np.eye(gn.dim)) @ v) <= 1e-5 * np.linalg.norm(h @ v)
    mlp, xm, ym = bn_mlp
    _, _, hm = oracles.mlp_dense_hessian(mlp, xm, ym)
    assert np.linalg.norm(oracles.mlp_dense_ggn(mlp, xm) - hm) > 1e-3 * np.linalg.norm(hm)


@pytest.mark.parametrize("mode", hvp.HVP_MODES)
def test_batch_mode_hvp_is_differentiated_through_the_batch_statistics_exactly(bn_mlp, mode):
    """tf.nn.moments' variance around stop_gradient(mean) has a wrong second derivative: before
    hvp.exact_batch_moments, products like these (8 examples of another draw) were 36% (forward-over-reverse)
    and 8% (reverse-over-reverse) off the dense Hessian."""
    import tensorflow as tf

    model, x, y = bn_mlp
    weights = oracles.mlp_weights(model)
    theta = tf.Variable(np.concatenate([w.ravel() for w in weights]))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            parts = [tf.reshape(p, w.shape) for p, w in zip(tf.split(theta, [w.size for w in weights]), weights)]
            loss = tf.reduce_mean(oracles.mlp_losses64(model, parts, x[:8], y[:8], batch_stats=True))
        g = inner.gradient(loss, theta)
    h = outer.jacobian(g, theta).numpy()
    obj = hvp.keras_objective(model, x[:8], y[:8], 8, bn_mode="batch", hvp_mode=mode)
    v = np.random.default_rng(0).standard_normal(obj.dim)
    assert np.linalg.norm(obj.hvp(v) - h @ v) <= 1e-5 * np.linalg.norm(h @ v)
