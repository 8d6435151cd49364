"""The registry's models match bearpaw/pytorch-classification and torchvision: exact counts, init, BN, padding."""

import math

import keras
import numpy as np
import pytest

from lrbs_tf.models import builders as models
from lrbs_tf.models.registry import ARCH_NAMES


@pytest.mark.parametrize("arch,num_classes,expected", [
    ("resnet110", 10, 1_730_714),
    ("resnet110", 100, 1_736_564),
    ("vgg19", 10, 20_040_522),
    ("vgg19", 100, 20_086_692),
    ("alexnet", 10, 2_472_266),
    # resnet20 with projection shortcuts: 3 stages x 3 blocks; formula checked in test_resnet_count_formula.
    ("resnet20", 10, 272_474),
])
def test_exact_trainable_parameter_counts(arch, num_classes, expected):
    model = models.build_model(arch, num_classes, (32, 32, 3))
    assert models.count_trainable_params(model) == expected


def test_resnet_count_formula():
    """Counts every ResNet depth from first principles (conv, BN gamma/beta, projections, Linear)."""
    def count(depth, classes=10):
        n = (depth - 2) // 6
        total = 3 * 9 * 16 + 2 * 16  # stem conv + BN
        cin = 16
        for w in (16, 32, 64):
            for b in range(n):
                total += cin * 9 * w + 2 * w + w * 9 * w + 2 * w
                if cin != w:
                    total += cin * w + 2 * w  # 1x1 projection + BN
                cin = w
        return total + 64 * classes + classes
    for depth in (20, 32, 44, 56, 110):
        model = models.build_model(f"resnet{depth}", 10, (32, 32, 3))
        assert models.count_trainable_params(model) == count(depth)


def test_registry_names_match_tf_free_list():
    assert tuple(models.ARCHS) == ARCH_NAMES


def test_mlp_counts_and_inputs():
    flat = models.build_model("mlp", 10, (40,), mlp_depth=2, mlp_width=32)
    assert models.count_trainable_params(flat) == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    image = models.build_model("mlp", 10, (28, 28, 1), mlp_depth=4, mlp_width=100, mlp_batch_norm=True)
    per_bn = 2 * 100
    assert models.count_trainable_params(image) == (784 * 100 + 100 + 3 * (100 * 100 + 100)
                                                    + 4 * per_bn + 100 * 10 + 10)
    assert image(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)


def test_conv_init_and_batch_norm_follow_pytorch_reference():
    keras.utils.set_random_seed(0)
    model = models.build_model("vgg19", 10, (32, 32, 3))
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    last = convs[-1].kernel.numpy()  # 3x3x512x512: std sqrt(2 / (9 * 512)), untruncated
    expected = math.sqrt(2 / (9 * 512))
    assert abs(last.std() / expected - 1) < 0.01
    assert np.abs(last).max() > 2.5 * expected  # a truncated normal would stop at 2 std
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)
    dense = model.get_layer("logits").kernel.numpy()
    assert abs(dense.std() / 0.01 - 1) < 0.05


def test_stride_two_conv_pads_symmetrically_like_pytorch():
    """A 3x3 stride-2 conv with padding 1 on a 4x4 input reads rows/cols -1..1 and 1..3 (PyTorch)."""
    x = keras.Input((4, 4, 1))
    y = models.conv3x3(x, 1, stride=2)
    m = keras.Model(x, y)
    conv = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)][0]
    conv.kernel.assign(np.ones((3, 3, 1, 1), np.float32))
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = m(image).numpy()[0, :, :, 0]
    padded = np.pad(image[0, :, :, 0], 1)
    expected = np.array([[padded[r:r + 3, c:c + 3].sum() for c in (0, 2)] for r in (0, 2)])
    np.testing.assert_allclose(out, expected)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="valid: resnet20"):
        models.build_model("resnet19", 10, (32, 32, 3))


def torchvision_count(depth: int, classes: int = 1000, stem_kernel: int = 7) -> int:
    """torchvision's sum(p.numel() for p in model.parameters()) from first principles: conv weights (no bias),
    BN weight + bias (its running statistics are buffers, not parameters), the Linear's weight and bias."""
    def conv_bn(cin, cout, k):
        return cin * k * k * cout + 2 * cout
    kind, blocks = models.TORCHVISION_LAYERS[depth]
    expansion = 1 if kind == "basic" else 4
    total, cin = conv_bn(3, 64, stem_kernel), 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            if kind == "basic":
                total += conv_bn(cin, planes, 3) + conv_bn(planes, planes, 3)
            else:
                total += conv_bn(cin, planes, 1) + conv_bn(planes, planes, 3) + conv_bn(planes, planes * 4, 1)
            if (stage > 0 and b == 0) or cin != planes * expansion:
                total += conv_bn(cin, planes * expansion, 1)  # downsample
            cin = planes * expansion
    return total + cin * classes + classes


@pytest.fixture(scope="module")
def imagenet_resnets():
    return {arch: models.build_model(arch, 1000, (224, 224, 3)) for arch in ("resnet18", "resnet50")}


@pytest.mark.parametrize("arch,expected,with_bn_statistics", [
    ("resnet18", 11_689_512, 11_699_112),
    ("resnet50", 25_557_032, 25_610_152),
])
def test_imagenet_resnets_have_torchvisions_parameter_counts(imagenet_resnets, arch, expected, with_bn_statistics):
    """torchvision's counts (its model cards: 11,689,512 and 25,557,032) are Keras' *trainable* count: BN's
    gamma and beta are parameters in both, its moving mean and variance are PyTorch buffers and Keras
    non-trainable weights, which model.count_params() adds (2 per BN channel: 9,600 and 53,120 more)."""
    model = imagenet_resnets[arch]
    assert models.count_trainable_params(model) == expected == torchvision_count(int(arch[6:]))
    bn_channels = sum(l.gamma.shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert model.count_params() == with_bn_statistics == expected + 2 * bn_channels


def test_resnet50_is_v1_5_with_torchvisions_stem_and_shapes(imagenet_resnets):
    """The stride-2 convs, in order: the 7x7 stem, then in each later stage the bottleneck's 3x3 (v1.5; v1
    strides its first 1x1) and the downsampling 1x1; then 7x7x2048 features, pooled, into 1000 logits."""
    model = imagenet_resnets["resnet50"]
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.kernel_size[0] for c in convs if c.strides == (2, 2)] == [7, 3, 1, 3, 1, 3, 1]
    assert len(convs) == 53 and convs[0].kernel.shape == (7, 7, 3, 64)
    pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
    assert len(pools) == 1 and pools[0].output.shape[1:] == (56, 56, 64)
    gap = [l for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D)][0]
    assert gap.input.shape[1:] == (7, 7, 2048) and model.output_shape == (None, 1000)
    resnet18 = imagenet_resnets["resnet18"]
    assert len([l for l in resnet18.layers if isinstance(l, keras.layers.Conv2D)]) == 20


def test_resnet18_on_32x32_images_takes_the_small_stem():
    """Below models.SMALL_INPUT pixels: a 3x3 stride-1 stem and no max pool (documented), so 7,680 parameters
    fewer, and the last stage sees 4x4 maps of a 32x32 image."""
    model = models.build_model("resnet18", 1000, (32, 32, 3))
    assert models.count_trainable_params(model) == torchvision_count(18, stem_kernel=3) == 11_689_512 - 7_680
    assert not [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
    gap = [l for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D)][0]
    assert gap.input.shape[1:] == (4, 4, 512)
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 1000)
