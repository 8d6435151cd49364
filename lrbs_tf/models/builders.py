"""Model registry: name -> Keras 3 builder, ported from bearpaw/pytorch-classification (the CIFAR models) and
torchvision (resnet18, resnet50 for ImageNet).

Every builder has the signature `builder(num_classes, input_shape, **options) -> keras.Model` and returns a
functional model that outputs logits. Porting choices (REFERENCES.md §2), made once here:

- Conv kernels: normal(0, sqrt(2 / (k*k*out_channels))), untruncated, as bearpaw initialises them. Keras'
  `he_normal` is truncated and fan-in, so it would change the initial scale of every layer.
- Layers bearpaw leaves at PyTorch defaults (AlexNet convs, ResNet's Linear, the MLP) get PyTorch's default:
  kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
- BatchNorm: PyTorch momentum 0.1 is Keras momentum 0.9; PyTorch eps 1e-5 (Keras' default is 1e-3).
- Stride-2 3x3 convs pad 1 pixel symmetrically (explicit ZeroPadding2D + 'valid'); Keras 'same' at stride 2
  pads only bottom/right and would shift every downsampled feature map by one pixel.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import keras
from keras import layers

from lrbs_tf.models.registry import ARCHITECTURES, builder_arguments, check_arch_input

BN_MOMENTUM = 0.9  # PyTorch BatchNorm momentum=0.1 (new-statistics weight) == Keras momentum 0.9
BN_EPSILON = 1e-5  # PyTorch default


def conv_init(kernel_size: int, out_channels: int) -> keras.initializers.Initializer:
    """bearpaw's conv init: N(0, 2 / (k*k*out_channels)), fan-out He, untruncated."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


def torch_default_init(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def batch_norm(name: str | None = None) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def torch_dense(units: int, fan_in: int, name: str | None = None) -> layers.Dense:
    return layers.Dense(units, kernel_initializer=torch_default_init(fan_in),
                        bias_initializer=torch_default_init(fan_in), name=name)


def conv3x3(x, filters: int, stride: int = 1, use_bias: bool = False, name: str | None = None):
    """3x3 conv with symmetric 1-pixel padding, like PyTorch's Conv2d(k=3, padding=1)."""
    if stride == 1:
        padding = "same"  # symmetric for odd kernels at stride 1
    else:
        x = layers.ZeroPadding2D(1)(x)
        padding = "valid"
    return layers.Conv2D(filters, 3, strides=stride, padding=padding, use_bias=use_bias,
                         kernel_initializer=conv_init(3, filters),
                         bias_initializer="zeros", name=name)(x)


# --- ResNet for CIFAR (bearpaw models/cifar/resnet.py, BasicBlock) -----------------------------------------

def _basic_block(x, filters: int, stride: int, in_filters: int):
    shortcut = x
    out = conv3x3(x, filters, stride)
    out = batch_norm()(out)
    out = layers.ReLU()(out)
    out = conv3x3(out, filters, 1)
    out = batch_norm()(out)
    if stride != 1 or in_filters != filters:
        # Projection shortcut (bearpaw's `downsample`), not the zero-padding "option A" of He et al. 2016:
        # this is what makes resnet110 1,730,714 parameters rather than 1,727,962.
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                 kernel_initializer=conv_init(1, filters))(x)
        shortcut = batch_norm()(shortcut)
    out = layers.Add()([out, shortcut])
    return layers.ReLU()(out)


