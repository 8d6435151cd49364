"""Adaptive sharpness (curvature.adaptive): closed forms on quadratics, and Dinh et al.'s rescaling of a
trained ReLU MLP, which moves lambda_max by about alpha^2 and leaves every adaptive sharpness unchanged."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lrbs_tf.analysis import correlate
from lrbs_tf.curvature import adaptive, eigen, hvp, session as sharpness_bin
from lrbs_tf.curvature.settings import ADAPTIVE_QUANTITIES
from lrbs_tf.data.loaders import load_data
from lrbs_tf.models.builders import build_model
from lrbs_tf.runs import folder as rf
from lrbs_tf.training.run import run as train_run
from tests import curvature_oracles as oracles
from tests.helpers import small_config
from tests.runfolders import write_grid


def _centred_quadratic(q: np.ndarray, centre: np.ndarray, shapes):
    """The Objective of f(theta) = 0.5 (theta - c)' Q (theta - c) at theta = c: zero gradient, Hessian Q."""
    q32, c32 = tf.constant(q, tf.float32), tf.constant(centre, tf.float32)

    def losses_fn(params, x, y):
        e = tf.concat([tf.reshape(p, [-1]) for p in params], axis=0) - c32
        return tf.fill(tf.shape(y), 0.5 * tf.reduce_sum(e * tf.linalg.matvec(q32, e)))

    parts, i = [], 0
    for s in shapes:
        n = int(np.prod(s))
        parts.append(centre[i:i + n].reshape(s).astype(np.float32))
        i += n
    return hvp.Objective(losses_fn, parts, [(tf.zeros((1, 1)), tf.zeros((1,), tf.int32))])


