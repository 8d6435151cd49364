"""Noisy Quadratic Model: closed forms against the moment recursion, Monte Carlo and brute-force stepping;
the tuned sweep reproduces the NQM paper's qualitative picture."""

import math

import numpy as np
import pytest

from lrbs_tf.theory import nqm
from lrbs_tf.theory.nqm_tune import tune_grid

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def _small(dim=6, target=0.01):
    h = np.array([1.0, 0.5, 0.25, 0.1, 0.05, 0.02])[:dim]
    return nqm.NQMProblem(h, h.copy(), np.ones(dim), target)


def _iterate_moments(problem, optimizer, lr, batch_size, steps, momentum=0.0, ema_decay=0.0, p=0.5):
    """Expected loss for t = 1..steps by stepping the second-moment recursions written out per optimizer
    (REFERENCES §4: the 3x3 heavy-ball matrix T; the EMA moments derived by hand)."""
    h, c, s0 = problem.curvatures, problem.noise, problem.init_second_moment
    pp = p if optimizer.startswith("precond") else 0.0
    x, q = lr * h ** (1 - pp), lr ** 2 * h ** (-2 * pp) * c / batch_size
    out = []
    if optimizer in ("momentum", "precond_momentum"):
        b = momentum
        tt, vv, tv = s0.copy(), np.zeros_like(s0), np.zeros_like(s0)
        for _ in range(steps):
            tt, vv, tv = ((1 - x) ** 2 * tt + b * b * vv + 2 * (1 - x) * b * tv + q,
                          x * x * tt + b * b * vv - 2 * x * b * tv + q,
                          -(1 - x) * x * tt + b * b * vv + (1 - 2 * x) * b * tv + q)
            out.append(0.5 * np.sum(h * tt))
    elif optimizer == "ema":
        g, r = ema_decay, 1 - x
        tt, te, ee = s0.copy(), s0.copy(), s0.copy()  # E th^2, E th*ema, E ema^2
        for _ in range(steps):
            tt, te, ee = (r * r * tt + q,
                          g * r * te + (1 - g) * (r * r * tt + q),
                          g * g * ee + 2 * g * (1 - g) * r * te + (1 - g) ** 2 * (r * r * tt + q))
            out.append(0.5 * np.sum(h * ee))
    else:
        tt = s0.copy()
        for _ in range(steps):
            tt = (1 - x) ** 2 * tt + q
            out.append(0.5 * np.sum(h * tt))
    return np.array(out)


CASES = [  # (optimizer, lr, batch_size, momentum, ema_decay)
    ("sgd", 1.2, 8.0, 0.0, 0.0),
    ("sgd", 1.9, math.inf, 0.0, 0.0),
    ("precond", 0.7, 8.0, 0.0, 0.0),
    ("momentum", 0.5, 16.0, 0.9, 0.0),   # under- and overdamped coordinates
    ("momentum", 3.0, 16.0, 0.9, 0.0),   # x > 1 + beta: negative roots
    ("momentum", 20 * (1 - 0.9 ** 0.5) ** 2, 64.0, 0.9, 0.0),  # h = 1/20 exactly critically damped
    ("momentum", 1.0, 32.0, 0.0, 0.0),   # beta = 0 is SGD; x = 1 makes M nilpotent at h = 1
    ("precond_momentum", 1.0, 32.0, 0.95, 0.0),
    ("ema", 1.5, 8.0, 0.0, 0.9),
    ("ema", 0.02, 8.0, 0.0, 0.98),       # r = gamma at h = 1: a double root
]


@pytest.mark.parametrize("optimizer,lr,batch,beta,gamma", CASES)
def test_closed_form_equals_moment_recursion(optimizer, lr, batch, beta, gamma):
    problem = nqm.default_problem(dim=200)
    steps = 1000
    ref = _iterate_moments(problem, optimizer, lr, batch, steps, beta, gamma)
    got = nqm.expected_loss(problem, optimizer, lr, batch, np.arange(1, steps + 1), momentum=beta, ema_decay=gamma)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-300)


