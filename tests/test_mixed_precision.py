"""--mixed_precision: off by default, part of a run's identity, float32 weights, float32 model.keras."""

import json
import os
import signal
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.cli.app import UsageError
from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.training.run import run, run_column
from tests.helpers import small_config as cfg_for

KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm_sq", "grad_norm_sq")




NAME = "mlp-mnist1d-bs64-lr0.1-s0"


def _policies(model):
    return {layer.dtype_policy.name for layer in model.layers if layer.weights}


def test_default_is_float32_and_bfloat16_changes_the_numbers_but_not_the_saved_model(tmp_path):
    run(cfg_for(tmp_path / "f32"))
    run(cfg_for(tmp_path / "bf16", mixed_precision="bfloat16"))
    assert runfolder.read_config(tmp_path / "f32" / NAME).raw["mixed_precision"] == "off"
    assert runfolder.read_config(tmp_path / "bf16" / NAME).raw["mixed_precision"] == "bfloat16"
    f32 = runfolder.read_metrics(tmp_path / "f32" / NAME)
    bf16 = runfolder.read_metrics(tmp_path / "bf16" / NAME)
    assert all(np.isfinite(r[k]) for r in bf16 for k in KEYS)
    # bfloat16 keeps 8 mantissa bits: the run is a different computation, yet the same training.
    assert bf16[-1]["train_loss"] != f32[-1]["train_loss"]
    assert bf16[-1]["train_loss"] == pytest.approx(f32[-1]["train_loss"], rel=0.1)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was

    saved = keras.models.load_model(tmp_path / "bf16" / NAME / runfolder.MODEL, compile=False)
    assert _policies(saved) == {"float32"}
    # The saved float32 model holds the trained weights: its weight norm is the last epoch's record.
    norm = sum(float(np.sum(np.square(v.numpy().astype(np.float64)))) for v in saved.trainable_variables)
    assert norm == pytest.approx(bf16[-1]["weight_norm_sq"], rel=1e-12)
    assert bf16[-1]["weight_norm_sq"] != pytest.approx(f32[-1]["weight_norm_sq"], rel=1e-9)


def test_float16_with_loss_scaling_resumes_to_the_same_metrics(tmp_path):
    """Momentum, weight decay (added in loss-scaled units) and the dynamic loss scale all live in the
    checkpoint: SIGTERM mid-run and the same call again give the uninterrupted run's metrics."""
    kw = dict(mixed_precision="float16", momentum=0.9, weight_decay=5e-4, batch_size=32, epochs=3, lr=0.02)
    name = "mlp-mnist1d-bs32-lr0.02-s0-m0.9-wd0.0005"
    run(cfg_for(tmp_path / "full", **kw))
    full = runfolder.read_metrics(tmp_path / "full" / name)
    assert all(np.isfinite(r[k]) for r in full for k in KEYS)
    assert full[-1]["train_loss"] < full[0]["train_loss"]
    # The loss scale is divided out of grad_norm_sq: in scaled units it would be ~(2**15)**2 = 1e9 times larger.
    assert all(0 < r["grad_norm_sq"] < 1e3 for r in full)

    def preempt():
        while len(runfolder.read_metrics(tmp_path / "cut" / name)) < 1:
            threading.Event().wait(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(tmp_path / "cut", **kw))
    assert runfolder.read_result(tmp_path / "cut" / name) is None
    run(cfg_for(tmp_path / "cut", **kw))
    cut = runfolder.read_metrics(tmp_path / "cut" / name)
    assert [{k: r[k] for k in KEYS} for r in cut] == [{k: r[k] for k in KEYS} for r in full]

    # The loss scale is checkpointed with the optimizer, and grew from Keras' initial 2**15 or shrank.
    # (the newest checkpoint's prefix: checkpoints.write keeps no 'checkpoint' state file to find it by)
    (_, newest), *_ = checkpoints.candidates(tmp_path / "full" / name / runfolder.CKPT_DIR)
    reader = tf.train.load_checkpoint(newest)
    scales = [k for k in reader.get_variable_to_shape_map() if "dynamic_scale" in k]
    assert len(scales) == 1, "the dynamic loss scale is not in the checkpoint"
    scale = float(reader.get_tensor(scales[0]))
    assert scale >= 1 and np.log2(scale) == int(np.log2(scale))  # halved or doubled from 2**15, never else


def test_members_are_built_under_the_runs_policy():
    from lrbs_tf.data.loaders import load_data
    from lrbs_tf.training.members import build_member

    data = load_data("mnist1d")
    for setting, policy, compute in (("off", "float32", tf.float32), ("bfloat16", "mixed_bfloat16", tf.bfloat16),
                                     ("float16", "mixed_float16", tf.float16)):
        model, optimizer = build_member(cfg_for("unused", mixed_precision=setting), data)
        assert _policies(model) == {policy}
        assert model(tf.zeros([2, 40])).dtype == compute
        assert all(v.dtype == tf.float32 for v in model.trainable_variables)  # weights stay float32
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (setting == "float16")
    assert keras.config.dtype_policy().name == "float32"


def test_float16_column_equals_separate_float16_runs(tmp_path):
    lrs = [0.05, 0.2]
    run_column(cfg_for(tmp_path / "col", mixed_precision="float16"), lrs)
    for lr in lrs:
        run(cfg_for(tmp_path / "alone", mixed_precision="float16", lr=lr))
        name = f"mlp-mnist1d-bs64-lr{lr:g}-s0"
        a = runfolder.read_metrics(tmp_path / "col" / name)
        b = runfolder.read_metrics(tmp_path / "alone" / name)
        for ra, rb in zip(a, b):
            for key in KEYS:
                assert ra[key] == pytest.approx(rb[key], rel=1e-6), (lr, key)


def test_mixed_precision_is_part_of_the_runs_identity(tmp_path):
    run(cfg_for(tmp_path, epochs=1))
    with pytest.raises(UsageError, match="mixed_precision='off' in config.json but mixed_precision='bfloat16'"):
        run(cfg_for(tmp_path, epochs=1, mixed_precision="bfloat16"))
    # A config.json written before the setting existed is read as the default (off): still the same run.
    path = tmp_path / NAME / runfolder.CONFIG
    config = json.loads(path.read_text())
    del config["mixed_precision"]
    path.write_text(json.dumps(config))
    run(cfg_for(tmp_path, epochs=1))  # finished and the same configuration: left alone, no error


def test_bad_or_unstackable_mixed_precision_is_refused(tmp_path):
    with pytest.raises(UsageError, match="mixed_precision='half'; valid: off, float16, bfloat16"):
        run(cfg_for(tmp_path, mixed_precision="half"))
    with pytest.raises(UsageError, match="column_engine=stacked needs an mlp in float32"):
        run_column(cfg_for(tmp_path, mixed_precision="bfloat16", column_engine="stacked"), [0.1, 0.2])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # refused before anything is written
