"""lrbs_tf.runs.config: validation before and after what data and devices reveal; identity vs execution settings;
and the curvature quantities' seeds, keyed by name."""

from __future__ import annotations

import dataclasses

import pytest

from lrbs_tf.curvature import settings as curv
from lrbs_tf.runs import config
from lrbs_tf.runs.config import RuntimeFacts, TrainConfig, UsageError, identity_differences, validate

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def test_validation_before_data_uses_the_dataset_spec():
    validate(TrainConfig())  # the defaults are valid
    with pytest.raises(UsageError, match="arch 'vgg19' needs image inputs; dataset 'mnist1d' has examples of shape"):
        validate(TrainConfig(arch="vgg19"))
    with pytest.raises(UsageError, match="column_engine=stacked needs an mlp in float32 on one device"):
        validate(TrainConfig(column_engine="stacked", cpu_devices=2))
    with pytest.raises(UsageError, match="column_engine='turbo'; valid: auto, graph, stacked"):
        validate(TrainConfig(column_engine="turbo"))
    # An npz file's shape is unknown before it is read: nothing to say yet about conv nets on it.
    validate(TrainConfig(arch="resnet20", dataset="npz", data_path="x.npz"))


@pytest.mark.parametrize("cfg,facts,message", [
    (dict(arch="resnet20", dataset="npz", data_path="x.npz"), RuntimeFacts(input_shape=(6,)),
     "arch 'resnet20' needs image inputs; dataset 'npz' has examples of shape (6,)"),
    (dict(dataset="npz", data_path="x.npz", augment=True), RuntimeFacts(input_shape=(6,)),
     "--augment crops and flips images; dataset 'npz' has examples of shape (6,)"),
    (dict(batch_size=128), RuntimeFacts(input_shape=(40,), num_train=100),
     "batch_size=128 is larger than the training set (100 examples of mnist1d)"),
    (dict(batch_size=33), RuntimeFacts(replicas=2), "batch_size=33 is not divisible by 2 replicas"),
    (dict(column_engine="stacked"), RuntimeFacts(replicas=2),
     "column_engine=stacked needs an mlp in float32 on one device; arch=mlp, mixed_precision=off, 2 replica(s)"),
])
def test_validation_after_data_and_devices_checks_what_only_they_reveal(cfg, facts, message):
    validate(TrainConfig(**cfg))  # nothing to refuse before the facts are known
    with pytest.raises(UsageError) as info:
        validate(TrainConfig(**cfg), facts)
    assert message in str(info.value)


def test_identity_and_execution_settings_partition_the_configuration():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert config.EXECUTION_SETTINGS <= fields and config.ROUNDING_SETTINGS <= config.EXECUTION_SETTINGS
    assert set(config.IDENTITY_SETTINGS) == fields - config.EXECUTION_SETTINGS
    assert set(config.GRID_SETTINGS) <= set(config.IDENTITY_SETTINGS)
    recorded = config.settings(TrainConfig())
    # Execution settings may change on resume; identity settings may not.
    assert identity_differences(recorded, TrainConfig(workdir="elsewhere", jit_compile=True, progress=True)) == []
    assert identity_differences(recorded, TrainConfig(epochs=5, momentum=0.5)) == [
        "epochs=200 in config.json but epochs=5 now", "momentum=0.0 in config.json but momentum=0.5 now"]
    # A key an older config.json lacks is read as its default.
    old = {k: v for k, v in recorded.items() if k != "mixed_precision"}
    assert identity_differences(old, TrainConfig()) == []
    assert identity_differences(old, TrainConfig(mixed_precision="bfloat16")) == [
        "mixed_precision='off' in config.json but mixed_precision='bfloat16' now"]


def test_run_name_of_a_configuration():
    cfg = TrainConfig(arch="vgg19", dataset="cifar10", batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert cfg.resolved().run_name == "vgg19-cifar10-bs64-lr0.05-s0-m0.9-wd0.0005"
    assert cfg.resolved().augment is True and TrainConfig().resolved().augment is False


def test_quantity_seeds_depend_on_the_name_not_on_the_position(monkeypatch):
    before = {q: curv.Settings(seed=3).seed_for(q) for q in curv.QUANTITIES}
    assert len(set(before.values())) == len(before)  # a stream per quantity
    assert len(set(curv.QUANTITY_STREAMS.values())) == len(curv.QUANTITY_STREAMS)
    reordered = dict(reversed(list(curv.QUANTITY_STREAMS.items())))
    monkeypatch.setattr(curv, "QUANTITY_STREAMS", {"new_quantity": 99, **reordered})
    monkeypatch.setattr(curv, "QUANTITIES", tuple(curv.QUANTITY_STREAMS))
    assert {q: curv.Settings(seed=3).seed_for(q) for q in before} == before
    assert curv.Settings(seed=4).seed_for("trace") != before["trace"]


def test_run_names_carry_tagged_settings_when_not_default_and_asked_ones_only_when_asked():
    # Names at the defaults, and those of every setting older names carried, are what they were.
    assert TrainConfig().resolved().run_name == "mlp-mnist1d-bs64-lr0.05-s0"
    cfg = TrainConfig(mlp_width=128, mlp_depth=2, mlp_batch_norm=True, epochs=7, momentum=0.9, weight_decay=5e-4,
                      max_steps=150, batch_size=32, lr=1e-4, seed=3)
    assert cfg.resolved().run_name == "mlp-mnist1d-bs32-lr0.0001-s3-m0.9-wd0.0005-steps150"
    asked = dataclasses.replace(cfg, name_settings=("mlp_batch_norm", "epochs", "mlp_width"))
    # In ASKED_TAGS' order, whatever the order asked; a bool as -<tag> / -no<tag>; asked at its default too.
    assert asked.resolved().run_name == "mlp-mnist1d-bs32-lr0.0001-s3-m0.9-wd0.0005-steps150-w128-bn-ep7"
    assert dataclasses.replace(asked, mlp_batch_norm=False, mlp_width=256).resolved().run_name.endswith(
        "-w256-nobn-ep7")
    # A setting with no table entry (one added later) is named under its own name when not its default.
    assert config.run_name("mlp", "mnist1d", 64, 0.1, 0, svag=4) == "mlp-mnist1d-bs64-lr0.1-s0-svag4"
    assert config.run_name("mlp", "mnist1d", 64, 0.1, 0, momentum=0.0, mlp_width=128) == "mlp-mnist1d-bs64-lr0.1-s0"
    validate(asked)
    with pytest.raises(UsageError, match="name_settings holds 'momentum'; valid: mlp_width"):
        validate(dataclasses.replace(cfg, name_settings=("momentum",)))
    with pytest.raises(UsageError, match="data_path='d/x.npz' cannot go into a run name"):
        validate(TrainConfig(dataset="npz", data_path="d/x.npz", name_settings=("data_path",)))
    assert "name_settings" in config.EXECUTION_SETTINGS  # it names the folder; it is not what the run is