def _setup(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = oracles.Quadratic(np.concatenate([[12.0, 4.0], np.linspace(0.1, 2.0, 38)]), seed=seed).q
    centre = rng.choice([-1.0, 1.0], 40) * rng.uniform(0.5, 2.0, 40)  # no weight near zero
    obj = _centred_quadratic(q, centre, ((5, 4), (20,)))
    scale = np.abs(obj.theta)  # |w| as the Objective holds it (float32-rounded)
    return q, obj, scale


def test_worst_case_l2_is_half_rho_squared_times_the_top_eigenvalue_of_the_scaled_hessian():
    """At a minimum, max over ||u||_2 <= rho of 0.5 (|w| u)' Q (|w| u) = 0.5 rho^2 lambda_max(D Q D), D = diag|w|."""
    q, obj, scale = _setup()
    rho = 0.05
    truth = 0.5 * rho ** 2 * float(np.linalg.eigvalsh(scale[:, None] * q * scale[None, :])[-1])
    res = adaptive.worst_case(obj, rho, "2", steps=60, restarts=2, seed=0)
    assert res.loss == pytest.approx(0.0, abs=1e-9)
    assert truth * (1 - 2e-3) <= res.sharpness <= truth * (1 + 1e-4)  # a lower bound that reaches the max
    assert res.num_gradients == 120 == obj.num_gradients and res.p == "2" and res.rho == rho


def test_worst_case_linf_is_any_corner_of_the_box_for_a_diagonal_hessian():
    """Q diagonal: max over |u_i| <= rho of 0.5 sum_i Q_ii w_i^2 u_i^2 is 0.5 rho^2 sum_i Q_ii w_i^2 (a corner)."""
    _, obj0, _ = _setup()
    spec = np.linspace(0.5, 3.0, 40)
    obj = _centred_quadratic(np.diag(spec), obj0.theta, ((5, 4), (20,)))
    rho = 0.02
    truth = 0.5 * rho ** 2 * float(spec @ obj.theta ** 2)
    res = adaptive.worst_case(obj, rho, "inf", steps=10, restarts=1, seed=0)
    assert res.sharpness == pytest.approx(truth, rel=1e-4)


def test_average_case_matches_half_the_weighted_diagonal():
    """E f(w + d) - f(w) = 0.5 rho^2 sum_i Q_ii w_i^2 for d ~ N(0, rho^2 diag(w^2)), any Q."""
    q, obj, scale = _setup(1)
    rho = 0.1
    res = adaptive.average_case(obj, rho, draws=200, seed=0)
    truth = 0.5 * rho ** 2 * float(np.diag(q) @ scale ** 2)
    assert abs(res.mean_increase - truth) <= 3 * res.stderr and res.stderr < 0.1 * truth


def test_bad_arguments_are_refused():
    _, obj, _ = _setup()
    with pytest.raises(ValueError, match="p="):
        adaptive.worst_case(obj, 0.1, "1")
    with pytest.raises(ValueError, match="rho > 0"):
        adaptive.worst_case(obj, 0.0)
    with pytest.raises(ValueError, match="draws >= 2"):
        adaptive.average_case(obj, 0.1, draws=1)


ALPHA = 10.0  # not a power of two: the rescaled weights round differently, so the float tolerance is tested


def _trained_mlp():
    """A 2 x 12 ReLU MLP (no batch norm) after 30 SGD steps on 64 random examples of 3 classes."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    model = build_model("mlp", 3, (6,), mlp_depth=2, mlp_width=12, mlp_batch_norm=False)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=8, verbose=0, shuffle=False)
    return model, x, y


def _rescaled(model, alpha: float):
    """Dinh et al.'s reparametrisation: the first Dense layer's kernel and bias times alpha, the second's
    kernel divided by alpha (ReLU(alpha z) = alpha ReLU(z) for alpha > 0): the same function."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    dense = [layer for layer in clone.layers if isinstance(layer, keras.layers.Dense)]
    dense[0].kernel.assign(dense[0].kernel.value * alpha)
    dense[0].bias.assign(dense[0].bias.value * alpha)
    dense[1].kernel.assign(dense[1].kernel.value / alpha)
    return clone, dense


def test_rescaling_moves_lambda_max_by_about_alpha_squared_and_leaves_adaptive_sharpness_unchanged():
    model, x, y = _trained_mlp()
    clone, dense = _rescaled(model, ALPHA)
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)

    # Theory: f'(theta') = f(T^-1 theta'), T = diag(alpha on layer 1, 1/alpha on layer 2's kernel, 1 else),
    # so H' = T^-1 H T^-1: layer 1's block shrinks by alpha^2, layer 2's kernel block grows by alpha^2, and
    # lambda_max(H') >= alpha^2 lambda_max(H_22) (a Rayleigh quotient inside that block).
    _, _, h = oracles.mlp_dense_hessian(model, x, y)
    variables = clone.trainable_variables
    t = np.concatenate([np.full(int(np.prod(v.shape)), ALPHA if v is dense[0].kernel or v is dense[0].bias
                                else 1 / ALPHA if v is dense[1].kernel else 1.0) for v in variables])
    block = t < 1
    lam = float(np.linalg.eigvalsh(h)[-1])
    lam_22 = float(np.linalg.eigvalsh(h[np.ix_(block, block)])[-1])
    lam_theory = float(np.linalg.eigvalsh(h / t[:, None] / t[None, :])[-1])

    objectives = [hvp.keras_objective(m, x, y, 64) for m in (model, clone)]
    measured = [eigen.top_k(o.hvp, o.dim, 1, tol=1e-6, seed=0).eigenvalues[0] for o in objectives]
    assert measured[0] == pytest.approx(lam, rel=1e-3)
    assert measured[1] == pytest.approx(lam_theory, rel=1e-3)
    assert measured[1] >= ALPHA ** 2 * lam_22 * (1 - 1e-3)
    # How much of alpha^2 shows depends on how much of H's top direction lies in layer 2's block: here 24 of
    # alpha^2 = 100 (the model moved from lambda_max 1.3 to 31); the rescaled top direction is in that block.
    assert measured[1] / measured[0] > 0.1 * ALPHA ** 2

    for p in ("2", "inf"):
        rho = 0.05 if p == "2" else 0.01
        a, b = (adaptive.worst_case(o, rho, p, steps=10, restarts=2, seed=7) for o in objectives)
        assert a.sharpness > 1e-4  # a real increase, not a float-noise zero
        assert b.sharpness == pytest.approx(a.sharpness, rel=1e-4), p
    # rho 0.2: an increase large enough that float32 losses resolve it to 1e-6 (at 0.05, to 5e-5)
    a, b = (adaptive.average_case(o, 0.2, draws=8, seed=7) for o in objectives)
    assert a.mean_increase > 0 and b.mean_increase == pytest.approx(a.mean_increase, rel=1e-4)


