"""Intrinsic learning rate: a simulated scale-invariant model against Li, Lyu & Arora's equilibrium."""

import math

import numpy as np
import pytest

from lrbs_tf.theory import intrinsic_lr as ilr

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def _simulate(lr, wd, steps, chains=200, dim=16, sigma=1.0, init_norm_sq=1.0, seed=0):
    """SGD with weight decay on a loss that depends on w only through u = w/||w|| (f(u) = 0.5 u'Qu) plus
    isotropic gradient noise: the gradient at scale ||w|| is (I - uu')(Qu + sigma z) / ||w||, orthogonal to w.
    Returns per step t = 0, 1, ... (before that step's update) the means over chains of ||w_t||^2, of
    ||g_unit||^2 = ||(I - uu')(Qu + sigma z)||^2 and of ||g||^2 = ||g_unit||^2 / ||w_t||^2."""
    rng = np.random.default_rng(seed)
    q = np.linspace(0.0, 1.0, dim)
    w = rng.standard_normal((chains, dim))
    w *= np.sqrt(init_norm_sq / np.sum(w * w, axis=1, keepdims=True))
    norm_sq, unit_grad_sq, grad_sq = np.empty(steps), np.empty(steps), np.empty(steps)
    for t in range(steps):
        n2 = np.sum(w * w, axis=1, keepdims=True)
        u = w / np.sqrt(n2)
        gu = q * u + sigma * rng.standard_normal(w.shape)
        gu -= np.sum(gu * u, axis=1, keepdims=True) * u  # scale invariance: no component along w
        w = (1.0 - lr * wd) * w - lr * gu / np.sqrt(n2)
        norm_sq[t] = n2.mean()
        unit_grad_sq[t] = np.mean(np.sum(gu * gu, axis=1))
        grad_sq[t] = np.mean(np.sum(gu * gu, axis=1) / n2[:, 0])
    return norm_sq, unit_grad_sq, grad_sq


@pytest.fixture(scope="module")
def runs():
    out = {}
    # lambda_e = 1e-3, 1e-3, 4e-3; different seeds, so equal effective LRs are not a replay of one noise path
    for seed, (lr, wd) in enumerate(((0.1, 0.01), (0.02, 0.05), (0.1, 0.04))):
        n2, g, _ = _simulate(lr, wd, steps=3000, init_norm_sq=2.0, seed=seed)
        tail = slice(1500, None)  # 1500 steps = 6 relaxation times at lambda_e = 1e-3
        out[(lr, wd)] = (float(n2[tail].mean()), float(g[tail].mean()))
    return out


def test_equilibrium_norm_matches_the_prediction(runs):
    for (lr, wd), (norm_sq, g) in runs.items():
        assert norm_sq == pytest.approx(ilr.equilibrium_norm_sq(lr, wd, g), rel=0.02)
        assert norm_sq == pytest.approx(ilr.norm_sq_from_grad_norm_sq(lr, wd, g / norm_sq), rel=0.02)
        assert ilr.implied_unit_grad_norm_sq(ilr.equilibrium_norm_sq(lr, wd, g), lr, wd) == pytest.approx(g, rel=1e-12)


def test_the_discrete_factor_2_minus_lambda_e_is_needed_at_large_lambda_e():
    lr, wd = 1.0, 0.5  # lambda_e = 0.5: (2 - lambda_e) / 2 = 0.75
    n2, _, gsq = _simulate(lr, wd, steps=400, seed=3)
    norm_sq, grad_sq = float(n2[100:].mean()), float(gsq[100:].mean())
    # The exact stationary balance E||w||^2 lambda_e (2 - lambda_e) = lr^2 E||g||^2 ...
    assert norm_sq == pytest.approx(ilr.norm_sq_from_grad_norm_sq(lr, wd, grad_sq), rel=0.01)
    assert abs(norm_sq / (lr * grad_sq / (2 * wd)) - 1) > 0.2  # ... which the small-lambda_e form misses


def test_equal_intrinsic_lr_gives_equal_effective_lr(runs):
    (n_a, g_a), (n_b, _), (n_c, g_c) = runs[(0.1, 0.01)], runs[(0.02, 0.05)], runs[(0.1, 0.04)]
    eff_a, eff_b, eff_c = 0.1 / n_a, 0.02 / n_b, 0.1 / n_c
    assert ilr.intrinsic_lr(0.1, 0.01) == pytest.approx(ilr.intrinsic_lr(0.02, 0.05))
    assert eff_a == pytest.approx(eff_b, rel=0.03)
    assert n_a / n_b == pytest.approx(0.1 / 0.02, rel=0.03)  # the norm grows like lr at fixed lambda_e
    # A 4x larger lambda_e: effective LR sqrt(4 (2 - 0.004) / (2 - 0.001)) ~ 2x larger, as predicted.
    predicted = ilr.equilibrium_effective_lr(0.1, 0.04, g_c) / ilr.equilibrium_effective_lr(0.1, 0.01, g_a)
    assert eff_c / eff_a == pytest.approx(predicted, rel=0.04)
    assert eff_c / eff_a > 1.8


def test_approach_to_equilibrium_follows_the_norm_recursion():
    lr, wd = 0.05, 0.04  # lambda_e = 2e-3: relaxation time ~ 1 / (4 lambda_e) = 125 steps
    n2, g, _ = _simulate(lr, wd, steps=1200, init_norm_sq=0.05, seed=1)
    pred = ilr.norm_sq_trajectory(0.05, lr, wd, float(g.mean()), 1199)  # ||w_t||^2 for t = 0..1199
    np.testing.assert_allclose(n2, pred, rtol=0.03)
    assert ilr.relaxation_steps(lr, wd) == pytest.approx(1 / (4 * lr * wd), rel=0.01)
    # the gap to equilibrium shrinks by the predicted factor per step once close (linearisation)
    eq = ilr.equilibrium_norm_sq(lr, wd, float(g.mean()))
    late = np.abs(pred[300:] - eq)
    rate = np.exp(np.mean(np.diff(np.log(late[late > 1e-9 * eq]))))
    assert rate == pytest.approx(math.exp(-1 / ilr.relaxation_steps(lr, wd)), rel=1e-3)


def test_no_equilibrium_without_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        ilr.equilibrium_norm_sq(0.1, 0.0, 1.0)
