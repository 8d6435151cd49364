"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 and its jackknife standard error: the group algebra
against deleting each group from a gradient matrix in numpy, the estimator's bias and the standard error's
calibration by simulation, and bin/sharpness's per-example pass (both BN modes) against float64 per-example
gradients of a small model."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lrbs_tf.curvature import hvp, noise_scale, sharpness_measures
from lrbs_tf.curvature.settings import QUANTITY_STREAMS
from lrbs_tf.models.builders import build_model
from tests import curvature_oracles as oracles


def _estimate(g: np.ndarray) -> tuple[float, float, float]:
    """(B_simple, S, U) straight from a gradient matrix (n, d), in numpy."""
    n = len(g)
    mean = g.mean(axis=0)
    s = float(np.sum((g - mean) ** 2) / (n - 1))
    u = float(mean @ mean - s / n)
    return s / u, s, u


def _jackknife_numpy(g: np.ndarray, sizes: list[int]) -> tuple[float, float]:
    """Delete-a-group jackknife standard errors of (B_simple, U), each group deleted from the matrix itself."""
    bounds = np.cumsum([0, *sizes])
    b, _, u = _estimate(g)
    dels = [_estimate(np.delete(g, np.arange(i, j), axis=0)) for i, j in zip(bounds[:-1], bounds[1:])]
    n, sz = len(g), np.asarray(sizes, float)
    h = n / sz

    def se(theta, thetas):
        thetas = np.asarray(thetas)
        pseudo = h * theta - (h - 1) * thetas
        tj = len(sz) * theta - np.sum((1 - sz / n) * thetas)
        return math.sqrt(np.sum((pseudo - tj) ** 2 / (h - 1)) / len(sz))

    return se(b, [d[0] for d in dels]), se(u, [d[2] for d in dels])


def _group_sums(g: np.ndarray, sizes: list[int]) -> dict:
    mean = g.mean(axis=0)
    d = g - mean
    bounds = np.cumsum([0, *sizes])
    parts = [d[i:j] for i, j in zip(bounds[:-1], bounds[1:])]
    return dict(gbar_sq=float(mean @ mean), sizes=sizes, q=[float(np.sum(p ** 2)) for p in parts],
                p=[float(mean @ p.sum(axis=0)) for p in parts], r=[float(np.sum(p.sum(axis=0) ** 2)) for p in parts])


def test_group_algebra_equals_deleting_each_group_from_the_gradients():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((37, 9)) + 0.6  # |G|^2 = 9 * 0.36, tr Sigma = 9: B_simple ~ 2.8
    sizes = [5, 5, 5, 5, 5, 4, 4, 4]
    res = noise_scale.from_groups(**_group_sums(g, sizes))
    b, s, u = _estimate(g)
    se_b, se_u = _jackknife_numpy(g, sizes)
    assert res.b_simple == pytest.approx(b, rel=1e-10) and res.cov_trace == pytest.approx(s, rel=1e-12)
    assert res.grad_sq == pytest.approx(u, rel=1e-10)
    assert res.stderr == pytest.approx(se_b, rel=1e-8) and res.grad_sq_stderr == pytest.approx(se_u, rel=1e-8)
    assert res.groups == 8 and res.num_examples == 37 and res.resolved
    # Equal groups: the textbook formula sqrt((K - 1) / K sum (theta_(k) - mean)^2).
    g = g[:32]
    res = noise_scale.from_groups(**_group_sums(g, [4] * 8))
    thetas = np.array([_estimate(np.delete(g, np.arange(4 * k, 4 * k + 4), axis=0))[0] for k in range(8)])
    assert res.stderr == pytest.approx(math.sqrt(7 / 8 * np.sum((thetas - thetas.mean()) ** 2)), rel=1e-8)


def test_the_unbiased_grad_sq_is_unbiased_and_the_standard_error_is_calibrated():
    """5,000 samples of n = 256 Gaussian per-example gradients with known G and Sigma (B_simple = 32): the
    mean of U is |G|^2 (the plug-in |g_bar|^2 is biased by tr Sigma / n), and the jackknife standard error
    of B_simple matches the spread of the estimates."""
    rng = np.random.default_rng(1)
    n, d = 256, 16
    scales = np.linspace(0.5, 1.5, d)  # Sigma = diag(scales^2)
    trace_sigma = float(np.sum(scales ** 2))
    mean = np.full(d, math.sqrt(trace_sigma / 32 / d))  # |G|^2 = tr Sigma / 32
    b, u, se, plug_in = [], [], [], []
    for _ in range(5000):
        g = mean + scales * rng.standard_normal((n, d))
        res = noise_scale.from_groups(**_group_sums(g, [8] * 32))
        b.append(res.b_simple)
        u.append(res.grad_sq)
        se.append(res.stderr)
        plug_in.append(float(g.mean(0) @ g.mean(0)))
    g_sq = float(mean @ mean)
    assert abs(np.mean(u) - g_sq) < 4 * np.std(u) / math.sqrt(len(u))
    assert np.mean(plug_in) - g_sq == pytest.approx(trace_sigma / n, rel=0.1)  # what the correction removes
    assert np.median(b) == pytest.approx(32, rel=0.05)
    assert np.median(se) == pytest.approx(np.std(b), rel=0.2)


