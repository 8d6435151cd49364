"""He et al. (2019) bounds: the algebra behind Theorems 1 and 2, Assumption 2 and the sharpness.json surrogate."""

import math

import numpy as np
import pytest

from lrbs_tf.theory import bounds, ou

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def _matrices(commuting, d=6, seed=0):
    rng = np.random.default_rng(seed)
    qa, _ = np.linalg.qr(rng.normal(size=(d, d)))
    h = np.geomspace(0.1, 5.0, d)
    a = qa @ np.diag(h) @ qa.T
    if commuting:
        c = qa @ np.diag(np.linspace(0.3, 2.0, d)) @ qa.T
    else:
        qc, _ = np.linalg.qr(rng.normal(size=(d, d)))
        c = qc @ np.diag(np.linspace(0.3, 2.0, d)) @ qc.T
    return a, c


@pytest.mark.parametrize("commuting", [True, False])
def test_trace_sigma_is_lr_over_2s_trace_c_ainv(commuting):
    a, c = _matrices(commuting)
    lr, s = 0.07, 12.0
    sigma = ou.continuous_stationary_covariance(a, c, lr, s)
    assert np.trace(sigma) == pytest.approx(lr / (2 * s) * np.trace(c @ np.linalg.inv(a)), rel=1e-10)
    b = bounds.theorem1(a, c, lr, s, num_train=50_000, delta=0.05)
    assert b.trace_sigma == pytest.approx(np.trace(sigma), rel=1e-10)
    # Theorem 1 is McAllester's bound with KL(N(0, Sigma) || N(0, I)) computed from Sigma itself.
    kl = 0.5 * (np.trace(sigma) - a.shape[0] - np.linalg.slogdet(sigma)[1])
    assert b.gap == pytest.approx(bounds.mcallester_gap(kl, 50_000, 0.05), rel=1e-10)
    assert b.kl == pytest.approx(kl, rel=1e-10)


def test_theorem2_equals_theorem1_when_c_commutes_with_a_and_not_otherwise():
    lr, s, n, delta = 0.05, 8.0, 10_000, 0.01
    a, c = _matrices(True)
    t1, t2 = bounds.theorem1(a, c, lr, s, n, delta), bounds.theorem2_dense(a, c, lr, s, n, delta)
    assert t2.gap == pytest.approx(t1.gap, rel=1e-10)
    assert t2.numerator * 2 == pytest.approx(t1.numerator, rel=1e-10)  # eq. 16 is eq. 18 times 2/2
    assert t2.logdet_sigma == pytest.approx(t1.logdet_sigma, rel=1e-10)
    assert bounds.commutator_norm(a, c) < 1e-12
    a, c = _matrices(False)
    k = bounds.commutator_norm(a, c)
    assert k == pytest.approx(np.linalg.norm(a @ c - c @ a) / (np.linalg.norm(a) * np.linalg.norm(c)), rel=1e-12)
    with pytest.raises(ValueError, match=f"C and A do not commute .* = {k:.3g} > 1e-08"):
        bounds.theorem2_dense(a, c, lr, s, n, delta)
    with pytest.warns(RuntimeWarning, match=f"= {k:.3g}"):
        t2 = bounds.theorem2_dense(a, c, lr, s, n, delta, allow_noncommuting=True)
    t1 = bounds.theorem1(a, c, lr, s, n, delta)
    assert abs(t2.logdet_sigma - t1.logdet_sigma) > 0.05  # Assumption 1 matters: hence the refusal


def test_assumption2_holds_exactly_where_the_bound_falls_with_lr_over_s():
    rng = np.random.default_rng(1)
    d = 50
    h = np.geomspace(1e-2, 10.0, d)
    c = h * rng.uniform(0.5, 2.0, d)
    t, ld = float(np.sum(c / h)), float(np.sum(np.log(c / h)))
    n = 1000
    flip = bounds.sign_flip_ratio(t, d)
    assert flip == pytest.approx(2 * d / t)

    def gap(k):
        return bounds.theorem2(t, ld, d, k, 1.0, n).gap

    for k in (flip * 0.2, flip * 0.9, flip * 0.999, flip * 1.001, flip * 1.1, flip * 5.0):
        eps = k * 1e-6
        fd = (gap(k + eps) - gap(k - eps)) / (2 * eps)
        assert fd == pytest.approx(bounds.theorem2_slope(t, d, k, gap(k), n), rel=1e-4)
        holds = bounds.assumption2(t, d, k, 1.0)
        assert holds == (k < flip)
        assert (fd < 0) == holds  # falls with eta/S (rises with S/eta) exactly while d > tr Sigma
    ks = np.geomspace(flip / 100, flip * 100, 2001)
    sweep = bounds.sweep_ratio(t, ld, d, ks, n)
    assert ks[np.argmin(sweep["gap"])] == pytest.approx(flip, rel=5e-3)
    np.testing.assert_array_equal(sweep["assumption2"], sweep["trace_sigma"] < d)
    np.testing.assert_array_equal(sweep["slope"] < 0, sweep["assumption2"])


