"""The tf.data pipelines that feed training and evaluation: per-epoch shuffling and augmentation seeded by
(seed, epoch), so a resumed run sees the same batches. Pipelines: a Data in memory; StreamPipelines: a
StreamData read from disk every epoch (imagenet2012)."""

from __future__ import annotations

from lrbs_tf.data.imagenet import SHUFFLE_BUFFER, StreamData, eval_image, train_image
from lrbs_tf.data.loaders import Data


def _epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, stable shuffle seed per (seed, epoch); epochs count from 0 here."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**31 - 1)


def augment_batch(images, seed):
    """CIFAR augmentation on a float batch (B, H, W, C): 4-pixel zero pad, random HxW crop, random h-flip.

    Stateless: `seed` (shape [2] int) fixes every random choice, so the same (seed, epoch, step) always
    gives the same batch. Padding happens before normalisation (zeros = black pixels), as in bearpaw.
    """
    import tensorflow as tf

    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [4, 4], [4, 4], [0, 0]])
    offsets = tf.random.stateless_uniform([b, 2], seed=seed, minval=0, maxval=9, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None, :]          # (B, H)
    cols = offsets[:, 1:] + tf.range(w)[None, :]          # (B, W)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, H, W+8, C)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)  # (B, H, W, C)
    flip = tf.random.stateless_uniform([b], seed=seed + tf.constant([0, 1], seed.dtype)) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


# Without augmentation an example's normalised value never changes, so the training set is normalised once
# (the same float32 ops as per batch, so the same values) when the float32 copy fits in this many bytes.
# The epoch pipeline is then shuffle + batch only: 1.6-1.7x the throughput of normalising every batch, CPU
# time that training on a 2-core machine gets back (benchmarks/pipeline numbers in BENCHMARKS.md).
PRENORMALIZE_BYTES = 1 << 30


class Pipelines:
    """Builds the tf.data pipelines of one Data: in-memory examples, normalised once or per batch, augmented
    per batch."""

    def __init__(self, data: Data, augment: bool, eval_batch_size: int = 1000):
        import tensorflow as tf

        self.data = data
        self.augment = augment and data.x_train.ndim == 4
        self.eval_batch_size = eval_batch_size
        self._mean = tf.constant(data.mean)
        self._std = tf.constant(data.std)
        self.prenormalized = not self.augment and data.x_train.size * 4 <= PRENORMALIZE_BYTES
        x_train = self._normalize(tf.constant(data.x_train)) if self.prenormalized else data.x_train
        self._train = tf.data.Dataset.from_tensor_slices((x_train, data.y_train))
        # The test set likewise, once, when small: normalising it per batch cost a map over it every epoch
        # (the same float32 numbers either way: the normalisation is elementwise).
        self._test_prenormalized = data.x_test.size * 4 <= PRENORMALIZE_BYTES
        x_test = self._normalize(tf.constant(data.x_test)) if self._test_prenormalized else data.x_test
        self._test = tf.data.Dataset.from_tensor_slices((x_test, data.y_test)).cache()

    def _normalize(self, x):
        import tensorflow as tf

        x = tf.cast(x, tf.float32) * self.data.scale
        return (x - self._mean) / self._std

    def train(self, batch_size: int, seed: int, epoch: int):
        """Epoch `epoch` (0-based): seeded shuffle, batches of `batch_size` (remainder dropped), augmentation."""
        import tensorflow as tf

        n = self.data.num_train
        ds = self._train.shuffle(n, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        ds = ds.batch(batch_size, drop_remainder=True)
        if self.prenormalized:
            return ds.prefetch(tf.data.AUTOTUNE)

        def prepare(step, batch):
            x, y = batch
            x = tf.cast(x, tf.float32) * self.data.scale
            if self.augment:
                x = augment_batch(x, tf.stack([tf.cast(_epoch_seed(seed, epoch), tf.int64), step]))
            return (x - self._mean) / self._std, y

        return ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
            tf.data.AUTOTUNE)

    def test(self):
        """The whole test set in order, the last batch partial: no example is dropped."""
        import tensorflow as tf

        batches = self._test.batch(self.eval_batch_size)
        if not self._test_prenormalized:
            batches = batches.map(lambda x, y: (self._normalize(x), y), num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
        return batches.prefetch(tf.data.AUTOTUNE)


class StreamPipelines:
    """The tf.data pipelines of a StreamData (imagenet2012, read from disk), with Pipelines' interface (`data`,
    `augment`, `train(batch_size, seed, epoch)`, `test()`)."""

    def __init__(self, data: StreamData, augment: bool, eval_batch_size: int = 1000):
        self.data = data
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self.size = data.input_shape[0]

    def train(self, batch_size: int, seed: int, epoch: int):
        """Epoch `epoch` (0-based): files and a buffer shuffled by (seed, epoch), each example cropped and
        flipped by (seed, epoch, its position), batches of `batch_size` (remainder dropped)."""
        import tensorflow as tf

        es = _epoch_seed(seed, epoch)
        ds = self.data.split(self.data.train_split, shuffle_seed=es)
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=es, reshuffle_each_iteration=False).enumerate()

        def prepare(i, example):
            encoded, label = example
            x = (train_image(encoded, tf.stack([tf.constant(es, tf.int64), i]), self.size) if self.augment
                 else eval_image(encoded, self.size))
            return x, tf.cast(label, tf.int32)

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def test(self):
        """The whole evaluation split in order, resized and centre-cropped, the last batch partial."""
        import tensorflow as tf

        ds = self.data.split(self.data.test_split).map(
            lambda encoded, label: (eval_image(encoded, self.size), tf.cast(label, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(self.eval_batch_size).prefetch(tf.data.AUTOTUNE)


def make_pipelines(data, augment: bool, eval_batch_size: int = 1000):
    """The pipelines of `data`: Pipelines for a Data in memory, StreamPipelines for a data.imagenet.StreamData
    read from disk (imagenet2012); both give `train(batch_size, seed, epoch)` and `test()`."""
    if isinstance(data, Data):
        return Pipelines(data, augment, eval_batch_size)
    return StreamPipelines(data, augment, eval_batch_size)
