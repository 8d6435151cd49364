"""SLQ spectra, Keskar eps-sharpness, average sharpness, per-example gradient covariance on a conv + BN net, and
interpolation between two models (endpoints, blends, BN statistics)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.curvature import hvp, sharpness_measures, slq
from lrbs_tf.curvature.line import Evaluator, blend, interpolation_curve
from lrbs_tf.models.builders import build_model
from tests import curvature_oracles as oracles


def _diag_operator(spec):
    spec = np.asarray(spec, np.float64)
    return lambda v: spec * v


def test_slq_with_full_steps_recovers_the_spectrum():
    spec = np.linspace(-2.0, 7.0, 30)
    res = slq.slq(_diag_operator(spec), 30, steps=30, runs=2, seed=0)
    for nodes, weights in zip(res.nodes, res.weights):
        np.testing.assert_allclose(np.sort(nodes), spec, atol=1e-8)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert res.num_hvps == 60


def test_slq_quadrature_is_exact_for_low_degree_moments():
    rng = np.random.default_rng(0)
    spec = rng.uniform(0.0, 5.0, 200)
    op = _diag_operator(spec)
    v0 = slq.rademacher(rng, 200)
    alphas, betas, used = slq.lanczos_tridiagonal(op, v0, 6)
    theta, w = slq.gauss_quadrature(alphas, betas)
    assert used == 6 and len(theta) == 6
    for p in range(1, 12):  # exact for degree < 2m = 12
        assert float(w @ theta ** p) == pytest.approx(float(v0 @ (spec ** p * v0)) / 200, rel=1e-8)


def test_slq_full_reorthogonalisation_leaves_no_ghost_eigenvalues():
    """Plain Lanczos run past convergence repeats the extreme Ritz values; with full reorthogonalisation each
    appears once."""
    spec = np.concatenate([[100.0, 50.0], np.linspace(0.0, 1.0, 398)])
    res = slq.slq(_diag_operator(spec), 400, steps=120, runs=1, seed=0)
    nodes = res.nodes[0]
    assert np.sum(np.abs(nodes - 100.0) < 1e-6) == 1 and np.sum(np.abs(nodes - 50.0) < 1e-6) == 1
    assert nodes.max() <= 100.0 + 1e-8 and nodes.min() >= -1e-8


def test_slq_density_and_trace():
    spec = np.linspace(0.0, 4.0, 300)
    # Rotated: for a diagonal matrix, Rademacher probes give the trace exactly, and there is nothing to test.
    u, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((300, 300)))
    h = (u * spec) @ u.T
    res = slq.slq(lambda v: h @ v, 300, steps=40, runs=8, seed=1)
    grid, sigma = res.default_grid(num=4000)
    dens = res.density(grid, sigma)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * dens, grid) == pytest.approx(2.0, rel=0.05)  # mean eigenvalue
    tr, se = res.trace_estimate()
    assert 0 < se < 0.05 * spec.sum() and abs(tr - spec.sum()) <= 3 * se


def test_eps_sharpness_reaches_the_corner_of_a_convex_box():
    """f = 0.5 theta' D theta at theta = 0 with D > 0 diagonal: the max over |delta_i| <= eps is any corner,
    0.5 eps^2 tr(D); f(0) = 0, so the sharpness is 100 * 0.5 eps^2 tr(D)."""
    spec = np.linspace(0.5, 3.0, 40)
    q = oracles.Quadratic(spec)
    q.q = np.diag(spec)
    q32 = tf.constant(q.q, tf.float32)

    def losses_fn(params, x, y):
        theta = tf.concat([tf.reshape(p, [-1]) for p in params], axis=0)
        return tf.fill(tf.shape(y), 0.5 * tf.reduce_sum(theta * tf.linalg.matvec(q32, theta)))

    obj = hvp.Objective(losses_fn, q.params(np.zeros(40)), q.batches)
    eps = 0.01
    res = sharpness_measures.eps_sharpness(obj, eps=eps, steps=10, seed=0)
    assert res.loss == 0.0
    assert res.sharpness == pytest.approx(100 * 0.5 * eps ** 2 * spec.sum(), rel=1e-4)
    assert res.num_gradients == 10 == obj.num_gradients


def test_eps_sharpness_is_a_lower_bound_inside_the_box():
    q = oracles.Quadratic(np.linspace(-1.0, 3.0, 40))
    theta = np.random.default_rng(0).standard_normal(40)
    obj = hvp.Objective(q.losses_fn, q.params(theta), q.batches)
    eps = 0.05
    res = sharpness_measures.eps_sharpness(obj, eps=eps, steps=30, seed=0)
    f0 = q.loss(obj.theta)
    # Exhaustive-free upper bound of the max over the box: f0 + |g|.b + 0.5 lambda_max ||b||^2.
    b = eps * (np.abs(obj.theta) + 1)
    upper = f0 + np.abs(q.q @ obj.theta) @ b + 0.5 * 3.0 * b @ b
    # The linearised optimum (delta = b sign(g)) is a feasible point: the ascent must do at least as well.
    lin = q.loss(obj.theta + b * np.sign(q.q @ obj.theta))
    assert lin - 1e-5 <= res.perturbed_loss <= upper + 1e-5
    assert res.loss == pytest.approx(f0, rel=1e-5)
    assert res.sharpness == pytest.approx(100 * (res.perturbed_loss - res.loss) / (1 + res.loss), rel=1e-12)


def test_average_sharpness_matches_half_the_weighted_trace():
    """E f(w + delta) - f(w) = 0.5 sum_i Q_ii s_i^2 with s_i = sigma (|w_i| + 1), exactly, for a quadratic."""
    q = oracles.Quadratic(np.linspace(0.1, 4.0, 40))
    theta = np.random.default_rng(0).standard_normal(40)
    obj = hvp.Objective(q.losses_fn, q.params(theta), q.batches)
    sigma = 0.05
    res = sharpness_measures.average_sharpness(obj, sigma=sigma, draws=200, seed=0)
    s = sigma * (np.abs(obj.theta) + 1)
    truth = 0.5 * float(np.diag(q.q) @ s ** 2)
    assert abs(res.mean_increase - truth) <= 3 * res.stderr
    assert res.stderr < 0.1 * truth  # antithetic pairs: no first-order noise


def test_grad_cov_trace_on_conv_bn_matches_a_loop_of_single_example_gradients():
    keras.utils.set_random_seed(1)
    model = build_model("mlp", 3, (4, 4, 1), mlp_depth=1, mlp_width=6, mlp_batch_norm=True)
    conv = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization(),
                             keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    for m, shape in ((model, (4, 4, 1)), (conv, (5, 5, 2))):
        x = rng.standard_normal((7,) + shape).astype(np.float32)
        y = rng.integers(0, 3, 7).astype(np.int32)
        losses_fn = hvp.keras_losses_fn(m, "inference")
        params = [tf.constant(v.value) for v in m.trainable_variables]
        grads = []
        for i in range(7):
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = tf.reduce_sum(losses_fn(params, x[i:i + 1], y[i:i + 1]))
            grads.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, params)]).astype(np.float64))
        g = np.stack(grads)
        truth = float(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)))
        d = g.shape[1]
        res = sharpness_measures.grad_cov_trace(losses_fn, params, hvp.make_batches(x, y, 5), max_floats=2 * d)
        assert res.trace == pytest.approx(truth, rel=1e-5)


@pytest.fixture(scope="module")
def two_bn_models():
    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        m = build_model("mlp", 3, (5,), mlp_depth=1, mlp_width=6, mlp_batch_norm=True)
        rng = np.random.default_rng(seed)
        bn = [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
        bn.moving_mean.assign(rng.normal(0, 0.3, 6).astype(np.float32))
        # Variances 4x apart: a linear blend at alpha = -0.5 would be negative for some units.
        bn.moving_variance.assign(np.full(6, 4.0 if seed == 0 else 1.0, np.float32))
        models.append(m)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    y = rng.integers(0, 3, 30).astype(np.int32)
    return models, x, y


def _own_eval(model, x, y):
    logits = model(x, training=False)
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    return loss, float(np.mean(np.argmax(logits, axis=1) == y))


def test_interpolation_endpoints_reproduce_each_model(two_bn_models):
    (a, b), x, y = two_bn_models
    train = hvp.make_batches(x[:20], y[:20], 8)
    test = hvp.make_batches(x[20:], y[20:], 8)
    rows = interpolation_curve(a, b, [-0.5, 0.0, 0.5, 1.0, 1.5], train, test)
    by_alpha = {r["alpha"]: r for r in rows}
    for alpha, model in ((0.0, a), (1.0, b)):
        loss, acc = _own_eval(model, x[:20], y[:20])
        assert by_alpha[alpha]["train_loss"] == pytest.approx(loss, rel=1e-5)
        assert by_alpha[alpha]["train_accuracy"] == acc
        loss, acc = _own_eval(model, x[20:], y[20:])
        assert by_alpha[alpha]["test_loss"] == pytest.approx(loss, rel=1e-5)
        assert by_alpha[alpha]["test_accuracy"] == acc
    assert all(np.isfinite(r["train_loss"]) for r in rows)  # geometric variance blend stays positive
    assert by_alpha[0.0]["train_loss"] != by_alpha[1.0]["train_loss"]


def test_blend_is_linear_for_weights_and_geometric_for_variances():
    a, b = [np.array([1.0, 2.0]), np.array([1.0])], [np.array([3.0, -2.0]), np.array([4.0])]
    out = blend(a, b, 0.25, geometric=[1])
    np.testing.assert_allclose(out[0], [1.5, 1.0])
    np.testing.assert_allclose(out[1], [4.0 ** 0.25], rtol=1e-6)
    assert blend(a, b, -0.5)[1][0] == pytest.approx(-0.5)                # linear: a negative variance
    assert blend(a, b, -0.5, geometric=[1])[1][0] == pytest.approx(0.5)  # geometric: 1^1.5 * 4^-0.5


def test_recomputed_bn_statistics_are_the_size_weighted_batch_moments():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization(momentum=0.9)(inputs)))
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (10, 3)).astype(np.float32)
    batches = hvp.make_batches(x, np.zeros(10, np.int32), 4)  # 4 + 4 + 2
    ev = Evaluator(model)
    nt = ev.recompute_bn([np.asarray(v.value) for v in model.trainable_variables],
                         [np.asarray(v.value) for v in model.non_trainable_variables], batches)
    parts = [x[0:4], x[4:8], x[8:10]]
    mean = sum(len(p) * p.mean(axis=0) for p in parts) / 10
    var = sum(len(p) * p.var(axis=0) for p in parts) / 10  # Keras normalises with the biased batch variance
    mean_i, var_i, _ = ev.bn[0]
    np.testing.assert_allclose(nt[mean_i], mean, rtol=1e-5)
    np.testing.assert_allclose(nt[var_i], var, rtol=1e-5)
