"""Datasets as in-memory arrays, and the tf.data pipelines that feed training and evaluation.

Every dataset is loaded into a `Data` (raw arrays plus per-channel normalisation statistics computed on the
training split). The training pipeline is a pure function of (seed, epoch): the order and the augmentation
of epoch e never depend on how many epochs this process has already run, so a run resumed from the
checkpoint of epoch e sees exactly the batches an uninterrupted run sees. That is the data-iterator state
the checkpoint needs (the epoch counter), without storing a shuffle buffer of the whole training set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from lrbs_tf.core.errors import DataError
from lrbs_tf.data.specs import DATASETS


@dataclasses.dataclass
class Data:
    """A dataset in memory. Images are uint8 (N, H, W, C); vectors are float32 (N, F). Labels are int32 (N,)."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray  # per channel, in the units after `scale` (shape (C,), or (1,) for vectors)
    std: np.ndarray
    scale: float      # 1/255 for uint8 images, 1 otherwise

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw examples -> the float32 model inputs training uses (without augmentation)."""
        return ((x.astype(np.float32) * np.float32(self.scale) - self.mean) / self.std).astype(np.float32)


# Training splits of more values than this (imagenet32: 3.9e9) get their statistics in chunks of this many
# examples: a float64 copy of the whole split would need 8 bytes a value (31 GB). Smaller splits keep the
# one-pass computation below, so their statistics (and every run on them) stay bit for bit as they were.
STATS_CHUNK_VALUES, STATS_CHUNK = 1 << 30, 50_000


def _chunked_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of images (N, H, W, C) in float64, STATS_CHUNK examples at a time (two
    passes: the mean, then the squared deviations from it)."""
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    total = sum(x[i:i + STATS_CHUNK].astype(np.float64).sum(axis=axes) for i in range(0, len(x), STATS_CHUNK))
    mean = total * scale / count
    squares = sum(((x[i:i + STATS_CHUNK].astype(np.float64) * scale - mean) ** 2).sum(axis=axes)
                  for i in range(0, len(x), STATS_CHUNK))
    return mean.astype(np.float32), np.sqrt(squares / count).astype(np.float32)


