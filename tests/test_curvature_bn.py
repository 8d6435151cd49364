"""A small conv + BN network: HVP symmetry and linearity, forward-over-reverse = reverse-over-reverse, BN moving
statistics never changed by a measurement (both BN modes), and batch-size weighting of uneven batches."""

import keras
import numpy as np
import pytest

from lrbs_tf.curvature import hvp, sharpness_measures
from lrbs_tf.curvature.line import Evaluator
from lrbs_tf.models.builders import batch_norm


@pytest.fixture(scope="module")
def conv_bn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = batch_norm()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    bn = model.layers[2]
    # Moving statistics far from the batch statistics, so the two BN modes give different Hessians.
    bn.moving_mean.assign(rng.normal(0.0, 0.5, 3).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.3, 3.0, 3).astype(np.float32))
    bn.gamma.assign(rng.uniform(0.5, 1.5, 3).astype(np.float32))
    x = rng.standard_normal((10, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 10).astype(np.int32)
    return model, x, y


@pytest.fixture(scope="module")
def objectives(conv_bn):
    """Objectives shared by the tests (each one traces its tf.functions once: seconds on a busy CPU)."""
    model, x, y = conv_bn
    cache = {}

    def get(bn_mode="inference", hvp_mode="forward_over_reverse", batch_size=4, n=10):
        key = (bn_mode, hvp_mode, batch_size, n)
        if key not in cache:
            cache[key] = hvp.keras_objective(model, x[:n], y[:n], batch_size, bn_mode=bn_mode, hvp_mode=hvp_mode)
        return cache[key]
    return get


def _stats(model):
    return [np.array(v.value) for v in model.non_trainable_variables]


@pytest.mark.parametrize("bn_mode", hvp.BN_MODES)
def test_symmetry_linearity_and_modes_agree(objectives, bn_mode):
    fwd = objectives(bn_mode, "forward_over_reverse")
    rev = objectives(bn_mode, "reverse_over_reverse")
    assert fwd.dim == 2 * 3 * 9 + 3 + 3 + 3 + 108 * 3 + 3
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((2, fwd.dim))
    hu, hv = fwd.hvp(u), fwd.hvp(v)
    scale = np.linalg.norm(hu) * np.linalg.norm(v)
    assert abs(u @ hv - v @ hu) <= 1e-5 * scale
    a, b = 0.7, -2.3
    np.testing.assert_allclose(fwd.hvp(a * u + b * v), a * hu + b * hv, atol=1e-5 * np.linalg.norm(hu))
    np.testing.assert_allclose(rev.hvp(u), hu, atol=1e-5 * np.linalg.norm(hu))
    assert u @ hu != 0.0


def test_bn_modes_measure_different_hessians(objectives):
    v = np.random.default_rng(2).standard_normal(objectives().dim)
    h_inf = objectives("inference").hvp(v)
    h_batch = objectives("batch").hvp(v)
    assert np.linalg.norm(h_inf - h_batch) > 0.1 * np.linalg.norm(h_inf)


@pytest.mark.parametrize("bn_mode", hvp.BN_MODES)
def test_measurements_never_change_bn_statistics(conv_bn, objectives, bn_mode):
    model, x, y = conv_bn
    before = _stats(model)
    trainable = [np.array(v.value) for v in model.trainable_variables]
    obj = objectives(bn_mode)
    obj.hvp(np.ones(obj.dim))
    objectives(bn_mode, "reverse_over_reverse").hvp(np.ones(obj.dim))
    obj.loss_and_gradient()
    sharpness_measures.eps_sharpness(obj, eps=1e-2, steps=2)
    sharpness_measures.average_sharpness(obj, sigma=1e-2, draws=2)
    # Per-example gradients in either mode (batch mode: rows of each batch's Jacobian, training-mode calls).
    sharpness_measures.grad_cov_trace(hvp.keras_losses_fn(model, bn_mode), obj.params, obj.batches,
                                      jacobian=bn_mode == "batch")
    if bn_mode == "batch":
        Evaluator(model).recompute_bn(trainable, before, obj.batches)  # training-mode forward passes
    for b, a in zip(before, _stats(model)):
        np.testing.assert_array_equal(a, b)
    for t, v in zip(trainable, model.trainable_variables):
        np.testing.assert_array_equal(np.array(v.value), t)
    # The test has teeth: a training-mode call of the model itself does move them.
    model(x, training=True)
    assert not np.array_equal(_stats(model)[0], before[0])
    for var, value in zip(model.non_trainable_variables, before):
        var.assign(value)


def test_uneven_last_batch_is_weighted_by_its_size(objectives):
    one = objectives(batch_size=10)                       # one batch of 10
    split = objectives(batch_size=4)                      # 4 + 4 + 2
    np.testing.assert_allclose(split.batch_weights, [0.4, 0.4, 0.2])
    v = np.random.default_rng(3).standard_normal(one.dim)
    target = one.hvp(v)
    np.testing.assert_allclose(split.hvp(v), target, atol=1e-5 * np.linalg.norm(target))
    assert split.loss() == pytest.approx(one.loss(), rel=1e-6)
    np.testing.assert_allclose(split.loss_and_gradient()[1], one.loss_and_gradient()[1], atol=1e-6)
    # An unweighted mean over the three batches (a known mistake) is measurably different:
    # H = 0.8 H_first8 + 0.2 H_last2, so H_last2 v follows from the first 8 examples' product.
    first8 = objectives(batch_size=4, n=8).hvp(v)
    last2 = (target - 0.8 * first8) / 0.2
    unweighted = (2 * first8 + last2) / 3
    assert np.linalg.norm(unweighted - target) > 1e-2 * np.linalg.norm(target)