def test_closed_form_diagonal_sigma_equals_scipy_and_enters_both_theorems():
    h = np.array([0.5, 1.0, 3.0])
    c = np.array([0.2, 2.0, 1.0])
    lr, s = 0.1, 4.0
    sigma = ou.continuous_stationary_covariance(np.diag(h), np.diag(c), lr, s)
    np.testing.assert_allclose(np.diag(sigma), ou.stationary_variances(h, c, lr, s, discrete=False), rtol=1e-12)
    np.testing.assert_allclose(sigma - np.diag(np.diag(sigma)), 0.0, atol=1e-15)
    t2 = bounds.theorem2(float(np.sum(c / h)), float(np.sum(np.log(c / h))), 3, lr, s, 100, 0.1)
    assert t2.logdet_sigma == pytest.approx(np.sum(np.log(np.diag(sigma))), rel=1e-12)
    # eq. 18 written out by hand
    k = lr / s
    num = (k / 2 * np.sum(c / h) + 3 * math.log(2 / k) - np.sum(np.log(c / h)) - 3 + 2 * math.log(10)
           + 2 * math.log(100) + 4)
    assert t2.gap == pytest.approx(math.sqrt(num / (4 * 100 - 2)), rel=1e-12)


def test_stable_logdet_survives_where_det_underflows():
    m = np.diag(np.full(400, 1e-3))
    assert np.linalg.det(m) == 0.0  # underflow
    assert bounds.stable_logdet(m) == pytest.approx(400 * math.log(1e-3), rel=1e-12)
    with pytest.raises(ValueError, match="positive definite"):
        bounds.stable_logdet(np.diag([1.0, -1.0]))


@pytest.mark.parametrize("noise_model", ["proportional", "isotropic"])
def test_surrogate_equals_explicit_matrices(noise_model):
    d, top, trace_a, trace_c = 12, [5.0, 3.0, 2.0], 16.0, 7.0
    sur = bounds.surrogate(top, trace_a, trace_c, d, noise_model)
    h = np.array(top + [(trace_a - 10.0) / (d - 3)] * (d - 3))
    assert h.sum() == pytest.approx(trace_a)
    c = trace_c / trace_a * h if noise_model == "proportional" else np.full(d, trace_c / d)
    assert c.sum() == pytest.approx(trace_c)
    dense = bounds.theorem2_dense(np.diag(h), np.diag(c), 0.1, 32.0, 4000)
    fast = bounds.theorem2(sur.trace_cainv, sur.logdet_cainv, d, 0.1, 32.0, 4000)
    assert fast.gap == pytest.approx(dense.gap, rel=1e-12)
    with pytest.raises(ValueError, match="cannot be positive"):
        bounds.surrogate(top, 10.0, trace_c, d, noise_model)
    with pytest.raises(ValueError, match="not a minimum"):
        bounds.surrogate([5.0, -1.0], trace_a, trace_c, d, noise_model)


def test_bound_is_vacuous_for_a_realistic_network():
    # ResNet-110-sized d on CIFAR-10's N, curvature and noise of plausible magnitude.
    record = {"num_params": 1_730_714, "top_eigenvalues": [120.0, 80.0, 60.0], "trace": 2.0e3,
              "grad_cov_trace": 40.0, "num_examples": 2048}
    rep = bounds.bound_report(record, lr=0.1, batch_size=128, num_train=50_000)
    assert rep["vacuous"] and rep["gap_bound"] > 5  # d log(2S/eta) dwarfs N
    assert rep["assumption2"]
    # With C proportional to A the minimum over eta/S sits where Sigma = I, the prior: KL = 0 there, at an
    # eta/S = 2 tr A / tr C = 100 no one trains with.
    assert rep["flip_lr_over_batch_size"] == pytest.approx(2 * 2.0e3 / 40.0)
    assert rep["gap_bound_at_flip"] < 0.02 < 1 < rep["gap_bound"]
    assert rep["gap_bound_at_flip"] == pytest.approx(min(rep["sweep"]["gap"]), rel=1e-2)
    with pytest.raises(ValueError, match="grad_cov_trace"):
        bounds.bound_report({**record, "grad_cov_trace": None}, 0.1, 128, 50_000)
