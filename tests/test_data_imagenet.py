"""ImageNet: imagenet2012 streamed from TFDS (data/imagenet.py) and imagenet32 in memory, through
tensorflow_datasets' mock data (no network, no ImageNet files); torchvision's crop arithmetic by hand."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from lrbs_tf.data import imagenet, loaders, pipelines
from lrbs_tf.data.specs import DATASETS
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import UsageError
from lrbs_tf.training.run import run
from tests.helpers import small_config

MEAN, STD = np.array(imagenet.IMAGENET_MEAN), np.array(imagenet.IMAGENET_STD)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalised values of black and white, per channel


def _png(image: np.ndarray) -> tf.Tensor:
    return tf.io.encode_png(tf.constant(image, tf.uint8))


def test_the_specs_say_what_tfds_holds():
    full, small = DATASETS["imagenet2012"], DATASETS["imagenet32"]
    assert (full.tfds_name, full.test_split, full.streamed, full.num_train) == (
        "imagenet2012", "validation", True, 1_281_167)
    assert (small.tfds_name, small.test_split, small.streamed, small.input_shape) == (
        "imagenet_resized/32x32", "validation", False, (32, 32, 3))
    assert full.num_classes == small.num_classes == 1000 and full.augment_by_default and small.augment_by_default


def test_imagenet2012_unprepared_is_one_line_naming_the_manual_download(tmp_path):
    with pytest.raises(loaders.DataError) as info:
        loaders.load_data("imagenet2012", data_dir=str(tmp_path), stream=True)
    message = str(info.value)
    assert message.startswith(f"imagenet2012 is not prepared in {tmp_path}: ") and "\n" not in message
    assert "ILSVRC2012_img_train.tar" in message and "tfds build imagenet2012" in message
    with pytest.raises(UsageError, match="imagenet2012 is not prepared"):  # bin/train: before any folder
        run(small_config(tmp_path / "out", arch="mlp", dataset="imagenet2012", data_dir=str(tmp_path)))
    assert not (tmp_path / "out").exists()
    with pytest.raises(loaders.DataError, match="read from disk by bin/train only"):  # readers needing arrays
        loaders.load_data("imagenet2012", data_dir=str(tmp_path))


def test_random_resized_crop_boxes_follow_torchvision():
    """Every box lies in the image with area in [0.08, 1] of it and aspect ratio in [3/4, 4/3] (up to
    rounding to whole pixels); with a fixed seed the same box; an image no box fits takes the fallback."""
    h, w = 300, 400
    boxes = np.array([[int(v) for v in imagenet.crop_box(h, w, tf.constant([s, 3], tf.int64))] for s in range(200)])
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0 and area.max() > 0.8 and area.min() < 0.2
    ratio = bw / bh
    assert ratio.min() >= 0.75 * 0.98 and ratio.max() <= 4 / 3 * 1.02
    assert len({tuple(b) for b in boxes}) > 190 and len(set(left)) > 50
    again = [int(v) for v in imagenet.crop_box(h, w, tf.constant([7, 3], tf.int64))]
    assert again == boxes[7].tolist()
    # 10 x 1000: every candidate is at least sqrt(0.08 * 10,000 * 3/4) = 24 rows tall, so none fits; the
    # fallback keeps all 10 rows and round(10 x 4/3) = 13 columns, centred: (1000 - 13) // 2 = 493.
    assert [int(v) for v in imagenet.crop_box(10, 1000, tf.constant([1, 2], tf.int64))] == [0, 493, 10, 13]
    # 1000 x 10 (tall): all 10 columns and round(10 / (3/4)) = 13 rows, centred at (1000 - 13) // 2 = 493.
    assert [int(v) for v in imagenet.crop_box(1000, 10, tf.constant([1, 2], tf.int64))] == [493, 0, 13, 10]


def test_evaluation_resizes_the_shorter_side_to_256_and_crops_the_centre():
    """torchvision: a 300x400 image becomes 256 x int(256 * 400 / 300) = 256 x 341, cropped at rows
    round(32 / 2) = 16 and columns round(117 / 2) = 58 (half to even)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = imagenet.eval_image(_png(image)).numpy()
    resized = tf.image.resize(image, [256, 341], method="bilinear", antialias=True).numpy()
    expected = (resized[16:240, 58:282] / 255.0 - MEAN) / STD
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    portrait = imagenet.eval_image(_png(image.transpose(1, 0, 2))).numpy()  # 400x300: 341 x 256, the same crop
    np.testing.assert_allclose(portrait, expected.transpose(1, 0, 2), atol=1e-5)
    grey = imagenet.eval_image(_png(np.full((50, 70, 3), 128, np.uint8))).numpy()
    np.testing.assert_allclose(grey, np.broadcast_to((128 / 255 - MEAN) / STD, grey.shape), atol=1e-5)


def test_a_training_image_is_a_flipped_or_unflipped_crop_in_range():
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    outs = [imagenet.train_image(_png(image), tf.constant([0, i], tf.int64)).numpy() for i in range(6)]
    for out in outs:
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        assert (out >= LOW - 1e-5).all() and (out <= HIGH + 1e-5).all()
    np.testing.assert_array_equal(outs[0], imagenet.train_image(_png(image), tf.constant([0, 0], tf.int64)).numpy())
    assert not np.array_equal(outs[0], outs[1])