def test_a_mean_gradient_lost_in_the_noise_gives_no_b_simple():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((64, 5))  # G = 0
    g -= g.mean(axis=0)  # |g_bar|^2 = 0 exactly: U = -S / n < 0
    res = noise_scale.from_groups(**_group_sums(g, [8] * 8))
    assert math.isnan(res.b_simple) and res.grad_sq < 0 and not res.resolved
    assert "not resolved from the noise by 64 examples" in res.note
    assert res.fields()["noise_scale"] is None


def test_noise_scale_has_its_own_new_random_stream():
    assert QUANTITY_STREAMS["noise_scale"] == 6
    ids = list(QUANTITY_STREAMS.values())
    assert len(set(ids)) == len(ids)
    assert {k: QUANTITY_STREAMS[k] for k in ("eigenvalues", "trace", "spectrum", "eps_sharpness", "avg_sharpness",
                                             "grad_cov")} == dict(zip(("eigenvalues", "trace", "spectrum",
                                                                       "eps_sharpness", "avg_sharpness",
                                                                       "grad_cov"), range(6)))


@pytest.fixture(scope="module")
def bn_mlp():
    keras.utils.set_random_seed(0)
    model = build_model("mlp", 3, (6,), mlp_depth=1, mlp_width=8, mlp_batch_norm=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60).astype(np.int32)
    # 70% of the labels class 0: a mean gradient well above the noise of 60 examples (B_simple ~3 inference
    # mode, ~7 batch mode), so the jackknife's deletions all keep U > 0 and the standard errors are finite.
    y = np.where(rng.random(60) < 0.7, 0, y).astype(np.int32)
    model(x, training=True)  # BN moving statistics away from their initial 0 / 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(0.1 * np.ones(layer.moving_mean.shape))
            layer.moving_variance.assign(1.5 * np.ones(layer.moving_variance.shape))
    return model, x, y


def test_inference_mode_matches_numpy_from_the_same_per_example_gradients(bn_mlp):
    model, x, y = bn_mlp
    g = oracles.mlp_per_example_grads(model, x, y)  # float64, BN moving statistics
    params = [v.value for v in model.trainable_variables]
    res = sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model, "inference"), params,
                                            hvp.make_batches(x, y, 25), groups=10)
    sizes = [5] * 12  # batches 25, 25, 10, each cut into the fewest pieces of at most ceil(60 / 10) = 6
    assert res.noise.groups == len(sizes) and res.noise.resolved
    b, s, u = _estimate(g)
    se_b, se_u = _jackknife_numpy(g, sizes)
    assert res.trace == pytest.approx(np.mean(np.sum((g - g.mean(0)) ** 2, axis=1)), rel=1e-5)
    assert res.noise.b_simple == pytest.approx(b, rel=1e-4)
    assert res.noise.grad_sq == pytest.approx(u, rel=1e-4) and res.noise.cov_trace == pytest.approx(s, rel=1e-5)
    assert res.noise.stderr == pytest.approx(se_b, rel=1e-3)
    assert res.noise.grad_sq_stderr == pytest.approx(se_u, rel=1e-3)


def test_batch_mode_per_example_gradients_are_rows_of_each_batch_jacobian(bn_mlp):
    """Batch-mode BN: g_i is differentiated through its batch's statistics; the rows average to the batch
    gradient, and tr C, B_simple and the jackknife (one group per batch) match numpy on those rows."""
    model, x, y = bn_mlp
    batches = [(0, 20), (20, 40), (40, 60)]
    g = np.concatenate([oracles.mlp_per_example_grads(model, x[i:j], y[i:j], batch_stats=True)
                        for i, j in batches])
    params = [v.value for v in model.trainable_variables]
    obj = hvp.keras_objective(model, x, y, 20, bn_mode="batch")
    np.testing.assert_allclose(obj.loss_and_gradient()[1], g.mean(axis=0), atol=1e-6)
    res = sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model, "batch"), params,
                                            hvp.make_batches(x, y, 20), jacobian=True)
    assert res.noise.groups == 3 and res.noise.resolved
    assert res.trace == pytest.approx(np.mean(np.sum((g - g.mean(0)) ** 2, axis=1)), rel=1e-5)
    b, _, _ = _estimate(g)
    assert res.noise.b_simple == pytest.approx(b, rel=1e-4)
    assert res.noise.stderr == pytest.approx(_jackknife_numpy(g, [20, 20, 20])[0], rel=1e-3)
    # And they are not the inference-mode gradients: the mode changes the number.
    inference = sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model, "inference"), params,
                                                  hvp.make_batches(x, y, 20))
    assert abs(inference.trace - res.trace) > 0.05 * res.trace
