"""The progress and the cost estimate inside bin/sharpness's `measure` on a tiny MLP (issue 23): forced (every
threshold at 0) they print while the estimators run and change no number; with the defaults a cheap run
prints neither."""

from __future__ import annotations

import keras
import numpy as np

from lrbs_tf.curvature import progress
from lrbs_tf.curvature.measure import measure
from lrbs_tf.curvature.settings import Settings
from lrbs_tf.models.builders import build_model

SETTINGS = Settings(quantities=("eigenvalues", "trace", "eps_sharpness"), top_k=1, max_probes=12, eps_steps=3,
                    num_examples=32)


def _model_and_data():
    keras.utils.set_random_seed(0)
    model = build_model("mlp", 3, (5,), mlp_depth=1, mlp_width=6)
    rng = np.random.default_rng(0)
    return model, rng.standard_normal((32, 5)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)


def test_forced_progress_lines_and_estimate_change_no_number(monkeypatch):
    model, x, y = _model_and_data()
    quiet: list[str] = []
    cheap, _ = measure(model, x, y, SETTINGS, batch_size=32, log=quiet.append)
    assert not [line for line in quiet if line.startswith(("estimated cost", "  "))]  # a cheap run: silent

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(progress, "LARGE_COST_SECONDS", 0.0)
    loud: list[str] = []
    forced, _ = measure(model, x, y, SETTINGS, batch_size=32, log=loud.append)
    estimates = [line for line in loud if line.startswith("estimated cost of this run: up to")]
    assert len(estimates) == 1 and f"({progress.run_passes(SETTINGS):.0f} gradient passes at most" in estimates[0]
    assert loud.index(estimates[0]) < next(i for i, line in enumerate(loud) if line.startswith("eigenvalues:"))
    for name, unit in (("eigenvalues", "HVPs"), ("trace", "HVPs"), ("eps_sharpness", "gradients")):
        assert any(line.startswith(f"  {name}: ") and unit in line for line in loud), name
    for key in ("lambda_max", "trace", "trace_num_probes", "eps_sharpness", "num_hvps", "num_gradients"):
        assert forced[key] == cheap[key], key
