"""ImageNet (ILSVRC-2012) at full size, read from tensorflow_datasets' files every epoch, and its preprocessing.

1,281,167 JPEGs of many sizes do not fit in memory, so unlike every other dataset (loaders.Data) imagenet2012
is a `StreamData`: what is known of the prepared TFDS dataset (split sizes, classes, normalisation), from
which `StreamPipelines` builds each epoch's tf.data pipeline. The preprocessing is torchvision's ImageNet
recipe (the references/classification scripts):

- training: RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)), with torchvision's 10 attempts and its
  centre-crop fallback, a bilinear (antialiased) resize, and a horizontal flip with probability 1/2;
- evaluation, and training under --noaugment: Resize(256) of the shorter side, then CenterCrop(224);
- both: divide by 255, then normalise each channel by ImageNet's mean and std as torchvision gives them
  (IMAGENET_MEAN, IMAGENET_STD: constants computed on the training set, not recomputed here).

An epoch's pipeline is a pure function of (seed, epoch), as the in-memory pipelines are: TFDS' file order,
the shuffle buffer and every crop and flip are seeded by them (stateless random ops keyed by the example's
position in the epoch), and tf.data runs deterministically. A run resumed from the checkpoint of epoch e so
sees the batches an uninterrupted run sees. The shuffle is TFDS' file shuffle followed by a buffer of
SHUFFLE_BUFFER examples, the usual ImageNet practice, not a uniform permutation of the whole training set.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from lrbs_tf.core.errors import DataError
from lrbs_tf.data.specs import DATASETS, IMAGENET_MANUAL

# torchvision's ImageNet normalisation (per channel, on the [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# RandomResizedCrop's defaults, and the evaluation resize.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
EVAL_RESIZE = 256
# Training examples (encoded JPEGs, about 110 kB each: about 1.1 GB) shuffled after TFDS' file shuffle.
SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass
class StreamData:
    """A prepared TFDS dataset read from disk every epoch: what training and config.json need of it (the
    attributes of loaders.Data that do not hold the examples themselves)."""
    name: str
    tfds_name: str
    data_dir: str | None
    train_split: str
    test_split: str
    num_train: int
    num_test: int
    num_classes: int
    input_shape: tuple
    mean: np.ndarray
    std: np.ndarray
    scale: float = 1.0 / 255.0

    def split(self, split: str, shuffle_seed: int | None = None):
        """`split` as (encoded image, int64 label) pairs, undecoded; files shuffled by `shuffle_seed` if given."""
        import tensorflow as tf
        import tensorflow_datasets as tfds

        options = tf.data.Options()
        options.deterministic = True
        config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options)
        return tfds.builder(self.tfds_name, data_dir=self.data_dir).as_dataset(
            split=split, shuffle_files=shuffle_seed is not None, as_supervised=True, read_config=config,
            decoders={"image": tfds.decode.SkipDecoding()})


def _count(ds, builder, split: str) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(builder.info.splits[split].num_examples)


def load_streamed(dataset: str, data_dir: str | None) -> StreamData:
    """The StreamData of `dataset` (a streamed key of DATASETS), after checking that TFDS has it prepared in
    `data_dir` (None: TFDS' default folder) with the classes the spec says. Reads no image. Raises DataError
    in one line when it is not prepared (IMAGENET_MANUAL says how)."""
    import tensorflow_datasets as tfds

    spec = DATASETS[dataset]
    where = data_dir or f"{os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'} (TFDS' default)"
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
        train, test = (builder.as_dataset(split=s, as_supervised=True,
                                          decoders={"image": tfds.decode.SkipDecoding()})
                       for s in ("train", spec.test_split))
        sizes = _count(train, builder, "train"), _count(test, builder, spec.test_split)
        classes = int(builder.info.features["label"].num_classes)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "could not find data" in first or isinstance(e, AssertionError):
            raise DataError(f"{dataset} is not prepared in {where}: {IMAGENET_MANUAL}") from None
        raise DataError(f"could not read {spec.tfds_name} through tensorflow_datasets (data_dir={where}): "
                        f"{first}") from None
    if classes != spec.num_classes:
        raise DataError(f"{spec.tfds_name} in {where} has {classes} classes, not {spec.num_classes}")
    for split, n in zip(("train", spec.test_split), sizes):
        if n == 0:
            raise DataError(f"{spec.tfds_name} in {where}: the {split} split is empty")
    return StreamData(dataset, spec.tfds_name, data_dir, "train", spec.test_split, sizes[0], sizes[1], classes,
                      spec.input_shape, np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32))


# --- preprocessing (one example; TensorFlow ops) -----------------------------------------------------------

def crop_box(height, width, seed):
    """torchvision's RandomResizedCrop.get_params in stateless TensorFlow ops: (top, left, h, w), int32.

    CROP_ATTEMPTS boxes of area U(CROP_SCALE) x height x width and log-uniform aspect ratio in CROP_RATIO;
    the first that fits the image is taken, at a uniform position; if none fits, the centre crop of the
    whole image with its aspect ratio clamped to CROP_RATIO. `seed`: shape [2] integers."""
    import tensorflow as tf

    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    area = tf.random.stateless_uniform([CROP_ATTEMPTS], seeds[0], *CROP_SCALE) * h_f * w_f
    log_ratio = tf.random.stateless_uniform([CROP_ATTEMPTS], seeds[1], math.log(CROP_RATIO[0]),
                                            math.log(CROP_RATIO[1]))
    ratio = tf.exp(log_ratio)
    ws = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (ws > 0) & (hs > 0) & (ws <= width) & (hs <= height)
    k = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # the first box that fits
    h, w = hs[k], ws[k]
    u = tf.random.stateless_uniform([2], seeds[2])
    top = tf.minimum(tf.cast(u[0] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
    left = tf.minimum(tf.cast(u[1] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
    # The fallback: the whole image, its aspect ratio clamped to CROP_RATIO, centred.
    in_ratio = w_f / h_f
    fh = tf.where(in_ratio < CROP_RATIO[0], tf.cast(tf.round(w_f / CROP_RATIO[0]), tf.int32), height)
    fw = tf.where(in_ratio > CROP_RATIO[1], tf.cast(tf.round(h_f * CROP_RATIO[1]), tf.int32), width)
    found = tf.reduce_any(fits)
    return (tf.where(found, top, (height - fh) // 2), tf.where(found, left, (width - fw) // 2),
            tf.where(found, h, fh), tf.where(found, w, fw))


def _decode(encoded):
    import tensorflow as tf

    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _normalise(image, size: int):
    """float [0, 255] pixels -> the model's inputs (divide by 255, per-channel ImageNet mean and std)."""
    import tensorflow as tf

    image = tf.ensure_shape(image, [size, size, 3]) / 255.0
    return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def train_image(encoded, seed, size: int = 224):
    """An encoded training image -> a random-resized crop to size x size, flipped with probability 1/2,
    normalised (float32). `seed`: shape [2] integers fixing the crop and the flip."""
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    image = _decode(encoded)
    shape = tf.shape(image)
    top, left, h, w = crop_box(shape[0], shape[1], seed)
    crop = tf.image.resize(image[top:top + h, left:left + w], [size, size], method="bilinear", antialias=True)
    flip = tf.random.stateless_uniform([], seed + tf.constant([0, 1], tf.int64)) < 0.5
    return _normalise(tf.where(flip, tf.reverse(crop, axis=[1]), crop), size)


def eval_image(encoded, size: int = 224, resize: int = EVAL_RESIZE):
    """An encoded image -> its shorter side resized to `resize` (the longer to int(resize x long / short), as
    torchvision's Resize computes it), the centre size x size crop (torchvision's CenterCrop offsets:
    round((side - size) / 2)), normalised (float32)."""
    import tensorflow as tf

    image = _decode(encoded)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.math.floordiv(resize * tf.cast(long, tf.int64), tf.cast(short, tf.int64)), tf.int32)
    new_h, new_w = tf.where(h <= w, resize, new_long), tf.where(h <= w, new_long, resize)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return _normalise(resized[top:top + size, left:left + size], size)