def test_streamed_pipelines_through_mock_data():
    """Shapes, dtypes, ranges and labels of both pipelines; an epoch is a function of (seed, epoch)."""
    with tfds.testing.mock_data(num_examples=10):
        data = loaders.load_data("imagenet2012", stream=True)
        assert (data.num_train, data.num_test, data.num_classes, data.input_shape) == (10, 10, 1000, (224, 224, 3))
        pipes = pipelines.make_pipelines(data, augment=True, eval_batch_size=4)
        assert isinstance(pipes, pipelines.StreamPipelines)
        epoch0 = [(x.numpy(), y.numpy()) for x, y in pipes.train(4, seed=0, epoch=0)]
        assert len(epoch0) == 2  # 10 // 4, the remainder dropped
        for x, y in epoch0:
            assert x.shape == (4, 224, 224, 3) and x.dtype == np.float32 and y.dtype == np.int32
            assert (x >= LOW - 1e-5).all() and (x <= HIGH + 1e-5).all() and ((0 <= y) & (y < 1000)).all()
        again = [(x.numpy(), y.numpy()) for x, y in pipes.train(4, seed=0, epoch=0)]
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(epoch0, again))
        epoch1 = [x.numpy() for x, _ in pipes.train(4, seed=0, epoch=1)]
        assert not any(np.array_equal(a[0], b) for a, b in zip(epoch0, epoch1))
        test = [(x.numpy(), y.numpy()) for x, y in pipes.test()]
        assert [len(y) for _, y in test] == [4, 4, 2]  # every example, the last batch partial
        assert all(x.dtype == np.float32 and x.shape[1:] == (224, 224, 3) for x, _ in test)
        plain = pipelines.make_pipelines(data, augment=False, eval_batch_size=4)  # --noaugment: the eval view
        x, y = next(iter(plain.train(10, seed=0, epoch=0)))
        order = {int(label): i for i, label in enumerate(np.concatenate([y for _, y in test]))}
        if len(order) == 10:  # mock labels are random: compare by label only when they are distinct
            flat = np.concatenate([x for x, _ in test])
            for k, label in enumerate(y.numpy()):
                np.testing.assert_array_equal(x.numpy()[k], flat[order[int(label)]])


def _split_with_labels(labels: dict):
    """A tfds mock `as_dataset` whose splits hold the given labels (random 32x32 images)."""
    rng = np.random.default_rng(0)

    def as_dataset(self, split, *args, **kwargs):
        ys = labels[str(split)]
        images = rng.integers(0, 256, (len(ys), 32, 32, 3), dtype=np.uint8)
        return tf.data.Dataset.from_generator(
            lambda: ({"image": im, "label": y} for im, y in zip(images, ys)),
            output_signature=self.info.features.get_tensor_spec())
    return as_dataset


def test_imagenet32_trains_resnet18_into_a_valid_run_folder(tmp_path):
    """imagenet32 in memory: CIFAR-style augmentation, statistics of its own, the validation split as the
    test set; resnet18 with the small stem, two steps."""
    labels = {"train": [3, 999, 5, 7, 3, 999, 5, 7], "validation": [999, 3, 5]}
    with tfds.testing.mock_data(as_dataset_fn=_split_with_labels(labels)):
        result = run(small_config(tmp_path, arch="resnet18", dataset="imagenet32", batch_size=4, epochs=1,
                                  lr=0.01))
    run_dir = tmp_path / "resnet18-imagenet32-bs4-lr0.01-s0"
    config = runfolder.read_config(run_dir).raw
    assert config["num_params"] == 11_681_832 and config["input_shape"] == [32, 32, 3]
    assert (config["num_classes"], config["num_train"], config["num_test"], config["steps_per_epoch"]) == (
        1000, 8, 3, 2)
    assert config["augment"] is True and config["dataset"] == "imagenet32"
    assert result["status"] == "done" and result["epochs"] == 1
    assert [r["epoch"] for r in runfolder.read_metrics(run_dir)] == [1]


def test_imagenet2012_streams_through_training(tmp_path):
    """The streamed path end to end on mock files (small images of many sizes, cropped to 224): a one-layer
    MLP keeps it cheap; config.json records the split sizes and torchvision's normalisation."""
    with tfds.testing.mock_data(num_examples=8):
        result = run(small_config(tmp_path, arch="mlp", mlp_depth=1, mlp_width=8, dataset="imagenet2012",
                                  batch_size=4, epochs=2, lr=0.01, eval_batch_size=3))
    run_dir = tmp_path / "mlp-imagenet2012-bs4-lr0.01-s0"
    config = runfolder.read_config(run_dir).raw
    assert config["num_params"] == 224 * 224 * 3 * 8 + 8 + 8 * 1000 + 1000
    assert (config["num_train"], config["num_test"], config["steps_per_epoch"], config["augment"]) == (8, 8, 2, True)
    np.testing.assert_allclose(config["normalization"]["mean"], MEAN, rtol=1e-6)
    np.testing.assert_allclose(config["normalization"]["std"], STD, rtol=1e-6)
    assert result["status"] == "done" and [r["epoch"] for r in runfolder.read_metrics(run_dir)] == [1, 2]
