"""When bin/train checkpoints (--checkpoint_seconds, --checkpoint_epochs, --checkpoints_to_keep) and that a
run checkpointed sparsely still resumes to the metrics of an uninterrupted run (members.checkpoint_due,
checkpoints.write, loop.train_column)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf

from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.runs.config import TrainConfig
from lrbs_tf.training.members import checkpoint_due
from lrbs_tf.training.run import run
from tests.helpers import small_config, without_seconds

NAME = "mlp-mnist1d-bs64-lr0.1-s0"


def _epochs(ckpt_dir: Path) -> list[int]:
    return [e for e, _ in checkpoints.candidates(ckpt_dir)]


def test_checkpoint_due_is_the_last_epoch_a_kept_epoch_or_the_clock():
    cfg = TrainConfig(checkpoint_seconds=10.0, checkpoint_epochs=(3,))
    assert checkpoint_due(cfg, 5, last=True, seconds_since=0.0)
    assert checkpoint_due(cfg, 3, last=False, seconds_since=0.0)
    assert not checkpoint_due(cfg, 4, last=False, seconds_since=9.99)
    assert checkpoint_due(cfg, 4, last=False, seconds_since=10.0)
    assert checkpoint_due(TrainConfig(checkpoint_seconds=0.0), 4, last=False, seconds_since=0.0)


def test_write_keeps_the_newest_and_the_chosen_epochs_and_deletes_the_rest(tmp_path):
    v = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=v)
    for epoch in range(1, 8):
        v.assign(float(epoch))
        checkpoints.write(ckpt, tmp_path, epoch, keep_last=2, keep_epochs=(2, 3))
    assert _epochs(tmp_path) == [7, 6, 3, 2]
    leftovers = {p.name.split(".")[0] for p in tmp_path.iterdir()}
    assert leftovers == {"ckpt-7", "ckpt-6", "ckpt-3", "ckpt-2"}  # no orphaned data shards
    restored = tf.train.Checkpoint(v=tf.Variable(-1.0))
    restored.read(str(tmp_path / "ckpt-3")).assert_consumed()
    assert float(restored.v.numpy()) == 3.0


def test_spacings_keep_every_nth_and_geometric_epochs_without_a_list(tmp_path):
    assert sorted(checkpoints.spaced_epochs(10, every=4)) == [4, 8]
    geometric = sorted(checkpoints.spaced_epochs(3000, geometric=20))
    assert geometric[:4] == [1, 2, 4, 5] and geometric[-1] == 3000 and len(geometric) == 19  # 1.5 rounds to 2
    cfg = TrainConfig(epochs=100, checkpoint_seconds=1e9, checkpoint_every=30, checkpoint_geometric=3)
    assert [e for e in range(1, 100) if checkpoint_due(cfg, e, last=False, seconds_since=0.0)] == [1, 10, 30, 60, 90]
    # A run keeps them for good beside the newest, and the spacing is an execution setting (resumable).
    cfg = small_config(tmp_path, epochs=5, checkpoint_seconds=1e9, checkpoints_to_keep=1, checkpoint_every=2)
    run(cfg)
    assert _epochs(cfg.resolved().run_dir / runfolder.CKPT_DIR) == [5, 4, 2]
    from lrbs_tf.runs.config import EXECUTION_SETTINGS, validate
    assert {"checkpoint_every", "checkpoint_geometric"} <= EXECUTION_SETTINGS
    with pytest.raises(UsageError, match="checkpoint_every=-1 must be >= 0"):
        validate(small_config(tmp_path, checkpoint_every=-1))


@pytest.mark.parametrize("value, words", [("0", "epochs count from 1"), ("9", "beyond epochs=4"),
                                          ("x", "give epochs as integers")])
def test_bad_checkpoint_epochs_are_refused(tmp_path, value, words):
    from lrbs_tf.runs.config import validate
    with pytest.raises(UsageError, match=words):
        validate(small_config(tmp_path, epochs=4, checkpoint_epochs=value.split(",")))


def test_sparse_checkpoints_resume_to_the_uninterrupted_metrics(tmp_path):
    """The default policy on a fast run: a checkpoint only at the kept epoch 2 and the last one, 4. A kill
    after epoch 3's metrics line (its checkpoint never written) resumes from epoch 2, redoes 3 and 4, and
    ends with the uninterrupted run's metrics; epoch 2's checkpoint is still there for bin/sharpness."""
    policy = dict(epochs=4, checkpoint_seconds=3600.0, checkpoint_epochs=(2,), checkpoints_to_keep=1)
    reference = tmp_path / "reference"
    run(small_config(reference, **policy))
    ref_dir = reference / NAME
    assert _epochs(ref_dir / runfolder.CKPT_DIR) == [4, 2]

    cut = tmp_path / "cut"
    run(small_config(cut, **{**policy, "epochs": 3}))  # what a kill after epoch 3's line leaves, but ...
    run_dir = cut / NAME
    for name in (runfolder.RESULT, runfolder.MODEL):
        (run_dir / name).unlink()
    for path in (run_dir / runfolder.CKPT_DIR).glob("ckpt-3.*"):  # ... no checkpoint of epoch 3
        path.unlink()
    config = runfolder.read_json(ref_dir / runfolder.CONFIG)
    runfolder.atomic_write_json(run_dir / runfolder.CONFIG, {**config, "workdir": str(cut)})
    assert [r["epoch"] for r in runfolder.read_metrics(run_dir)] == [1, 2, 3]

    run(small_config(cut, **policy))
    assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(runfolder.read_metrics(ref_dir))
    assert _epochs(run_dir / runfolder.CKPT_DIR) == [4, 2]
