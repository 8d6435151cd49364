"""--dataset_name: an npz of a known dataset is recorded, named and grouped as that dataset.

config.json keeps the flags as given (`dataset: npz`, `dataset_name: mnist1d`); the typed reader gives
readers that group runs the name (RunConfig.dataset) and readers that load data the loader
(RunConfig.data_source), so bin/correlate pools the runs and bin/sharpness reads the same npz file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lrbs_tf.curvature import session as sharpness
from lrbs_tf.runs import config, folder as runfolder, table as runtable
from lrbs_tf.runs.config import RuntimeFacts, TrainConfig, UsageError, validate
from lrbs_tf.training.run import run
from tests.helpers import run_bin, small_config
from tests.runfolders import write_run


def npz_file(path, shape=(40,), classes=10, n_train=256, n_test=64):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.normal(size=(n_train, *shape)).astype(np.float32),
             y_train=rng.integers(0, classes, n_train), x_test=rng.normal(size=(n_test, *shape)).astype(np.float32),
             y_test=rng.integers(0, classes, n_test))
    return str(path)


def test_a_named_npz_takes_the_name_in_the_run_name_and_the_datasets_augmentation_default():
    cfg = TrainConfig(arch="resnet20", dataset="npz", dataset_name="cifar10", data_path="c.npz").resolved()
    assert cfg.dataset_label == "cifar10"
    assert cfg.run_name == "resnet20-cifar10-bs64-lr0.05-s0"
    assert cfg.augment is True  # cifar10's default, so these runs are configured as the cifar10 runs
    plain = TrainConfig(arch="resnet20", dataset="npz", data_path="c.npz").resolved()
    assert (plain.dataset_label, plain.run_name, plain.augment) == ("npz", "resnet20-npz-bs64-lr0.05-s0", False)
    assert config.settings(cfg)["dataset"] == "npz" and config.settings(cfg)["dataset_name"] == "cifar10"


@pytest.mark.parametrize("kw, facts, message", [
    (dict(dataset="cifar10", dataset_name="mnist"), None, "only npz data can be named"),
    (dict(dataset="npz", dataset_name="a/b", data_path="x.npz"), None, "must be a plain name"),
    (dict(dataset="npz", dataset_name=".hidden", data_path="x.npz"), None, "must be a plain name"),
    (dict(dataset="npz", dataset_name="cifar10", data_path="x.npz"), RuntimeFacts(input_shape=(28, 28, 1)),
     r"dataset_name='cifar10' but x.npz holds examples of shape \(28, 28, 1\); cifar10's are \(32, 32, 3\)"),
    (dict(dataset="npz", dataset_name="cifar10", data_path="x.npz"),
     RuntimeFacts(input_shape=(32, 32, 3), num_classes=100), "holds 100 classes; cifar10 has 10"),
    # The name's known shape refuses a convolutional arch on vectors before any file is read.
    (dict(dataset="npz", dataset_name="mnist1d", data_path="x.npz", arch="resnet20"), None,
     "arch 'resnet20' needs image inputs; dataset 'mnist1d' has examples of shape"),
])
def test_bad_names_are_refused_with_the_values(kw, facts, message):
    with pytest.raises(UsageError, match=message):
        validate(TrainConfig(**kw), facts)


def test_unknown_names_and_the_datasets_own_name_are_accepted():
    validate(TrainConfig(dataset="npz", dataset_name="svhn_crop-v2", data_path="x.npz"),
             RuntimeFacts(input_shape=(32, 32, 3), num_classes=10))
    validate(TrainConfig(dataset="cifar10", dataset_name="cifar10"))


def test_an_npz_named_mnist1d_trains_pools_with_mnist1d_runs_and_is_measured_on_its_file(tmp_path):
    path = npz_file(tmp_path / "mine.npz")
    cfg = small_config(tmp_path / "w", dataset="npz", dataset_name="mnist1d", data_path=path, epochs=1)
    result = run(cfg)
    assert result["status"] == "done"
    run_dir = tmp_path / "w" / "mlp-mnist1d-bs64-lr0.1-s0"
    raw = runfolder.read_config(run_dir).raw
    assert (raw["dataset"], raw["dataset_name"], raw["data_path"], raw["num_train"]) == ("npz", "mnist1d", path, 256)
    typed = runfolder.read_config(run_dir)
    assert (typed.dataset, typed.data_source) == ("mnist1d", "npz")
    # bin/correlate's table: the named npz run and an ordinary mnist1d run share the dataset cell.
    write_run(tmp_path / "w", 0.5, arch="mlp", dataset="mnist1d", batch_size=128, lr=0.1)
    frame, _ = runtable.collect_runs(tmp_path / "w", [], 0.99)
    assert sorted(frame["dataset"]) == ["mnist1d", "mnist1d"]
    # bin/sharpness loads the recorded npz file, not the generated MNIST-1D.
    target = sharpness.resolve_target(str(run_dir))
    assert (target.dataset, target.data_path) == ("npz", path)
    assert sharpness.resolve_target(str(run_dir), dataset="npz").dataset == "npz"
    # The same command again finds its finished run (dataset_name is part of its identity).
    assert run(cfg)["status"] == "done"
    with pytest.raises(UsageError, match="dataset_name=.mnist1d. in config.json but dataset_name=None now"):
        run(dataclasses.replace(cfg, dataset_name=None, run_name=run_dir.name))


def test_bin_correlate_pools_a_named_npz_and_reports_what_differs(tmp_path):
    """The README's promise: pooled in one group, with the data's provenance reported as uncontrolled."""
    write_run(tmp_path, 0.6, dataset="cifar10", batch_size=64, lr=0.1)
    write_run(tmp_path, 0.5, dataset="npz", dataset_name="cifar10", data_path="/data/c10.npz", batch_size=128,
              lr=0.1, name="named")
    frame, configs = runtable.collect_runs(tmp_path, [], 0.99)
    assert list(frame["dataset"]) == ["cifar10", "cifar10"]
    varying = runtable.uncontrolled_settings(frame, configs, ["arch", "dataset"])
    assert set(varying) == {"dataset_name", "data_path"}


def test_a_config_json_without_dataset_name_reads_as_its_dataset(tmp_path):
    old = write_run(tmp_path, 0.5, dataset="npz")
    typed = runfolder.read_config(old)
    assert (typed.dataset, typed.data_source) == ("npz", "npz")
    bad = write_run(tmp_path, 0.5, dataset="npz", dataset_name=3, name="bad")
    with pytest.raises(runfolder.RunFolderError, match="dataset_name=3"):
        runfolder.read_config(bad)


def test_bin_train_refuses_a_mismatched_name_in_one_line_writing_nothing(tmp_path):
    path = npz_file(tmp_path / "images.npz", shape=(8, 8, 1))
    proc = run_bin("train", "--dataset=npz", f"--data_path={path}", "--dataset_name=cifar10", "--arch=mlp",
                   "--epochs=1", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"train: error: dataset_name='cifar10' but {path} holds examples of shape (8, 8, 1); "
                           "cifar10's are (32, 32, 3)\n")
    assert not (tmp_path / "w").exists()