def _stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the training split, in float64 (true statistics, not constants)."""
    if x.size > STATS_CHUNK_VALUES and x.ndim == 4:
        return _chunked_stats(x, scale)
    xs = x.astype(np.float64) * scale
    axes = tuple(range(xs.ndim - 1)) if xs.ndim > 2 else None
    if axes is None:  # vectors: one channel
        return np.array([xs.mean()], np.float32), np.array([xs.std()], np.float32)
    return xs.mean(axis=axes).astype(np.float32), xs.std(axis=axes).astype(np.float32)


def _labels_problem(source: str, split: str, y: np.ndarray, num_classes: int) -> str | None:
    if not np.issubdtype(y.dtype, np.integer):
        return f"{source}: y_{split} must hold non-negative integer class labels, not {y.dtype} values"
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        return (f"{source}: y_{split}: labels outside [0, {num_classes}): {np.count_nonzero(outside):,} of "
                f"{len(y):,} (e.g. {int(y[outside][0])} at example {int(np.argmax(outside))}; class labels are "
                "non-negative integers below the number of classes)")
    return None


# An npz whose largest label implies more than SPARSE_CLASSES times as many classes as distinct labels occur
# (and more than MIN_SPARSE_CLASSES) is refused: one stray 10**6 built a 1,000,001-class model.
SPARSE_CLASSES, MIN_SPARSE_CLASSES = 10, 100


def _inputs_problem(source: str, split: str, x: np.ndarray) -> str | None:
    if not np.issubdtype(x.dtype, np.floating):
        return None  # integer pixels are always finite
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if not bad.any():
        return None
    examples = bad.any(axis=1)
    return (f"{source}: x_{split}: non-finite values (NaN or Inf as float32): {np.count_nonzero(bad):,} of "
            f"{bad.size:,}, in {np.count_nonzero(examples):,} of {len(x):,} examples (the first: example "
            f"{int(np.argmax(examples))})")


def check_values(source: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, num_classes: int | None = None) -> int:
    """Refuses data no study should train on, naming `source` (the file or dataset), the split and the
    count of offending values: an empty split, labels that are not integers in [0, num_classes), a test
    split holding classes the training split lacks (its accuracy would measure nothing learnable), and
    non-finite inputs (NaN would train into a run recorded as diverged: bad data turned into a result).
    Labels are flat (N,). `num_classes` None: one more than the largest label (npz files). Returns the
    number of classes. Raises DataError."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) == 0 or len(y) == 0:
            raise DataError(f"{source}: the {split} split is empty")
    if num_classes is None:
        for split, y in (("train", y_train), ("test", y_test)):
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(_labels_problem(source, split, y, 0))
        num_classes = max(int(y_train.max()), int(y_test.max()), 0) + 1
        if min(int(y_train.min()), int(y_test.min())) >= 0:  # negative labels are named below
            distinct = np.union1d(y_train, y_test).size
            if num_classes > SPARSE_CLASSES * distinct and num_classes > MIN_SPARSE_CLASSES:
                top = max(int(y_train.max()), int(y_test.max()))
                split = "train" if int(y_train.max()) == top else "test"
                at = int(np.argmax((y_train if split == "train" else y_test) == top))
                raise DataError(f"{source}: labels run up to {top:,} (y_{split} example {at}), so a model would "
                                f"need {num_classes:,} classes, but only {distinct:,} distinct labels occur: "
                                "class labels are 0, 1, ..., C-1 (a stray value, or labels to renumber)")
    for split, y in (("train", y_train), ("test", y_test)):
        problem = _labels_problem(source, split, y, num_classes)
        if problem:
            raise DataError(problem)
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if unseen.size:
        count = np.count_nonzero(np.isin(y_test, unseen))
        raise DataError(f"{source}: y_test: labels of classes the training split lacks "
                        f"({', '.join(map(str, unseen[:10].tolist()))}{', ...' if unseen.size > 10 else ''}): "
                        f"{count:,} of {len(y_test):,}; no model can learn them from this data")
    for split, x in (("train", x_train), ("test", x_test)):
        problem = _inputs_problem(source, split, x)
        if problem:
            raise DataError(problem)
    return num_classes


# A split whose values all lie in [0, UNIT_TOP] is on the [0, 1] scale; one reaching beyond PIXEL_FLOOR (but
# not 255) beside it looks like 0-255 pixels: the two cannot be normalised by one set of statistics.
UNIT_TOP, PIXEL_FLOOR = 1.0, 2.0


