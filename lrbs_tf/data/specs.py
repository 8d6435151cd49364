"""What each dataset is, without loading it or importing TensorFlow: its example shape, classes, training-set
size, default augmentation and TFDS name. The one source of these facts: flags list the names, configs check
shapes, bin/sweep counts steps with `num_train`, bin/bound takes N from it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What is known about a dataset without loading it (so --dry_run never touches data or disk)."""
    input_shape: tuple | None  # per example, channels last; None: read from the file (npz)
    num_classes: int | None
    augment_by_default: bool
    num_train: int | None = None  # training-set size; None: read from the file (npz)
    tfds_name: str | None = None
    test_split: str = "test"      # the TFDS split evaluated on (ImageNet's labelled held-out split: validation)
    streamed: bool = False        # read from disk every epoch (too large for memory), not loaded into arrays


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec((32, 32, 3), 10, True, 50_000, "cifar10"),
    "cifar100": DatasetSpec((32, 32, 3), 100, True, 50_000, "cifar100"),
    "mnist": DatasetSpec((28, 28, 1), 10, False, 60_000, "mnist"),
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, False, 60_000, "fashion_mnist"),
    "mnist1d": DatasetSpec((40,), 10, False, 4_000),
    # ILSVRC-2012 through TFDS' imagenet2012, which needs its tar files downloaded by hand (IMAGENET_MANUAL):
    # 1,281,167 training images of many sizes, evaluated on the 50,000 of `validation`; model inputs 224x224.
    "imagenet2012": DatasetSpec((224, 224, 3), 1000, True, 1_281_167, "imagenet2012", "validation", True),
    # TFDS' imagenet_resized/32x32 (Chrabaszcz et al. 2017's Imagenet32x32: the same images, box-resized to
    # 32x32), held in memory like CIFAR (about 4 GB of uint8 pixels) and augmented as CIFAR is.
    "imagenet32": DatasetSpec((32, 32, 3), 1000, True, 1_281_167, "imagenet_resized/32x32", "validation"),
    "npz": DatasetSpec(None, None, False),
}


# What bin/train and the docs tell a user whose imagenet2012 is not prepared in --data_dir.
IMAGENET_MANUAL = ("tensorflow_datasets prepares imagenet2012 only from ILSVRC2012_img_train.tar and "
                   "ILSVRC2012_img_val.tar downloaded by hand (image-net.org) into its manual folder: run "
                   "`tfds build imagenet2012 --data_dir=DIR --manual_dir=FOLDER_WITH_THE_TARS` once, then "
                   "pass --data_dir=DIR (or set TFDS_DATA_DIR=DIR)")


def known_train_size(name: str) -> int | None:
    """The training-set size of dataset `name`, or None where it is not known without loading (npz, unknown names)."""
    spec = DATASETS.get(name)
    return spec.num_train if spec else None
