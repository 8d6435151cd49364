"""bin/sharpness --epoch=all / --epoch=1,3: a run's curvature trajectory in one process (curvature.trajectory):
every kept checkpoint measured into its own file with the numbers a fresh session gives, curvature.csv one
row per measured epoch with step and train_loss from metrics.jsonl, the top-k eigenspace overlap against
dense eigenvectors, --results measuring only what is not current, and the flag's parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrbs_tf.analysis import stability
from lrbs_tf.core.errors import UsageError
from lrbs_tf.curvature import session as sharpness_bin, trajectory
from lrbs_tf.curvature.targets import results_targets
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run as train_run
from tests.helpers import run_bin, small_config

SETTINGS = sharpness_bin.Settings(num_examples=96, top_k=2, tol=1e-6,
                                  quantities=("eigenvalues", "batch_sharpness", "ggn_eigenvalues"),
                                  batch_sharpness_batches=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-epoch 1 x 8 MLP keeping every epoch's checkpoint (--checkpoint_every=1) and nothing else."""
    root = tmp_path_factory.mktemp("traj")
    cfg = small_config(root, mlp_depth=1, mlp_width=8, epochs=3, batch_size=32, checkpoint_seconds=1e9,
                       checkpoints_to_keep=1, checkpoint_every=1)
    assert train_run(cfg)["status"] == "done"
    return cfg.resolved().run_dir


def test_parse_epochs():
    assert trajectory.parse_epochs(None) is None
    assert trajectory.parse_epochs(["all"]) == "all"
    assert trajectory.parse_epochs(["20", "1", "5", "5"]) == (1, 5, 20)
    for bad in (["0"], ["x"], ["all", "2"]):
        with pytest.raises(UsageError):
            trajectory.parse_epochs(bad)


def test_subspace_overlap_is_one_for_the_same_span_and_zero_for_orthogonal_ones():
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((30, 6)))[0]
    u, v = q[:, :3], q[:, 3:]
    rotation = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0]
    assert trajectory.subspace_overlap(u, -u @ rotation) == pytest.approx(1.0)
    assert trajectory.subspace_overlap(u, v) == pytest.approx(0.0, abs=1e-12)
    half = np.concatenate([u[:, :1], v[:, :2]], axis=1)
    assert trajectory.subspace_overlap(u, half) == pytest.approx(1 / 3)


def test_all_kept_epochs_in_one_process_match_fresh_sessions_and_fill_curvature_csv(run_dir):
    records = sharpness_bin.run_trajectory(str(run_dir), SETTINGS, "all", log=lambda *_: None)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    fresh = sharpness_bin.run(str(run_dir), SETTINGS, log=lambda *_: None, epoch=2)  # its own Session
    assert fresh["lambda_max"] == records[1]["lambda_max"]
    assert fresh["batch_sharpness"] == records[1]["batch_sharpness"]
    assert records[1]["batch_sharpness_batches"] == 4 and records[1]["batch_sharpness_batch_size"] == 32
    assert records[1]["batch_sharpness_ratio"] == pytest.approx(records[1]["batch_sharpness"] * 0.1 / 2)

    table = stability.read_curvature_csv(run_dir)
    metrics = {r["epoch"]: r for r in runfolder.read_metrics(run_dir)}
    assert list(table["epoch"]) == [1, 2, 3] and tuple(table.columns) == trajectory.COLUMNS
    for row in table.to_dict("records"):
        rec = runfolder.read_json(run_dir / f"sharpness-epoch{row['epoch']}.json")
        assert row["step"] == metrics[row["epoch"]]["step"] == 125 * row["epoch"]
        assert row["train_loss"] == pytest.approx(metrics[row["epoch"]]["train_loss"])
        assert row["lambda_max"] == pytest.approx(rec["lambda_max"])
        assert row["stability_ratio"] == pytest.approx(rec["lambda_max"] * 0.1 / 2)
        assert row["ggn_ratio"] == pytest.approx(rec["ggn_lambda_max"] / rec["lambda_max"])
        assert row["overlap_k"] == 2 and math.isnan(row["trace"])  # not asked for
    assert math.isnan(table["topk_overlap"][0]) and math.isnan(table["lambda_max_change"][0])
    assert table["lambda_max_change"][1] == pytest.approx(table["lambda_max"][1] / table["lambda_max"][0] - 1)

    # The overlap against the dense Hessians' top-2 eigenvectors at epochs 1 and 2.
    import keras
    import tensorflow as tf

    from lrbs_tf.curvature.targets import first_examples
    from lrbs_tf.data.loaders import load_data
    from lrbs_tf.runs.checkpoints import restore_epoch
    from tests import curvature_oracles as oracles

    x, y = first_examples(load_data("mnist1d"), 96)
    tops = []
    for epoch in (1, 2):
        model = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
        restore_epoch(tf.train.Checkpoint(model=model), run_dir / runfolder.CKPT_DIR, epoch)
        vals, vecs = np.linalg.eigh(oracles.mlp_dense_hessian(model, x, y)[2])
        tops.append(vecs[:, ::-1][:, :2])
        assert vals[::-1][0] == pytest.approx(table["lambda_max"][epoch - 1], rel=1e-4)
    assert table["topk_overlap"][1] == pytest.approx(trajectory.subspace_overlap(*tops), abs=1e-3)


def test_listed_epochs_and_results_measure_only_what_is_not_current(run_dir):
    proc = run_bin("sharpness", f"--ckpt={run_dir}", "--epoch=1,4", "--quantities=eigenvalues", "--num_examples=32")
    assert proc.returncode == 2 and "no checkpoint of epoch 4 (epochs kept: 1, 2, 3)" in proc.stderr, proc.stderr
    root = str(run_dir.parent)
    sharpness_bin.run_trajectory(str(run_dir), SETTINGS, (1, 3), log=lambda *_: None)
    assert results_targets(root, SETTINGS, (1, 3)) == ([], 1)
    (run_dir / "sharpness-epoch2.json").unlink()
    assert results_targets(root, SETTINGS, "all") == ([str(run_dir)], 0)
    said = []
    records, failures = sharpness_bin.run_many([str(run_dir)], SETTINGS, log=said.append, epoch="all")
    assert failures == [] and [r["epoch"] for r in records] == [2]  # 1 and 3 are current: left alone
    assert list(stability.read_curvature_csv(run_dir)["epoch"]) == [1, 2, 3]
