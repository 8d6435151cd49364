"""SGD on a quadratic as an OU process: closed forms against scipy and against Monte Carlo SGD."""

import numpy as np
import pytest

from lrbs_tf.theory import ou

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _problem(seed=0, h=(2.0, 2.5, 3.0, 4.0)):
    """A (eigenvalues h) and a C whose eigenvectors are unrelated to A's: they do not commute."""
    rng = np.random.default_rng(seed)
    d = len(h)
    qa, _ = np.linalg.qr(rng.normal(size=(d, d)))
    qc, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = qa @ np.diag(h) @ qa.T
    c = qc @ np.diag(np.linspace(0.5, 3.0, d)) @ qc.T
    assert np.linalg.norm(a @ c - c @ a) > 0.5  # genuinely non-commuting
    return a, c


def _simulate_sgd(a, c, lr, batch_size, chains, burn_in, steps, seed, every=2):
    """Empirical stationary E[theta theta'] of theta <- theta - lr (A theta + xi), xi ~ N(0, C/S),
    over `chains` independent chains (vectorised) and every `every`-th of `steps` steps after `burn_in`
    (successive steps are strongly correlated anyway), from theta_0 = 0."""
    rng = np.random.default_rng(seed)
    d = a.shape[0]
    noise = lr * np.linalg.cholesky(c / batch_size).T
    m = np.eye(d) - lr * a  # symmetric
    theta = np.zeros((chains, d))
    acc, n = np.zeros((d, d)), 0
    for t in range(burn_in + steps):
        theta = theta @ m - rng.standard_normal((chains, d)) @ noise
        if t >= burn_in and t % every == 0:
            acc += theta.T @ theta
            n += chains
    return acc / n


def test_mc_matches_discrete_lyapunov_and_continuous_only_at_small_lr():
    a, c = _problem()
    lam_max = 4.0
    # Small eta * lambda_max = 0.02: discrete and continuous agree to ~1%, and both match SGD. Burn-in:
    # the slowest mode forgets theta_0 = 0 like (1 - eta lambda_min)^(2t) = e^-12 after 600 steps.
    lr, s = 0.02 / lam_max, 4.0
    emp = _simulate_sgd(a, c, lr, s, chains=20_000, burn_in=600, steps=600, seed=1)
    disc = ou.discrete_stationary_covariance(a, c, lr, s)
    cont = ou.continuous_stationary_covariance(a, c, lr, s)
    assert _rel(emp, disc) < 0.02
    assert _rel(emp, cont) < 0.02
    # Large eta * lambda_max = 1.6: the top mode's variance is 1/(1 - 0.8) = 5x the continuous one.
    lr = 1.6 / lam_max
    emp = _simulate_sgd(a, c, lr, s, chains=20_000, burn_in=40, steps=200, seed=2)
    disc = ou.discrete_stationary_covariance(a, c, lr, s)
    cont = ou.continuous_stationary_covariance(a, c, lr, s)
    assert _rel(emp, disc) < 0.02
    assert _rel(emp, cont) > 0.5  # the continuous solution is not within tolerance here


def test_closed_form_eigenbasis_solutions_equal_scipy_for_non_commuting_c():
    a, c = _problem(seed=3, h=(0.3, 1.0, 2.0, 5.0, 7.0))
    for lr in (0.01, 0.2):
        s = 8.0
        np.testing.assert_allclose(ou.eigenbasis_stationary_covariance(a, c, lr, s, discrete=False),
                                   ou.continuous_stationary_covariance(a, c, lr, s), rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(ou.eigenbasis_stationary_covariance(a, c, lr, s, discrete=True),
                                   ou.discrete_stationary_covariance(a, c, lr, s), rtol=1e-9, atol=1e-14)


def test_commuting_closed_forms_and_stationary_loss():
    rng = np.random.default_rng(4)
    h = np.array([0.2, 0.7, 1.0, 3.0, 9.0])
    cvals = np.array([1.0, 0.5, 2.0, 0.1, 4.0])
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, c = q @ np.diag(h) @ q.T, q @ np.diag(cvals) @ q.T  # commuting
    lr, s = 0.15, 16.0
    for discrete in (False, True):
        dense = (ou.discrete_stationary_covariance if discrete else ou.continuous_stationary_covariance)(a, c, lr, s)
        np.testing.assert_allclose(np.diag(q.T @ dense @ q),
                                   ou.stationary_variances(h, cvals, lr, s, discrete), rtol=1e-9)
        np.testing.assert_allclose(ou.dense_stationary_loss(a, dense),
                                   ou.expected_stationary_loss(h, cvals, lr, s, discrete), rtol=1e-9)
    # Per-mode ratio discrete / continuous = 1 / (1 - lr h / 2).
    np.testing.assert_allclose(ou.stationary_variances(h, cvals, lr, s, True)
                               / ou.stationary_variances(h, cvals, lr, s, False),
                               ou.discrete_over_continuous(h, lr), rtol=1e-12)
    # Jastrzebski eq. 7 with C = A: E[loss] = lr/(4S) tr A; discrete: sum lr h / (2S (2 - lr h)).
    assert ou.expected_stationary_loss(h, h, lr, s, discrete=False) == pytest.approx(lr / (4 * s) * h.sum(), rel=1e-12)
    assert ou.expected_stationary_loss(h, h, lr, s, discrete=True) == pytest.approx(
        float(np.sum(lr * h / (2 * s * (2 - lr * h)))), rel=1e-12)


def test_continuous_stationary_loss_is_lr_over_4s_trace_c_even_without_commuting():
    a, c = _problem(seed=5)
    lr, s = 0.05, 32.0
    sigma = ou.continuous_stationary_covariance(a, c, lr, s)
    assert ou.dense_stationary_loss(a, sigma) == pytest.approx(lr / (4 * s) * np.trace(c), rel=1e-10)


def test_stability_limit_and_divergence():
    a, c = _problem()
    assert ou.stability_limit(4.0) == 0.5
    sigma = ou.discrete_stationary_covariance(a, c, 0.499, 1.0)  # just stable: solvable, with the top
    # mode's variance 1/(1 - 0.499 * 4 / 2) = 500x its continuous value
    top = np.linalg.eigh(a)[1][:, -1]
    cont = ou.continuous_stationary_covariance(a, c, 0.499, 1.0)
    assert top @ sigma @ top > 100 * (top @ cont @ top)
    with pytest.raises(ValueError, match=">= 2"):
        ou.discrete_stationary_covariance(a, c, 0.5001, 1.0)
    with pytest.raises(ValueError, match=">= 2"):
        ou.stationary_variances(np.array([1.0, 4.0]), np.ones(2), 0.5, 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        ou.continuous_stationary_covariance(-a, c, 0.1, 1.0)
