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


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec((32, 32, 3), 10, True, 50_000, "cifar10"),
    "cifar100": DatasetSpec((32, 32, 3), 100, True, 50_000, "cifar100"),
    "mnist": DatasetSpec((28, 28, 1), 10, False, 60_000, "mnist"),
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, False, 60_000, "fashion_mnist"),
    "mnist1d": DatasetSpec((40,), 10, False, 4_000),
    "npz": DatasetSpec(None, None, False),
}


def known_train_size(name: str) -> int | None:
    """The training-set size of dataset `name`, or None where it is not known without loading (npz, unknown names)."""
    spec = DATASETS.get(name)
    return spec.num_train if spec else None