def resnet(num_classes: int, input_shape: tuple, depth: int = 110) -> keras.Model:
    """CIFAR ResNet-`depth` (depth = 6n + 2) with post-activation basic blocks, widths 16/32/64."""
    if (depth - 2) % 6:
        raise ValueError(f"resnet depth={depth} is not 6n+2")
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    x = conv3x3(inputs, 16)
    x = batch_norm()(x)
    x = layers.ReLU()(x)
    in_filters = 16
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if (stage > 0 and block == 0) else 1
            x = _basic_block(x, filters, stride, in_filters)
            in_filters = filters
    x = layers.GlobalAveragePooling2D()(x)  # bearpaw: AvgPool2d(8) on the 8x8 map, the same for 32x32 inputs
    outputs = torch_dense(num_classes, fan_in=64, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


# --- ResNet for ImageNet (torchvision models/resnet.py: resnet18, resnet50) ---------------------------------

# Inputs smaller than this (imagenet32, CIFAR) get the small stem: the 7x7 stride-2 conv and the max pool
# would leave a 32x32 image 8x8 before the first block and 1x1 before the last.
SMALL_INPUT = 64
TORCHVISION_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _conv(x, filters: int, kernel: int, stride: int = 1):
    """torchvision's conv (no bias, kaiming_normal fan-out: conv_init) with PyTorch's symmetric padding
    kernel // 2."""
    pad = kernel // 2
    if stride == 1 or pad == 0:
        padding = "same" if pad else "valid"
    else:
        x = layers.ZeroPadding2D(pad)(x)
        padding = "valid"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=conv_init(kernel, filters))(x)


def _downsample(x, filters: int, stride: int, in_filters: int):
    """torchvision's `downsample` (conv1x1 + BN) when the block changes size or width; else the identity."""
    if stride == 1 and in_filters == filters:
        return x
    return batch_norm()(_conv(x, filters, 1, stride))


def _torchvision_basic(x, planes: int, stride: int, in_filters: int):
    out = layers.ReLU()(batch_norm()(_conv(x, planes, 3, stride)))
    out = batch_norm()(_conv(out, planes, 3))
    return layers.ReLU()(layers.Add()([out, _downsample(x, planes, stride, in_filters)])), planes


def _torchvision_bottleneck(x, planes: int, stride: int, in_filters: int):
    """ResNet v1.5: the stride on the 3x3 conv, not on the first 1x1."""
    out = layers.ReLU()(batch_norm()(_conv(x, planes, 1)))
    out = layers.ReLU()(batch_norm()(_conv(out, planes, 3, stride)))
    out = batch_norm()(_conv(out, planes * 4, 1))
    return layers.ReLU()(layers.Add()([out, _downsample(x, planes * 4, stride, in_filters)])), planes * 4


def resnet_imagenet(num_classes: int, input_shape: tuple, depth: int = 50) -> keras.Model:
    """torchvision's ResNet-`depth` (18, 34: BasicBlock; 50: Bottleneck, stride on the 3x3 conv), default
    arguments (zero_init_residual=False, groups=1, width 64): a 7x7 stride-2 conv, BN, ReLU and a 3x3 stride-2
    max pool, four stages of widths 64-512 (x4 in a bottleneck's output), global average pooling and one
    Linear. Initialisation as torchvision's: convs kaiming_normal(fan_out, relu) = conv_init, BN weight 1 and
    bias 0, the Linear at PyTorch's default.

    Inputs smaller than SMALL_INPUT (imagenet32) get the small stem instead, the usual choice for 32x32
    images (e.g. kuangliu/pytorch-cifar's ResNet18, Chrabaszcz et al. 2017's downsampled-ImageNet WRNs): a 3x3
    stride-1 conv and no max pool, so the stages see 32, 16, 8 and 4 pixels. That conv has 3*9*64 = 1,728
    weights instead of 9,408, so such a model has 7,680 parameters fewer than the 224x224 count."""
    kind, blocks = TORCHVISION_LAYERS[depth]
    block = _torchvision_basic if kind == "basic" else _torchvision_bottleneck
    inputs = keras.Input(input_shape)
    small = min(input_shape[0], input_shape[1]) < SMALL_INPUT
    x = _conv(inputs, 64, 3) if small else _conv(inputs, 64, 7, 2)
    x = layers.ReLU()(batch_norm()(x))
    if not small:
        # PyTorch pads a max pool with -inf; after the ReLU every value is >= 0, so zeros give the same maxima.
        x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
    in_filters = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            x, in_filters = block(x, planes, 2 if (stage > 0 and b == 0) else 1, in_filters)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = torch_dense(num_classes, fan_in=in_filters, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


# --- VGG with batch norm (bearpaw models/cifar/vgg.py) -----------------------------------------------------

VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def vgg(num_classes: int, input_shape: tuple, depth: int = 19) -> keras.Model:
    """VGG-`depth` with BN after every conv (conv has a bias, as in bearpaw) and one Linear(512, classes)."""
    inputs = keras.Input(input_shape)
    x = inputs
    for v in VGG_CFGS[depth]:
        if v == "M":
            x = layers.MaxPooling2D(2)(x)
        else:
            x = conv3x3(x, v, use_bias=True)
            x = batch_norm()(x)
            x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    # bearpaw: Linear weights N(0, 0.01), bias 0.
    outputs = layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                           bias_initializer="zeros", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"vgg{depth}")


