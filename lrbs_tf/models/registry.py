"""The architectures by name, and what each needs, without importing Keras (flags, configs and checks use it).

One entry per architecture: the builder family in `lrbs_tf.models.builders.FAMILIES` that makes it, that
family's fixed arguments (a depth), whether it needs (H, W, C) images, and which run settings it takes
(the MLP's). `builders.ARCHS` is built from this dict, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lrbs_tf.core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    family: str                                   # the builder in builders.FAMILIES
    fixed: tuple[tuple[str, Any], ...] = ()       # its fixed keyword arguments, e.g. (("depth", 110),)
    needs_images: bool = True                     # convolutional: (H, W, C) inputs only
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)  # run setting -> builder argument


# The MLP's settings (config.json keys) and their defaults: TrainConfig's fields read them from here.
MLP_OPTIONS = {"mlp_depth": "depth", "mlp_width": "width", "mlp_batch_norm": "batch_norm_layers"}
MLP_DEFAULTS: dict[str, Any] = {"mlp_depth": 4, "mlp_width": 256, "mlp_batch_norm": False}

ARCHITECTURES: dict[str, ArchSpec] = {
    **{f"resnet{d}": ArchSpec("resnet", (("depth", d),)) for d in (20, 32, 44, 56, 110)},
    # torchvision's ImageNet ResNets (v1.5 bottlenecks): 11,689,512 and 25,557,032 parameters at 1000 classes.
    **{f"resnet{d}": ArchSpec("resnet_imagenet", (("depth", d),)) for d in (18, 50)},
    **{f"vgg{d}": ArchSpec("vgg", (("depth", d),)) for d in (11, 13, 16, 19)},
    "alexnet": ArchSpec("alexnet"),
    "mlp": ArchSpec("mlp", needs_images=False, options=MLP_OPTIONS),
}
ARCH_NAMES = tuple(ARCHITECTURES)


def check_arch_input(arch: str, input_shape: tuple, source: str = "the input") -> None:
    """Refuses an unknown arch, and a convolutional one on vector inputs; `source` names where the examples
    come from in the message, e.g. "dataset 'mnist1d'"."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown arch {arch!r}; valid: {', '.join(ARCH_NAMES)}")
    if ARCHITECTURES[arch].needs_images and len(input_shape) != 3:
        raise UsageError(f"arch {arch!r} needs image inputs; {source} has examples of shape "
                         f"{tuple(input_shape)} (use --arch=mlp)")


def builder_arguments(arch: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments `arch`'s builder takes from run `settings` (its fixed ones, then its options,
    each from `settings` or its default)."""
    spec = ARCHITECTURES[arch]
    args = dict(spec.fixed)
    for setting, argument in spec.options.items():
        args[argument] = settings.get(setting, MLP_DEFAULTS[setting])
    return args
