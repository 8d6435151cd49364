"""The registry's models match bearpaw/pytorch-classification: exact counts, init, BN, padding."""

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
        models.build_model("resnet18", 10, (32, 32, 3))