def _monte_carlo(problem, optimizer, lr, batch_size, record, momentum=0.0, ema_decay=0.0, p=0.5,
                 chains=20_000, seed=0):
    """Mean loss 0.5 sum h theta^2 over `chains` simulated runs with Gaussian gradient noise, at `record`.

    theta_0 = +-sqrt(E[theta_0^2]) with random signs: the same second moment as N(0, I) (all the closed form
    depends on) without the sampling noise of theta_0^2, so the 1% tolerance tests the dynamics."""
    rng = np.random.default_rng(seed)
    h, c, s0 = problem.curvatures, problem.noise, problem.init_second_moment
    pre = h ** -p if optimizer.startswith("precond") else np.ones_like(h)
    theta = rng.choice([-1.0, 1.0], size=(chains, h.size)) * np.sqrt(s0)
    v, ema = np.zeros_like(theta), theta.copy()
    out = {}
    for t in range(1, max(record) + 1):
        g = pre * (h * theta + rng.standard_normal(theta.shape) * np.sqrt(c / batch_size))
        if "momentum" in optimizer:
            v = momentum * v - lr * g
            theta = theta + v
        else:
            theta = theta - lr * g
        ema = ema_decay * ema + (1 - ema_decay) * theta
        if t in record:
            x = ema if optimizer == "ema" else theta
            out[t] = 0.5 * np.mean(np.sum(h * x * x, axis=1))
    return np.array([out[t] for t in record])


@pytest.mark.parametrize("seed,optimizer,lr,batch,beta,gamma", [
    (1, "sgd", 0.8, 4.0, 0.0, 0.0), (2, "momentum", 0.3, 4.0, 0.8, 0.0), (3, "precond", 0.5, 4.0, 0.0, 0.0),
    (4, "ema", 0.8, 4.0, 0.0, 0.9)])
def test_closed_form_matches_monte_carlo_within_one_percent(seed, optimizer, lr, batch, beta, gamma):
    # 48 coordinates of comparable weight: the loss averages many squares, so 10^4 chains give a standard
    # error near 0.25% and the 1% tolerance tests the dynamics rather than the sampling.
    h = np.geomspace(0.05, 1.0, 48)
    problem = nqm.NQMProblem(h, h.copy(), np.ones(48), 0.01)
    record = [2, 10, 40]
    mc = _monte_carlo(problem, optimizer, lr, batch, record, beta, gamma, seed=seed)
    cf = nqm.expected_loss(problem, optimizer, lr, batch, record, momentum=beta, ema_decay=gamma)
    np.testing.assert_allclose(mc, cf, rtol=0.01)
    # The noise matters here: the noiseless loss at the last step is far below.
    noiseless = nqm.expected_loss(problem, optimizer, lr, math.inf, record[-1:], momentum=beta, ema_decay=gamma)
    assert noiseless[0] < 0.5 * cf[-1]


@pytest.mark.parametrize("optimizer,lr,batch,beta,gamma", [
    ("sgd", 0.2, 64.0, 0.0, 0.0), ("sgd", 1.9, 1024.0, 0.0, 0.0), ("precond", 0.02, 16.0, 0.0, 0.0),
    ("momentum", 0.01, 64.0, 0.95, 0.0), ("momentum", 1.5, 4096.0, 0.8, 0.0), ("momentum", 3.2, 1e6, 0.95, 0.0),
    ("ema", 0.3, 16.0, 0.0, 0.99), ("precond_momentum", 1.5, 1e5, 0.9, 0.0)])
def test_steps_to_target_is_the_first_crossing(optimizer, lr, batch, beta, gamma):
    problem = nqm.default_problem(dim=300, target_loss=0.02)
    curve = _iterate_moments(problem, optimizer, lr, batch, 2000, beta, gamma)
    below = np.flatnonzero(curve <= problem.target_loss)
    assert below.size, "the case must reach the target"
    got = nqm.steps_to_target(problem, optimizer, lr, batch, momentum=beta, ema_decay=gamma)
    assert got == below[0] + 1


def test_an_oscillating_loss_needs_the_step_by_step_check():
    # eta h up to 3.2 with beta = 0.95: the expected loss swings by 3x from step to step near the target.
    problem = nqm.default_problem(dim=300, target_loss=0.02)
    assert nqm.steps_to_target(problem, "momentum", 3.2, 1e6, momentum=0.95) == 89
    assert nqm.steps_to_target(problem, "momentum", 3.2, 1e6, momentum=0.95, verify_below=0) == 93  # bisection


def test_steps_to_target_is_inf_when_the_noise_floor_is_above_target():
    problem = _small(target=1e-3)
    assert nqm.steps_to_target(problem, "sgd", 1.0, 1.0) == math.inf  # stationary loss ~ 0.2
    assert nqm.steps_to_target(problem, "sgd", 2.5, math.inf) == math.inf  # unstable


