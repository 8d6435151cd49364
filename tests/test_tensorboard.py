"""TensorBoard: each run an HParams session with its result, the curvature beside it, flushed every epoch.

Read back two ways: the event files themselves (tf.compat.v1.train.summary_iterator), and TensorBoard's own
HParams backend over the logdir, which is what `tensorboard --logdir outputs/quick` serves to the dashboard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.curvature import session as sharpness
from lrbs_tf.curvature.settings import Settings
from lrbs_tf.runs import folder as runfolder, tensorboard as summaries
from lrbs_tf.training.run import run_column
from tests.helpers import small_config
from tests.runfolders import PAPER_BATCH_SIZES, PAPER_LRS

LRS = (0.05, 0.1)
HPARAM_NAMES = {"arch", "dataset", "batch_size", "lr", "bs_over_lr", "momentum", "weight_decay", "seed", "epochs",
                "max_steps", "stop_at_train_loss"}
# The study's step budget: epochs of 62 steps (4000 // 64), so 62, 124, then a partial third epoch to 150.
MAX_STEPS, STEPS = 150, [62, 124, 150]
NAMES = [f"mlp-mnist1d-bs64-lr{lr}-s0-steps{MAX_STEPS}" for lr in LRS]


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over every event file of one run folder's log dir (not its subfolders)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return out


def dashboard(logdir: Path) -> tuple[dict, dict]:
    """The HParams dashboard's experiment and session groups, from TensorBoard's own plugin over `logdir`."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    context = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                                    data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    apps = hparams_plugin.HParamsPlugin(context).get_plugin_apps()

    def post(route: str, request: dict) -> dict:
        reply = Client(apps[route], Response).post("/", data=json.dumps(request), content_type="application/json")
        assert reply.status_code == 200, reply.get_data(as_text=True)
        return json.loads(reply.get_data(as_text=True))

    experiment = post("/experiment", {"experimentName": ""})
    groups = post("/session_groups", {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"],
                                      "colParams": [], "startIndex": 0, "sliceSize": 100})
    return experiment, {g["name"]: g for g in groups["sessionGroups"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A column of two runs of 150 steps (3 epochs, the last partial), the first measured by bin/sharpness
    (its largest eigenvalue only)."""
    workdir = tmp_path_factory.mktemp("tb")
    results = run_column(small_config(workdir, epochs=3, max_steps=MAX_STEPS), LRS)
    assert [(r["status"], r["steps"], r["epochs"]) for r in results] == [("done", 150, 3)] * 2
    sharpness.run(str(workdir / NAMES[0]),
                  Settings(num_examples=256, top_k=1, quantities=("eigenvalues",)), log=lambda *_: None)
    return workdir


def test_each_run_is_an_hparams_session_with_its_config_and_result(study):
    experiment, groups = dashboard(study)
    assert {h["name"] for h in experiment["hparamInfos"]} == HPARAM_NAMES
    assert set(groups) == set(NAMES)
    for lr, name in zip(LRS, NAMES):
        assert groups[name]["hparams"] == {"arch": "mlp", "dataset": "mnist1d", "batch_size": 64.0, "lr": lr,
                                           "bs_over_lr": 64 / lr, "momentum": 0.0, "weight_decay": 0.0,
                                           "seed": 0.0, "epochs": 3.0, "max_steps": 150.0, "stop_at_train_loss": 0.0}
        metrics = {(m["name"]["group"], m["name"]["tag"]): (m["value"], m["trainingStep"])
                   for m in groups[name]["metricValues"]}
        result = runfolder.read_result(study / name)
        for key in ("best_test_accuracy", "final_train_loss", "final_train_accuracy", "final_test_accuracy"):
            value, step = metrics[("", f"result/{key}")]
            assert step == MAX_STEPS and value == pytest.approx(getattr(result, key), rel=1e-6), key
        assert metrics[("", "result/best_epoch")][0] == result.best_epoch
    measured = json.loads((study / NAMES[0] / runfolder.SHARPNESS).read_text())
    lam = {(m["name"]["group"], m["name"]["tag"]): m["value"]
           for m in groups[NAMES[0]]["metricValues"]}[("sharpness", "lambda_max")]
    assert lam == pytest.approx(measured["lambda_max"], rel=1e-6) and lam > 0
    assert not any(m["name"]["group"] == "sharpness" for m in groups[NAMES[1]]["metricValues"])


def test_the_event_files_hold_every_epochs_metrics_line_on_the_step_axis(study):
    run_dir = study / NAMES[1]
    rows = runfolder.read_metrics(run_dir)
    assert [(r["epoch"], r["step"], r["examples_seen"]) for r in rows] == [(e + 1, s, s * 64) for e, s in
                                                                          enumerate(STEPS)]
    got = scalars(run_dir / runfolder.TENSORBOARD_DIR)
    for key in ("epoch", "examples_seen", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "weight_norm_sq", "effective_lr", "grad_norm_sq"):
        assert sorted(got[key]) == STEPS, key
        assert [got[key][r["step"]] for r in rows] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    assert "step" not in got  # it is the axis
    # The result numbers so far, every epoch: epoch 2's best is the best of epochs 1-2.
    best2 = max(r["test_accuracy"] for r in rows[:2])
    assert got["result/best_test_accuracy"][124] == pytest.approx(best2, rel=1e-6)
    sharp = scalars(study / NAMES[0] / runfolder.TENSORBOARD_DIR / summaries.SHARPNESS_DIR)
    assert list(sharp) == ["lambda_max"] and list(sharp["lambda_max"]) == [MAX_STEPS]  # at the run's last step


def test_the_writer_flushes_every_epoch(tmp_path):
    """Without a flush, TensorFlow's writer holds up to 10 events or 2 minutes; a running study must show."""
    writer = summaries.RunWriter(tmp_path, {"arch": "mlp"}, trial_id="t")
    row = {"step": 62, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": math.nan, "test_accuracy": None,
           "grad_norm_sq": 1e300}
    writer.epoch(1, row, {"best_test_accuracy": 0.25, "final_train_loss": None})
    got = scalars(tmp_path)  # read while the writer is still open
    assert got["train_loss"] == {62: 0.5} and got["train_accuracy"] == {62: pytest.approx(0.9)}
    # non-finite metrics are left out, and so is one beyond float32 (TensorBoard's scalars)
    assert "test_loss" not in got and "test_accuracy" not in got and "grad_norm_sq" not in got
    assert got["result/best_test_accuracy"] == {62: 0.25}
    assert math.isnan(got["result/final_train_loss"][62])  # as result.json's null: a diverged run reads NaN


def test_the_bs_over_lr_hparam_is_the_exact_ratio():
    """One ratio for the dashboard and runs.csv (runs.folder.ratio): equal ratios are equal numbers."""
    pairs = [(bs, lr) for bs in PAPER_BATCH_SIZES for lr in PAPER_LRS]
    settings = {"arch": "mlp", "dataset": "mnist1d", "momentum": 0.0, "weight_decay": 0.0, "seed": 0, "epochs": 1,
                "max_steps": None, "stop_at_train_loss": 0.0}
    hparams = [summaries.hparams_of({**settings, "batch_size": bs, "lr": lr})["bs_over_lr"] for bs, lr in pairs]
    assert hparams == [runfolder.ratio(bs, lr) for bs, lr in pairs]
    assert runfolder.ratio(112, 0.07) == runfolder.ratio(16, 0.01) == 1600.0 and 112 / 0.07 != 1600.0
    assert len(set(hparams)) == 255


def test_a_named_npz_is_the_named_dataset_in_the_hparams():
    settings = {"arch": "resnet20", "dataset": "npz", "dataset_name": "cifar10", "batch_size": 128, "lr": 0.1,
                "momentum": 0.9, "weight_decay": 5e-4, "seed": 2, "epochs": 200, "max_steps": None,
                "stop_at_train_loss": 0.0}
    assert summaries.hparams_of(settings) == {**{k: v for k, v in settings.items() if k != "dataset_name"},
                                              "dataset": "cifar10", "bs_over_lr": 1280.0, "max_steps": 0}
    assert list(summaries.hparams_of(settings)) == list(summaries.HPARAMS)
    assert np.isfinite(summaries.hparams_of(settings)["bs_over_lr"])
