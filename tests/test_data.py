"""Datasets and tf.data pipelines: offline MNIST-1D, npz files, TFDS through mock_data, augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from lrbs_tf.data import loaders as data_lib, pipelines


def _npz(path, n_train=50, n_test=20, shape=(8, 8), classes=3, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "y_train": rng.integers(0, classes, n_train),
              "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              "y_test": rng.integers(0, classes, n_test)}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


def test_mnist1d_is_the_packages_default_split_in_order():
    from mnist1d.data import get_dataset_args, make_dataset

    d = data_lib.load_data("mnist1d")
    ref = make_dataset(get_dataset_args())
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40) and d.num_classes == 10
    np.testing.assert_allclose(d.x_train, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test, ref["y_test"])
    z = d.normalize(d.x_train)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4


def test_npz_images_get_a_channel_axis_and_true_per_channel_statistics(tmp_path):
    d = data_lib.load_npz(_npz(tmp_path / "d.npz", shape=(6, 6, 2)))
    assert d.input_shape == (6, 6, 2) and d.num_classes == 3 and d.scale == 1 / 255
    x = d.x_train.astype(np.float64) / 255
    np.testing.assert_allclose(d.mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(d.std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    grey = data_lib.load_npz(_npz(tmp_path / "g.npz", shape=(5, 5)))
    assert grey.input_shape == (5, 5, 1)


@pytest.mark.parametrize("overrides,message", [
    ({"y_test": None}, "lacks y_test"),
    ({"y_train": np.zeros(7, np.int64)}, "x_train has 50 examples but y_train has 7"),
    ({"y_train": -np.ones(50, np.int64)}, "non-negative integer"),
    ({"x_test": np.zeros((20, 3, 3), np.uint8)}, "x_test examples"),
])
def test_bad_npz_files_name_the_problem(tmp_path, overrides, message):
    with pytest.raises(data_lib.DataError, match=message):
        data_lib.load_npz(_npz(tmp_path / "bad.npz", **overrides))


def test_missing_and_corrupt_npz(tmp_path):
    with pytest.raises(data_lib.DataError, match="does not exist"):
        data_lib.load_npz(str(tmp_path / "nope.npz"))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(data_lib.DataError, match="unreadable"):
        data_lib.load_npz(str(corrupt))


def _epoch(pipes, bs, seed, epoch):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in pipes.train(bs, seed, epoch)])
    return np.concatenate(xs), np.concatenate(ys)


def test_train_pipeline_is_a_seeded_per_epoch_permutation_without_remainder(tmp_path):
    d = data_lib.load_npz(_npz(tmp_path / "v.npz", shape=(4,)))
    d.x_train = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)  # row i identifies example i
    pipes = pipelines.Pipelines(d, augment=False)
    x0, _ = _epoch(pipes, 16, seed=3, epoch=0)
    assert x0.shape == (48, 4)  # 3 full batches, the 2 left over are dropped
    ids = (d.normalize(d.x_train)[:, 0])
    picked = [int(np.argmin(np.abs(ids - v))) for v in x0[:, 0]]
    assert len(set(picked)) == 48  # no example twice within an epoch
    again, _ = _epoch(pipes, 16, seed=3, epoch=0)
    np.testing.assert_array_equal(x0, again)  # a pure function of (seed, epoch): what resume relies on
    x1, _ = _epoch(pipes, 16, seed=3, epoch=1)
    other_seed, _ = _epoch(pipes, 16, seed=4, epoch=0)
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, other_seed)


def test_normalising_once_gives_the_batches_normalising_per_batch_gives(tmp_path, monkeypatch):
    d = data_lib.load_npz(_npz(tmp_path / "img.npz", n_train=50, shape=(8, 8, 3)))  # uint8 images
    once = pipelines.Pipelines(d, augment=False)
    monkeypatch.setattr(pipelines, "PRENORMALIZE_BYTES", 0)
    per_batch = pipelines.Pipelines(d, augment=False)
    assert once.prenormalized and not per_batch.prenormalized
    for epoch in (0, 1):
        x_once, y_once = _epoch(once, 16, seed=5, epoch=epoch)
        x_batch, y_batch = _epoch(per_batch, 16, seed=5, epoch=epoch)
        np.testing.assert_array_equal(x_once, x_batch)  # same order, bit-identical values
        np.testing.assert_array_equal(y_once, y_batch)
    assert not pipelines.Pipelines(d, augment=True).prenormalized  # augmentation pads raw pixels per batch


def test_test_pipeline_keeps_every_example_in_order(tmp_path):
    d = data_lib.load_npz(_npz(tmp_path / "t.npz", n_test=23))
    pipes = pipelines.Pipelines(d, augment=False, eval_batch_size=10)
    batches = [x.numpy() for x, _ in pipes.test()]
    assert [len(b) for b in batches] == [10, 10, 3]
    np.testing.assert_allclose(np.concatenate(batches), d.normalize(d.x_test), rtol=1e-6)


def test_augmentation_is_a_padded_crop_or_its_mirror():
    rng = np.random.default_rng(1)
    images = rng.random((64, 32, 32, 3)).astype(np.float32) + 1.0  # no zeros, so padding is visible
    out = pipelines.augment_batch(tf.constant(images), tf.constant([5, 7], tf.int64)).numpy()
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips, offsets = 0, set()
    for i in range(len(images)):
        found = None
        for r in range(9):
            for c in range(9):
                crop = padded[i, r:r + 32, c:c + 32]
                if np.array_equal(out[i], crop):
                    found = (r, c, False)
                elif np.array_equal(out[i], crop[:, ::-1]):
                    found = (r, c, True)
        assert found is not None, f"image {i} is not a crop of its padded original"
        flips += found[2]
        offsets.add(found[:2])
    assert 16 < flips < 48 and len(offsets) > 20
    same = pipelines.augment_batch(tf.constant(images), tf.constant([5, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(out, same)


def test_tfds_path_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        d = data_lib.load_data("cifar10", data_dir=None)
    assert d.x_train.shape == (24, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.y_test.shape == (24,) and d.num_classes == 10
    pipes = pipelines.Pipelines(d, augment=True)
    x, y = next(iter(pipes.train(8, seed=0, epoch=0)))
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32


def test_large_training_splits_get_the_same_statistics_in_chunks(monkeypatch):
    """imagenet32's 3.9e9 pixel values are summed a chunk at a time (a float64 copy would be 31 GB); on a
    small split forced through that path the statistics are the one-pass ones (float32 rounding aside)."""
    x = np.random.default_rng(0).integers(0, 256, (103, 5, 4, 3), dtype=np.uint8)
    mean, std = data_lib._stats(x, 1 / 255)
    monkeypatch.setattr(data_lib, "STATS_CHUNK_VALUES", 0)
    monkeypatch.setattr(data_lib, "STATS_CHUNK", 10)
    chunked_mean, chunked_std = data_lib._stats(x, 1 / 255)
    np.testing.assert_allclose(chunked_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(chunked_std, std, rtol=1e-6)
    xs = x.reshape(-1, 3) / 255
    np.testing.assert_allclose(chunked_std, xs.std(axis=0), rtol=1e-6)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(data_lib.DataError, match="valid: cifar10"):
        data_lib.load_data("imagenet")


def test_iter_run_dirs_reports_folders_it_cannot_list(tmp_path):
    import os

    from lrbs_tf.runs import folder as runfolder

    (tmp_path / "a" / "run1").mkdir(parents=True)
    (tmp_path / "a" / "run1" / "config.json").write_text("{}")
    (tmp_path / "a" / "run1" / "ckpt").mkdir()  # a run's subfolders are not searched
    (tmp_path / "a" / "run1" / "ckpt" / "config.json").write_text("{}")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0)
    try:
        problems = []
        found = list(runfolder.iter_run_dirs(tmp_path, problems))
        assert found == [tmp_path / "a" / "run1"]
        if os.geteuid() != 0:  # root can list anything, so only others can see the report
            assert problems and str(locked) in problems[0]
    finally:
        os.chmod(locked, 0o755)
    gone = []  # the same error path, reachable as root too: a root that cannot be listed at all
    assert list(runfolder.iter_run_dirs(tmp_path / "missing", gone)) == []
    assert len(gone) == 1 and "missing" in gone[0] and "No such file" in gone[0]


# --- data values, checked by every loader (docs/reliability.md) ------------------------------------------

def _floats(n, shape=(4,), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize("overrides,message", [
    ({"x_train": np.where(np.arange(200).reshape(50, 4) % 37 == 5, np.nan, 1.0).astype(np.float32)},
     "x_train: non-finite values (NaN or Inf as float32): 6 of 200, in 6 of 50 examples (the first: example 1)"),
    ({"x_test": np.r_[_floats(19), np.full((1, 4), np.inf, np.float32)]},
     "x_test: non-finite values (NaN or Inf as float32): 4 of 80, in 1 of 20 examples (the first: example 19)"),
    ({"x_train": np.r_[_floats(49), np.full((1, 4), 1e300)]},  # finite in float64, infinite as trained
     "x_train: non-finite values (NaN or Inf as float32): 4 of 200"),
    ({"y_test": np.r_[np.zeros(17, int), [7, 7, 9]]},
     "y_test: labels of classes the training split lacks (7, 9): 3 of 20; no model can learn them"),
    ({"y_train": np.r_[np.zeros(48, int), [-1, -3]]},
     "y_train: labels outside [0, 3): 2 of 50 (e.g. -1 at example 48; class labels are non-negative integers"),
    ({"y_train": np.zeros(50), "y_test": np.zeros(20)}, "y_train must hold non-negative integer class labels, "
                                                        "not float64 values"),
    ({"x_train": np.zeros((0, 4), np.float32), "y_train": np.zeros(0, int)}, "the train split is empty"),
    ({"x_test": np.zeros((0, 4), np.float32), "y_test": np.zeros(0, int)}, "the test split is empty"),
])
def test_npz_values_are_checked(tmp_path, overrides, message):
    path = tmp_path / "values.npz"
    arrays = {"x_train": _floats(50), "y_train": np.arange(50) % 3, "x_test": _floats(20, seed=1),
              "y_test": np.arange(20) % 3, **overrides}
    np.savez(path, **arrays)
    with pytest.raises(data_lib.DataError) as info:
        data_lib.load_npz(str(path))
    assert str(info.value).startswith(f"npz file {path}: ") and message in str(info.value), str(info.value)


def test_bad_npz_values_are_refused_before_a_run_folder_exists(tmp_path):
    from lrbs_tf.runs.config import UsageError
    from lrbs_tf.training.run import run
    from tests.helpers import small_config

    path = tmp_path / "nan.npz"
    x = _floats(64)
    x[10, 2] = np.nan
    np.savez(path, x_train=x, y_train=np.arange(64) % 2, x_test=_floats(8), y_test=np.arange(8) % 2)
    with pytest.raises(UsageError, match=r"x_train: non-finite values .*: 1 of 256"):
        run(small_config(tmp_path / "out", dataset="npz", data_path=str(path), batch_size=16))
    assert not (tmp_path / "out").exists()  # never trained into a "diverged" result


def _mock_split(labels: dict):
    """A tfds mock `as_dataset` whose splits hold the given labels (images all zeros)."""
    def as_dataset(self, split, *args, **kwargs):
        ys = labels[str(split)]
        return tf.data.Dataset.from_generator(
            lambda: ({"image": np.zeros((32, 32, 3), np.uint8), "id": "x", "label": y} for y in ys),
            output_signature=self.info.features.get_tensor_spec())
    return as_dataset


@pytest.mark.parametrize("labels,message", [
    ({"train": [0, 1, 12, 3], "test": [0, 1]},
     "cifar10 (tensorflow_datasets, data_dir=None): y_train: labels outside [0, 10): 1 of 4 (e.g. 12 at example 2"),
    ({"train": [0, 1, 2, 3], "test": [0, 4, 5, 4, 1]},
     "cifar10 (tensorflow_datasets, data_dir=None): y_test: labels of classes the training split lacks (4, 5): "
     "3 of 5"),
    ({"train": [0, 1], "test": []}, "cifar10 (tensorflow_datasets, data_dir=None): the test split is empty"),
])
def test_tfds_values_are_checked(labels, message):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_dataset_fn=_mock_split(labels)):
        with pytest.raises(data_lib.DataError) as info:
            data_lib.load_data("cifar10")
    assert str(info.value).startswith(message), str(info.value)


def test_mnist1d_values_are_checked(monkeypatch, tmp_path):
    import mnist1d.data

    good = data_lib.load_data("mnist1d")
    x = good.x_train.copy()
    x[[3, 8], 0] = np.nan

    monkeypatch.setattr(mnist1d.data, "make_dataset",  # a generator gone wrong
                        lambda args: {"x": x, "y": good.y_train, "x_test": good.x_test, "y_test": good.y_test})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data_lib._mnist1d_arrays.cache_clear()
    try:
        with pytest.raises(data_lib.DataError) as info:
            data_lib.load_data("mnist1d")
    finally:
        data_lib._mnist1d_arrays.cache_clear()
    assert str(info.value).startswith("mnist1d (generated by the mnist1d package ")
    assert "x_train: non-finite values (NaN or Inf as float32): 2 of 160,000, in 2 of 4,000 examples" in str(info.value)
    assert not list(tmp_path.rglob("*.npz"))  # bad data is never cached


# --- both splits judged on their own (issue 22, cases 3, 5 and 8) ----------------------------------------

def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)


def test_a_float_test_split_beside_uint8_training_images_is_not_divided_by_255_again(tmp_path):
    """Case 3: a test split already in [0, 1] was divided by 255 again (best test accuracy 0.148, not 0.297)."""
    x_train, x_test = _pixels(50, 0), _pixels(20, 1)
    y_train, y_test = np.arange(50) % 3, np.arange(20) % 3
    np.savez(tmp_path / "pixels.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    np.savez(tmp_path / "mixed.npz", x_train=x_train, y_train=y_train, x_test=x_test / 255.0, y_test=y_test)
    pixels = data_lib.load_npz(str(tmp_path / "pixels.npz"))
    mixed = data_lib.load_npz(str(tmp_path / "mixed.npz"))
    np.testing.assert_allclose(mixed.normalize(mixed.x_test), pixels.normalize(pixels.x_test), atol=1e-5)
    np.testing.assert_allclose(mixed.normalize(mixed.x_train), pixels.normalize(pixels.x_train), atol=1e-5)
    assert mixed.x_test.max() <= 1.0 and mixed.scale == 1.0


@pytest.mark.parametrize("overrides,message", [
    # case 3: a float64 test split beyond float32's range beside uint8 training images was recorded diverged
    ({"x_test": np.r_[np.zeros((19, 4, 4, 1)), np.full((1, 4, 4, 1), 1e300)]},
     "x_test: non-finite values (NaN or Inf as float32): 16 of 320, in 1 of 20 examples (the first: example 19)"),
    ({"x_train": _pixels(50, 0) / 255.0, "x_test": _pixels(20, 1).astype(np.float32)},
     "the splits are on different scales (x_train in [0, 1]; x_test in [0, 255]): x_test looks like 0-255 "
     "pixels and x_train like [0, 1] values"),
    ({"x_test": _pixels(20, 1).astype(np.float64)},  # uint8 training pixels beside float pixels
     "the splits are on different scales (x_train in [0, 1] (uint8 / 255); x_test in [0, 255])"),
    # case 5: one stray label built a 1,000,001-class model of 17M parameters
    ({"y_train": np.r_[np.arange(49) % 3, [10**6]], "y_test": np.r_[np.arange(19) % 3, [10**6]]},
     "labels run up to 1,000,000 (y_train example 49), so a model would need 1,000,001 classes, but only 4 "
     "distinct labels occur"),
    # case 8: these raised a traceback
    ({"x_train": np.array(3.0)}, "x_train is a single value (a 0-d array), not one entry per example"),
    ({"x_test": np.array([["a"] * 16] * 20)}, "x_test holds <U1 values, not numbers"),
    ({"y_train": np.eye(3, dtype=np.int64)[np.arange(50) % 3]},
     "y_train has shape (50, 3): labels are class indices of shape (N,); these look one-hot (use y.argmax(axis=1))"),
])
def test_each_split_is_checked_whatever_the_other_splits_dtype(tmp_path, overrides, message):
    path = tmp_path / "values.npz"
    arrays = {"x_train": _pixels(50, 0), "y_train": np.arange(50) % 3, "x_test": _pixels(20, 1),
              "y_test": np.arange(20) % 3, **overrides}
    np.savez(path, **arrays)
    with pytest.raises(data_lib.DataError) as info:
        data_lib.load_npz(str(path))
    assert str(info.value).startswith(f"npz file {path}: ") and message in str(info.value), str(info.value)


def test_labels_that_skip_a_few_classes_are_still_classes(tmp_path):
    path = tmp_path / "few.npz"
    np.savez(path, x_train=_pixels(50, 0), y_train=(np.arange(50) % 3) * 7, x_test=_pixels(20, 1),
             y_test=(np.arange(20) % 3) * 7)
    assert data_lib.load_npz(str(path)).num_classes == 15  # 0, 7, 14 of 15: sparse, not absurd