def _as_float(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf, which check_values refuses
        return x.astype(np.float32)


def _scale_problem(source: str, x_train: np.ndarray, x_test: np.ndarray, pixels_in: tuple[str, ...]) -> str | None:
    """Both splits (finite, in the units training sees) on one scale: refuses a [0, 1] split beside a 0-255
    one (a test split already divided by 255, or not yet), naming both ranges. `pixels_in`: the splits that
    were uint8, divided by 255 already."""
    ranges = {split: (float(x.min()), float(x.max())) for split, x in (("train", x_train), ("test", x_test))}
    if min(lo for lo, _ in ranges.values()) < 0:
        return None  # standardised or signed data: no pixel scale to compare
    unit = [s for s, (_, hi) in ranges.items() if hi <= UNIT_TOP]
    pixels = [s for s, (_, hi) in ranges.items() if PIXEL_FLOOR < hi <= 255.0]
    if not (unit and pixels):
        return None
    shown = "; ".join(f"x_{s} in [{lo:g}, {hi:g}]" + (" (uint8 / 255)" if s in pixels_in else "")
                      for s, (lo, hi) in ranges.items())
    return (f"{source}: the splits are on different scales ({shown}): x_{pixels[0]} looks like 0-255 pixels and "
            f"x_{unit[0]} like [0, 1] values; store both as uint8 pixels, or both as floats on one scale")


def _make(name: str, x_train, y_train, x_test, y_test, num_classes: int | None = None,
          source: str | None = None) -> Data:
    """A Data from raw arrays, after check_values (`source` names them in its messages; default `name`).

    Each split's scale is judged on its own dtype: uint8 pixels are divided by 255, floats are taken as
    they are. Two uint8 splits stay uint8 (scaled in the pipeline); otherwise both become float32 on the
    [0, 1] scale of the uint8 one, and a float split whose range looks like 0-255 beside a [0, 1] one, or
    the reverse, is refused."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    source = source or name
    was_uint8 = tuple(s for s, x in (("train", x_train), ("test", x_test)) if x.dtype == np.uint8)
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        x_train, x_test = (x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else _as_float(x)
                           for x in (x_train, x_test))
    if x_train.ndim == 3:  # (N, H, W) grey images: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    num_classes = check_values(source, x_train, y_train, x_test, y_test, num_classes)
    if x_train.dtype != np.uint8:
        problem = _scale_problem(source, x_train, x_test, was_uint8)
        if problem:
            raise DataError(problem)
    y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    mean, std = _stats(x_train, scale)
    std = np.where(std > 0, std, 1.0).astype(np.float32)  # a constant channel is left unscaled
    return Data(name, x_train, y_train, x_test, y_test, num_classes, mean, std, scale)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lrbs_tf"


MNIST1D_SHAPE = DATASETS["mnist1d"].input_shape
MNIST1D_CLASSES = DATASETS["mnist1d"].num_classes


def _mnist1d_source(path: Path | None) -> str:
    from importlib import metadata

    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "of unknown version"
    return f"mnist1d (generated by the mnist1d package {version}" + (f", cached in {path})" if path else ")")


def _cached_mnist1d(path: Path) -> tuple[np.ndarray, ...] | None:
    """The cache's arrays when they are whole and pass check_values; None otherwise (a cache file cut short,
    damaged or from elsewhere is only a cache: it is generated again)."""
    try:
        with np.load(path) as f:
            arrays = f["x"], f["y"], f["x_test"], f["y_test"]
        if arrays[0].shape[1:] != MNIST1D_SHAPE or arrays[2].shape[1:] != MNIST1D_SHAPE:
            return None
        check_values(str(path), *arrays, num_classes=MNIST1D_CLASSES)
    except (OSError, KeyError, ValueError, EOFError):  # DataError is a ValueError
        return None
    return arrays


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays() -> tuple[tuple[np.ndarray, ...], Path | None]:
    """MNIST-1D with the package's default arguments (4,000 train / 1,000 test, 40 features), and the cache
    file it came from (None when it was generated here).

    Generation takes seconds, so the arrays are cached on disk keyed by the package version and arguments.
    The cache only ever holds what make_dataset returns; delete it freely. It is written without fsync:
    after a crash a damaged cache fails the checks above and is generated again.
    """
    import mnist1d
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    key = hashlib.sha1(repr((getattr(mnist1d, "__version__", "?"), sorted(vars(args).items())))
                       .encode()).hexdigest()[:12]
    path = _cache_dir() / f"mnist1d-{key}.npz"
    cached = _cached_mnist1d(path)
    if cached is not None:
        return cached, path
    d = make_dataset(args)
    arrays = (d["x"].astype(np.float32), d["y"], d["x_test"].astype(np.float32), d["y_test"])
    try:
        check_values(_mnist1d_source(None), *arrays, num_classes=MNIST1D_CLASSES)
    except DataError:
        return arrays, None  # never cached; load_data refuses it with the same check
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=arrays[0], y=arrays[1], x_test=arrays[2], y_test=arrays[3])
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the regeneration next time
    return arrays, None


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def check_npz_file(path: str) -> None:
    """The checks of an npz file that read none of its arrays (given, a file, a zip archive holding the four
    keys): bin/train makes them before TensorFlow loads, so a wrong path is refused in about a second."""
    if not path:
        raise DataError("--dataset=npz needs --data_path=FILE.npz")
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
    except Exception as e:  # zip errors, truncated files, permissions
        raise DataError(f"npz file {path} is unreadable: {type(e).__name__}: {e}") from None
    if missing:
        raise DataError(f"npz file {path} lacks {', '.join(missing)} (has: {', '.join(f.files) or 'nothing'})")


def load_npz(path: str) -> Data:
    """A local file in the keras.datasets layout: x_train, y_train, x_test, y_test."""
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except Exception as e:  # zip errors, pickled objects, truncated files, permissions
        raise DataError(f"npz file {path} is unreadable: {type(e).__name__}: {e}") from None
    for key, a in arrays.items():
        if a.ndim == 0:
            raise DataError(f"npz file {path}: {key} is a single value (a 0-d array), not one entry per example")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f"npz file {path}: {key} holds {a.dtype} values, not numbers")
    for key in ("y_train", "y_test"):
        shape = arrays[key].shape
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise DataError(f"npz file {path}: {key} has shape {shape}: labels are class indices of shape (N,)"
                            + ("; these look one-hot (use y.argmax(axis=1))" if len(shape) == 2 else ""))
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DataError(f"npz file {path}: x_{split} has {nx} examples but y_{split} has {ny}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"npz file {path}: x_train examples have shape {arrays['x_train'].shape[1:]}, "
                        f"x_test examples {arrays['x_test'].shape[1:]}")
    if arrays["x_train"].ndim not in (2, 3, 4):
        raise DataError(f"npz file {path}: x_train must be (N, F), (N, H, W) or (N, H, W, C), "
                        f"got {arrays['x_train'].shape}")
    return _make("npz", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 source=f"npz file {path}")


def npz_shape(path: str) -> tuple[tuple, int]:
    """(input_shape, num_classes) of an npz file, for --dry_run (validates and reads the file; writes nothing)."""
    data = load_npz(path)
    return data.input_shape, data.num_classes


def load_tfds(name: str, data_dir: str | None, test_split: str = "test", dataset: str | None = None) -> Data:
    """A TFDS dataset into memory: its train split, and `test_split` as the test set. TFDS downloads it on
    first use, which needs internet. `dataset`: its key of DATASETS (default `name`)."""
    import tensorflow_datasets as tfds

    def to_numpy(ds) -> tuple[np.ndarray, np.ndarray]:
        # Chunks rather than tfds' batch_size=-1: that path aborts the process on datasets of unknown
        # cardinality (seen with tfds.testing.mock_data, TF 2.21).
        batches = list(tfds.as_numpy(ds.batch(10_000)))
        if not batches:  # an empty split: check_values names it
            return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        xs, ys = zip(*batches)
        return np.concatenate(xs), np.concatenate(ys)

    try:
        train, test = tfds.load(name, split=["train", test_split], as_supervised=True, data_dir=data_dir)
        (x_train, y_train), (x_test, y_test) = to_numpy(train), to_numpy(test)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not load {name} through tensorflow_datasets (data_dir={data_dir}): {first}. "
                        "The first use downloads it and needs internet; offline, prepare it elsewhere and "
                        "pass --data_dir, or use --dataset=npz --data_path=FILE") from None
    dataset = dataset or name
    return _make(dataset, x_train, y_train, x_test, y_test, DATASETS[dataset].num_classes,
                 source=f"{name} (tensorflow_datasets, data_dir={data_dir})")


def load_data(dataset: str, data_dir: str | None = None, data_path: str | None = None, stream: bool = False):
    """Loads `dataset` (a key of DATASETS) into memory, a Data. A dataset too large for memory (its spec's
    `streamed`: imagenet2012) is refused unless `stream`, which gives its data.imagenet.StreamData instead
    (training reads it from disk every epoch; readers that need the examples in arrays cannot)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    if spec.streamed:
        if not stream:
            raise DataError(f"{dataset} is read from disk by bin/train only ({spec.num_train:,} full-size images "
                            "do not fit in memory), and this needs its examples in memory; imagenet32 is "
                            "ImageNet at 32x32, held in memory")
        from lrbs_tf.data.imagenet import load_streamed

        return load_streamed(dataset, data_dir)
    if dataset == "mnist1d":
        arrays, cache = _mnist1d_arrays()
        return _make("mnist1d", *arrays, num_classes=MNIST1D_CLASSES, source=_mnist1d_source(cache))
    if dataset == "npz":
        return load_npz(data_path or "")
    return load_tfds(spec.tfds_name, data_dir, spec.test_split, dataset)


# --- tf.data pipelines ---------------------------------------------------------------------------------