# --- AlexNet for CIFAR (bearpaw models/cifar/alexnet.py; no BN, PyTorch default init) ---------------------

def _torch_conv(x, filters: int, kernel: int, stride: int, pad: int):
    fan_in = kernel * kernel * x.shape[-1]
    if pad:
        x = layers.ZeroPadding2D(pad)(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                         kernel_initializer=torch_default_init(fan_in),
                         bias_initializer=torch_default_init(fan_in))(x)


def alexnet(num_classes: int, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_torch_conv(inputs, 64, 11, 4, 5))
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(_torch_conv(x, 192, 5, 1, 2))
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(_torch_conv(x, 384, 3, 1, 1))
    x = layers.ReLU()(_torch_conv(x, 256, 3, 1, 1))
    x = layers.ReLU()(_torch_conv(x, 256, 3, 1, 1))
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    outputs = torch_dense(num_classes, fan_in=x.shape[-1], name="logits")(x)
    return keras.Model(inputs, outputs, name="alexnet")


# --- MLP (Jastrzebski et al.'s 4-layer BN ReLU MLP; the rebuttal's MLP on MNIST) ---------------------------

def mlp(num_classes: int, input_shape: tuple, depth: int, width: int,
        batch_norm_layers: bool = False) -> keras.Model:
    """`depth` hidden layers of `width` units (Dense [-> BN] -> ReLU), then a Dense classifier.

    Image inputs are flattened, so the same model serves MNIST-1D vectors and 28x28 / 32x32 images.
    With batch norm the hidden Dense layers keep their bias, as a PyTorch nn.Linear would.
    """
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for _ in range(depth):
        fan_in = x.shape[-1]
        x = torch_dense(width, fan_in)(x)
        if batch_norm_layers:
            x = batch_norm()(x)
        x = layers.ReLU()(x)
    outputs = torch_dense(num_classes, fan_in=x.shape[-1], name="logits")(x)
    return keras.Model(inputs, outputs, name=f"mlp{depth}x{width}{'_bn' if batch_norm_layers else ''}")


# The builder families the registry's entries name (lrbs_tf.models.registry.ARCHITECTURES).
FAMILIES: dict[str, Callable[..., keras.Model]] = {"resnet": resnet, "resnet_imagenet": resnet_imagenet, "vgg": vgg,
                                                   "alexnet": alexnet, "mlp": mlp}
ARCHS: dict[str, Callable[..., keras.Model]] = {
    name: functools.partial(FAMILIES[spec.family], **dict(spec.fixed)) for name, spec in ARCHITECTURES.items()}


def build_model(arch: str, num_classes: int, input_shape: tuple, **settings: Any) -> keras.Model:
    """Builds `arch` for `num_classes` classes and inputs of `input_shape` (without the batch axis).

    `settings`: the run settings the architecture takes (the MLP's mlp_depth, mlp_width, mlp_batch_norm;
    registry.MLP_DEFAULTS where not given); others are refused. Initial weights come from Keras' global
    seed: call `keras.utils.set_random_seed` first.
    """
    check_arch_input(arch, tuple(input_shape))
    unknown = set(settings) - set(ARCHITECTURES[arch].options)
    if unknown:
        raise ValueError(f"arch {arch!r} takes no {', '.join(sorted(unknown))}")
    return FAMILIES[ARCHITECTURES[arch].family](num_classes, tuple(input_shape),
                                                **builder_arguments(arch, settings))


def count_trainable_params(model: keras.Model) -> int:
    """Trainable parameters (BN moving statistics excluded, as PyTorch's count excludes running stats)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))
