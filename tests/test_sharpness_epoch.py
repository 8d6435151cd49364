"""bin/sharpness --epoch=E: the run measured at a kept checkpoint, into sharpness-epoch<E>.json, against a
dense float64 Hessian and numpy per-example gradients at those weights; sharpness.json untouched; an epoch
not kept refused in one line (exit 2) naming the kept ones; the multi-run forms, and correlate's reader."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.curvature import session as sharpness_bin
from lrbs_tf.curvature.targets import results_targets
from lrbs_tf.data.loaders import load_data
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.table import collect_runs
from lrbs_tf.training.run import run as train_run
from tests import curvature_oracles as oracles
from tests.helpers import run_bin, small_config

SETTINGS = sharpness_bin.Settings(num_examples=128, top_k=2, quantities=("eigenvalues", "grad_cov", "noise_scale"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 3-epoch BN MLPs. `kept`: --checkpoint_epochs=1 and no time-based checkpoints, so ckpt/ holds
    epochs 1 (kept for good) and 3 (the last); `newest`: a checkpoint every epoch, the newest 2 kept (2, 3)."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for name, kw in (("kept", dict(checkpoint_epochs=(1,), checkpoint_seconds=1e9, checkpoints_to_keep=1)),
                     ("newest", dict(checkpoint_seconds=0, checkpoints_to_keep=2))):
        cfg = small_config(root, mlp_depth=1, mlp_width=8, mlp_batch_norm=True, epochs=3, run_name=name, **kw)
        assert train_run(cfg)["status"] == "done"
        dirs.append(cfg.resolved().run_dir)
    return dirs


def _examples(n):
    data = load_data("mnist1d")
    return data.normalize(data.x_train[:n]), data.y_train[:n].astype(np.int32)


def test_an_epoch_is_measured_at_its_checkpoint_into_its_own_file(runs, tmp_path):
    run_dir = shutil.copytree(runs[0], tmp_path / "kept")
    record = sharpness_bin.run(str(run_dir), SETTINGS, log=lambda *_: None, epoch=1)
    assert not (run_dir / runfolder.SHARPNESS).exists()  # sharpness.json is never touched
    path = run_dir / "sharpness-epoch1.json"
    assert json.loads(path.read_text()) == json.loads(runfolder.dumps(record))
    assert record["epoch"] == 1 and record["checkpoint"].endswith("ckpt-1")

    # The oracle: the run's model with epoch 1's checkpoint restored, measured in float64.
    model = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
    final = [np.array(v.value) for v in model.trainable_variables]
    tf.train.Checkpoint(model=model).read(record["checkpoint"]).expect_partial()
    assert not all(np.array_equal(a, np.array(v.value)) for a, v in zip(final, model.trainable_variables))
    x, y = _examples(128)
    loss, _, h = oracles.mlp_dense_hessian(model, x, y)
    assert record["train_loss"] == pytest.approx(loss, rel=1e-5)
    assert record["lambda_max"] == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-4)
    g = oracles.mlp_per_example_grads(model, x, y)
    s = np.sum((g - g.mean(0)) ** 2) / (len(g) - 1)
    u = g.mean(0) @ g.mean(0) - s / len(g)
    assert u > 0 and record["noise_scale"] == pytest.approx(s / u, rel=1e-3)
    assert record["stability_ratio"] == pytest.approx(record["lambda_max"] * 0.1 / 2, rel=1e-12)

    # The final model's sharpness.json is written beside it, and the epoch file is left as it was.
    before = path.read_bytes()
    final_record = sharpness_bin.run(str(run_dir), SETTINGS, log=lambda *_: None)
    assert final_record["epoch"] is None and final_record["lambda_max"] != record["lambda_max"]
    assert path.read_bytes() == before
    # runs.csv reads the earliest epoch file with a B_simple as the run's early noise scale.
    runs_table, _ = collect_runs(tmp_path, (), 0.99)
    row = runs_table.iloc[0]
    assert row["noise_scale_epoch"] == 1 and row["noise_scale_early"] == pytest.approx(record["noise_scale"])


def test_an_epoch_not_kept_is_refused_in_one_line_naming_the_kept_ones(runs, tmp_path):
    run_dir = shutil.copytree(runs[0], tmp_path / "kept")
    before = sorted(p.name for p in run_dir.iterdir())
    proc = run_bin("sharpness", f"--ckpt={run_dir}", "--epoch=2", "--quantities=eigenvalues", "--num_examples=64")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint of epoch 2 (epochs kept: 1, 3)" in lines[0], proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_results_and_lists_measure_each_run_at_the_epoch_or_fail_it_alone(runs, tmp_path):
    dirs = [shutil.copytree(r, tmp_path / r.name) for r in runs]
    todo, current = results_targets(str(tmp_path), SETTINGS, epoch=1)
    assert sorted(todo) == sorted(map(str, dirs)) and current == 0
    records, failures = sharpness_bin.run_many(todo, SETTINGS, log=lambda *_: None, epoch=1)
    assert len(records) == 1 and records[0]["checkpoint"].endswith("ckpt-1")
    assert [c for c, _ in failures] == [str(tmp_path / "newest")] and "epochs kept: 2, 3" in failures[0][1]
    # Now current for epoch 1 (and only for epoch 1): --results leaves it alone.
    assert results_targets(str(tmp_path), SETTINGS, epoch=1) == ([str(tmp_path / "newest")], 1)
    assert len(results_targets(str(tmp_path), SETTINGS, epoch=2)[0]) == 2
    assert not any((d / runfolder.SHARPNESS).exists() for d in dirs)
    assert sorted(p.name for p in (tmp_path / "kept").glob("hessian_spectrum*")) == []  # no spectrum asked
