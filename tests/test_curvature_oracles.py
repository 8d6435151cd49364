"""HVPs, top eigenvalues, Hutchinson trace and Frobenius norm against dense Hessians (tests/curvature_oracles):
a quadratic with a known spectrum, softmax regression (closed form) and a tiny MLP (float64 nested tapes)."""

import keras
import numpy as np
import pytest

from lrbs_tf.curvature import eigen, hvp, sharpness_measures, trace
from lrbs_tf.models.builders import build_model
from tests import curvature_oracles as oracles

MODES = hvp.HVP_MODES

# A large negative eigenvalue: 'LM' (or power iteration) would report it as the "top" eigenvalue.
SPECTRUM = np.concatenate([[-12.0, -3.0], np.linspace(0.1, 10.0, 38)])


@pytest.fixture(scope="module")
def quadratic():
    q = oracles.Quadratic(SPECTRUM)
    theta = np.random.default_rng(1).standard_normal(q.dim)
    objs = {m: hvp.Objective(q.losses_fn, q.params(theta), q.batches, hvp_mode=m) for m in MODES}
    return q, theta, objs


@pytest.mark.parametrize("mode", MODES)
def test_quadratic_hvp_is_q_times_v(quadratic, mode):
    q, theta, objs = quadratic
    obj = objs[mode]
    assert obj.dim == 40 and obj.loss() == pytest.approx(q.loss(obj.theta), rel=1e-5)
    _, grad = obj.loss_and_gradient()
    np.testing.assert_allclose(grad, q.q @ obj.theta, rtol=0, atol=1e-5 * np.linalg.norm(q.q @ obj.theta))
    for seed in range(3):
        v = np.random.default_rng(seed).standard_normal(q.dim)
        hv = obj.hvp(v)
        assert np.linalg.norm(hv - q.q @ v) <= 1e-6 * np.linalg.norm(q.q @ v)
    assert obj.num_hvps == 3


def test_quadratic_lanczos_top_k_is_the_algebraic_top(quadratic):
    q, _, objs = quadratic
    res = eigen.lanczos_top_k(objs["forward_over_reverse"].hvp, q.dim, 5, tol=1e-8, max_hvps=2000, seed=3)
    assert res.converged and res.method == "lanczos"
    np.testing.assert_allclose(res.eigenvalues, q.spectrum[:5], rtol=1e-4)
    assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=True)
    for lam, u in zip(res.eigenvalues, res.eigenvectors.T):  # the vectors are eigenvectors too
        assert np.linalg.norm(q.q @ u - lam * u) < 1e-4 * abs(lam)


def test_quadratic_power_iteration_finds_largest_magnitude(quadratic):
    q, _, objs = quadratic
    res = eigen.power_iteration(objs["forward_over_reverse"].hvp, q.dim, tol=1e-6, max_hvps=3000, seed=0)
    assert res.converged
    assert res.eigenvalue == pytest.approx(-12.0, rel=1e-5)  # largest |lambda|, not the top: documented


def test_power_iteration_needs_both_stopping_conditions():
    """Eigengap 10 vs 9.99: lambda barely changes from one step to the next long before v has converged."""
    spec = np.concatenate([[10.0, 9.99], np.linspace(0.0, 5.0, 48)])
    h = np.diag(spec)
    tol = 1e-4
    res = eigen.power_iteration(lambda v: h @ v, 50, tol=tol, max_hvps=20000, seed=0)
    assert res.converged
    v = res.eigenvector
    assert np.linalg.norm(h @ v - res.eigenvalue * v) / res.eigenvalue < tol
    assert abs(res.eigenvalue - 10.0) / 10.0 < 0.2 * tol  # the residual bounds the error: |r|^2 / gap here
    # A change-only rule would have stopped after a few products, its lambda off by more than the tolerance.
    hist = np.asarray(res.history)
    change_only = int(np.argmax(np.abs(np.diff(hist)) / np.abs(hist[1:]) < tol)) + 2
    assert change_only < res.num_hvps / 100
    assert abs(hist[change_only - 1] - 10.0) / 10.0 > 2 * tol


def test_quadratic_trace_and_frobenius(quadratic):
    q, _, objs = quadratic
    res = trace.hutchinson(objs["forward_over_reverse"].hvp, q.dim, rtol=0.01, max_probes=3000, seed=0)
    assert res.converged and res.trace_stderr <= 0.01 * abs(res.trace)
    true_trace, true_fro = float(np.trace(q.q)), float(np.linalg.norm(q.q))
    assert abs(res.trace - true_trace) <= 3 * res.trace_stderr
    assert res.trace_stderr < 0.02 * abs(true_trace) and res.num_probes >= 10
    assert res.frobenius_norm == pytest.approx(true_fro, rel=0.05)
    # ||H||_F needs the mean of ||Hv||^2; the mean of ||Hv|| (a known bug) is measurably smaller.
    assert np.mean(np.sqrt(res.sq_norm_samples)) < 0.99 * true_fro


@pytest.fixture(scope="module")
def softmax_regression():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # away from zero so that p is not uniform
        v.assign(rng.standard_normal(v.shape).astype(np.float32))
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 4, 50).astype(np.int32)
    kernel, bias = (np.asarray(v.value) for v in model.trainable_variables)
    h = oracles.softmax_regression_hessian(kernel, bias, x)
    return model, x, y, h


@pytest.mark.parametrize("mode", MODES)
def test_softmax_regression_hvp(softmax_regression, mode):
    model, x, y, h = softmax_regression
    obj = hvp.keras_objective(model, x, y, batch_size=16, hvp_mode=mode)  # 16+16+16+2: uneven batches
    assert obj.dim == h.shape[0] == 28
    for seed in range(3):
        v = np.random.default_rng(seed).standard_normal(obj.dim)
        assert np.linalg.norm(obj.hvp(v) - h @ v) <= 1e-5 * np.linalg.norm(h @ v)