def test_critical_batch_size_is_b_crit_of_the_two_regime_model():
    b = 2.0 ** np.arange(2, 16)
    s_min, b_crit = 100.0, 256.0
    steps = s_min * (1 + b_crit / b)
    assert nqm.critical_batch_size(b, steps, s_min) == pytest.approx(b_crit, rel=1e-12)
    b_crit = 300.0  # between grid points: log-log interpolation
    assert nqm.critical_batch_size(b, s_min * (1 + b_crit / b), s_min) == pytest.approx(b_crit, rel=0.03)
    assert nqm.critical_batch_size(b[:3], (s_min * (1 + b_crit / b))[:3], s_min) is None  # not reached
    assert nqm.critical_batch_size(b[8:], (s_min * (1 + b_crit / b))[8:], s_min) is None  # already past


@pytest.fixture(scope="module")
def sweeps():
    problem = nqm.default_problem(dim=1000)
    sizes = [2 ** k for k in range(2, 17)]
    out = {"sgd": nqm.sweep(problem, nqm.optimizer_spec("sgd"), sizes)}
    out["momentum"] = nqm.sweep(problem, nqm.optimizer_spec("momentum"), sizes, nqm.DEFAULT_MOMENTA, base=out["sgd"])
    out["precond"] = nqm.sweep(problem, nqm.optimizer_spec("precond"), sizes)
    return problem, sizes, out


def test_sweep_shows_perfect_scaling_then_saturation(sweeps):
    _, sizes, out = sweeps
    for name, rows in out.items():
        steps = np.array([r.steps for r in rows[:-1]])
        assert np.all(np.isfinite(steps)) and np.all(np.diff(steps) <= 0), name  # more data per step never hurts
        ratio = steps[1:] / steps[:-1]
        assert np.all(np.abs(ratio[:2] - 0.5) < 0.03), (name, ratio[:2])  # perfect scaling at small B
        assert steps[-1] <= 1.1 * rows[-1].steps and ratio[-1] > 0.95, name  # saturated at large B
        assert rows[-1].steps <= steps[-1]


def test_momentum_and_preconditioning_extend_the_critical_batch_size(sweeps):
    _, sizes, out = sweeps
    crit = {name: nqm.critical_batch_size(sizes, [r.steps for r in rows[:-1]], rows[-1].steps)
            for name, rows in out.items()}
    assert all(v is not None for v in crit.values()), crit
    assert crit["momentum"] > 4 * crit["sgd"]
    assert crit["precond"] > 4 * crit["sgd"]
    # At small batch sizes momentum buys (almost) nothing over SGD at equal effective lr a/(1 - beta)...
    assert out["momentum"][0].steps == pytest.approx(out["sgd"][0].steps, rel=0.02)
    # ...and the noise-free floor is where it helps: about sqrt(condition number) fewer steps.
    assert out["momentum"][-1].steps < out["sgd"][-1].steps / 5
    # SGD is momentum 0: the tuned results can only be as good or better.
    assert all(m.steps <= s.steps for m, s in zip(out["momentum"], out["sgd"]))


def test_ema_helps_at_small_batch_and_not_at_infinite_batch():
    problem = nqm.default_problem(dim=300, target_loss=0.02)
    sizes = [4, 16, 64, 256, 1024]
    sgd = nqm.sweep(problem, nqm.optimizer_spec("sgd"), sizes)
    ema = nqm.sweep(problem, nqm.optimizer_spec("ema"), sizes, nqm.DEFAULT_EMA_DECAYS, base=sgd)
    steps = np.array([r.steps for r in ema])
    assert np.all(np.diff(steps) <= 0)
    assert all(e.steps <= s.steps for e, s in zip(ema, sgd))  # EMA decay 0 is SGD
    assert ema[0].steps < 0.5 * sgd[0].steps and ema[0].ema_decay >= 0.99  # averaging out the noise
    assert ema[-1].steps == sgd[-1].steps and ema[-1].ema_decay == 0.0  # no noise: averaging only lags


def test_tuned_steps_are_close_to_a_dense_grid(sweeps):
    # A denser search (10 lrs per decade, 8 refinements, every momentum) does at most 1% better for SGD;
    # with momentum at large batch the oscillating loss makes steps(lr) jagged: 5%.
    problem, sizes, out = sweeps
    for name, grid, tol in (("sgd", (0.0,), 0.01), ("momentum", nqm.DEFAULT_MOMENTA, 0.05)):
        spec = nqm.optimizer_spec(name)
        limits = {s: nqm.lr_stability_limit(problem, spec, s) for s in grid}
        for i in (0, len(sizes)):  # the smallest and an infinite batch
            b = out[name][i].batch_size
            dense = tune_grid(nqm._builder(problem, spec, b), problem.target_loss, limits, problem.dim,
                              lr_per_decade=10, refine_rounds=8).result(name, b, spec.second, lambda a, s: 0.0)
            assert out[name][i].steps <= (1 + tol) * dense.steps, (name, b, dense.steps, out[name][i].steps)