def test_bin_sharpness_records_the_adaptive_quantities_with_their_settings(tmp_path):
    """Through the binary's library path on a bin/train run folder: the keys, the recorded settings and
    random streams keyed by each quantity's name (the same numbers as a direct call with that seed)."""
    cfg = small_config(tmp_path, mlp_depth=1, mlp_width=8, epochs=1)
    assert train_run(cfg)["status"] == "done"
    run_dir = cfg.resolved().run_dir
    settings = sharpness_bin.Settings(num_examples=64, quantities=ADAPTIVE_QUANTITIES,
                                      adaptive_steps=3, adaptive_restarts=2, adaptive_draws=3)
    record = sharpness_bin.run(str(run_dir), settings, log=lambda *_: None)
    assert all(record[k] is not None for k in rf.ADAPTIVE_KEYS) and record["lambda_max"] is None
    assert record["settings"]["adaptive_rho"] == 0.5 and record["settings"]["adaptive_restarts"] == 2
    assert record["costs"]["adaptive_sharpness"]["gradients"] == 6 == record["costs"]["adaptive_sharpness_linf"]["gradients"]
    assert record["costs"]["adaptive_sharpness_avg"]["losses"] == 7
    model = keras.models.load_model(run_dir / rf.MODEL, compile=False)
    data = load_data("mnist1d")
    obj = hvp.keras_objective(model, data.normalize(data.x_train[:64]), data.y_train[:64].astype(np.int32), 256)
    direct = adaptive.worst_case(obj, 0.01, "inf", 3, 2, settings.seed_for("adaptive_sharpness_linf"))
    assert record["adaptive_sharpness_linf"] == pytest.approx(direct.sharpness, rel=1e-6)


def test_bin_correlate_tests_adaptive_sharpness_like_the_other_quantities(tmp_path):
    """runs.csv's columns, the sharpness tests against BS/LR and accuracy (Spearman, Kendall) and Psi."""
    def accuracy(bs, lr):
        return 0.9 - 0.01 * np.log(bs / lr)

    write_grid(tmp_path / "runs", accuracy, sharpness=None)
    for run_dir in sorted((tmp_path / "runs").iterdir()):
        cfg = json.loads((run_dir / rf.CONFIG).read_text())
        value = cfg["lr"] / cfg["batch_size"]  # sharper at small BS/LR
        (run_dir / rf.SHARPNESS).write_text(json.dumps(
            {"adaptive_sharpness": value, "adaptive_sharpness_linf": 2 * value, "adaptive_sharpness_avg": value / 3,
             "adaptive_sharpness_avg_stderr": 0.1}))
    a = correlate.run(tmp_path / "runs", tmp_path / "out", figures=False)
    assert a.sharpness_quantities == ["adaptive_sharpness", "adaptive_sharpness_linf", "adaptive_sharpness_avg"]
    sh = a.tables["sharpness"].set_index(["quantity", "versus", "subset"])
    row = sh.loc[("adaptive_sharpness", "ratio", "with_flagged")]
    assert row["n"] == 16 and row["spearman_rho"] == pytest.approx(-1.0) and row["kendall_tau"] == pytest.approx(-1.0)
    assert set(a.psi["measure"]) >= {"adaptive_sharpness", "adaptive_sharpness_avg"}
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs["adaptive_sharpness_avg_stderr"].eq(0.1).all()