def test_softmax_regression_eigen_trace_frobenius(softmax_regression):
    model, x, y, h = softmax_regression
    obj = hvp.keras_objective(model, x, y, batch_size=64)  # one batch: half the cost per probe
    truth = np.linalg.eigvalsh(h)[::-1]
    res = eigen.top_k(obj.hvp, obj.dim, 5, "lanczos", tol=1e-9, max_hvps=2000, seed=0)
    np.testing.assert_allclose(res.eigenvalues, truth[:5], rtol=1e-4)
    tr = trace.hutchinson(obj.hvp, obj.dim, rtol=0.02, max_probes=300, seed=1)
    assert tr.trace_stderr < 0.03 * np.trace(h)
    assert abs(tr.trace - np.trace(h)) <= 3 * tr.trace_stderr
    assert tr.frobenius_norm == pytest.approx(np.linalg.norm(h), rel=0.05)


def test_softmax_regression_grad_cov_trace(softmax_regression):
    model, x, y, _ = softmax_regression
    kernel, bias = (np.asarray(v.value) for v in model.trainable_variables)
    g = oracles.softmax_regression_per_example_grads(kernel, bias, x, y)
    truth = float(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)))
    batches = hvp.make_batches(x, y, 16)
    params = [v.value for v in model.trainable_variables]
    res = sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model), params, batches, max_floats=28 * 5)
    assert res.num_examples == 50
    assert res.trace == pytest.approx(truth, rel=1e-5)
    assert res.grad_norm == pytest.approx(np.linalg.norm(g.mean(axis=0)), rel=1e-5)


@pytest.fixture(scope="module")
def tiny_mlp():
    keras.utils.set_random_seed(0)
    model = build_model("mlp", 4, (6,), mlp_depth=1, mlp_width=16)  # 6*16+16 + 16*4+4 = 180 parameters
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 4, 64).astype(np.int32)
    loss, grad, h = oracles.mlp_dense_hessian(model, x, y)
    return model, x, y, loss, grad, h


@pytest.mark.parametrize("mode", MODES)
def test_tiny_mlp_hvp_equals_dense_hessian(tiny_mlp, mode):
    model, x, y, loss, grad, h = tiny_mlp
    obj = hvp.keras_objective(model, x, y, batch_size=24, hvp_mode=mode)  # 24+24+16
    assert obj.dim == 180 == h.shape[0]
    assert obj.loss() == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(obj.loss_and_gradient()[1], grad, atol=1e-6 * np.abs(grad).max())
    for seed in range(3):
        v = np.random.default_rng(seed).standard_normal(obj.dim)
        assert np.linalg.norm(obj.hvp(v) - h @ v) <= 1e-5 * np.linalg.norm(h @ v)


@pytest.mark.parametrize("method", eigen.EIG_METHODS)
def test_tiny_mlp_top_eigenvalues(tiny_mlp, method):
    model, x, y, _, _, h = tiny_mlp
    obj = hvp.keras_objective(model, x, y, batch_size=64)
    truth = np.linalg.eigvalsh(h)[::-1]
    k = 5 if method == "lanczos" else 2  # power + deflation: the top two are well separated here
    res = eigen.top_k(obj.hvp, obj.dim, k, method, tol=1e-8 if method == "lanczos" else 1e-7,
                      max_hvps=4000, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, truth[:k], rtol=1e-4)
    assert res.num_hvps == obj.num_hvps


def test_tiny_mlp_trace_and_frobenius(tiny_mlp):
    model, x, y, _, _, h = tiny_mlp
    obj = hvp.keras_objective(model, x, y, batch_size=64)
    res = trace.hutchinson(obj.hvp, obj.dim, rtol=0.02, max_probes=300, seed=0)
    assert res.num_probes == 300 and not res.converged  # Rademacher variance: 2(||H||_F^2 - sum H_ii^2)
    assert res.trace_stderr < 0.05 * np.trace(h)
    assert abs(res.trace - np.trace(h)) <= 3 * res.trace_stderr
    assert res.frobenius_norm == pytest.approx(np.linalg.norm(h), rel=0.05)
    assert abs(res.frobenius_norm - np.linalg.norm(h)) <= 4 * res.frobenius_stderr


def test_tiny_mlp_grad_cov_trace(tiny_mlp):
    model, x, y, *_ = tiny_mlp
    x, y = x[:20], y[:20]
    g = oracles.mlp_per_example_grads(model, x, y)
    truth = float(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)))
    res = sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model), [v.value for v in model.trainable_variables],
                                            hvp.make_batches(x, y, 8), max_floats=180 * 3)  # chunks of 3
    assert res.trace == pytest.approx(truth, rel=1e-5)


def test_weight_decay_shifts_every_eigenvalue(tiny_mlp):
    model, x, y, _, _, h = tiny_mlp
    wd = 0.05
    obj = hvp.keras_objective(model, x, y, batch_size=24, weight_decay=wd)
    v = np.random.default_rng(0).standard_normal(obj.dim)
    assert np.linalg.norm(obj.hvp(v) - (h + wd * np.eye(obj.dim)) @ v) <= 1e-5 * np.linalg.norm(h @ v)
    base = hvp.keras_objective(model, x, y, batch_size=24)
    assert obj.loss() == pytest.approx(base.loss() + 0.5 * wd * float(base.theta @ base.theta), rel=1e-9)
