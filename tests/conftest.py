"""Test session set-up shared by every test file.

The CPU is split into two logical devices before TensorFlow initialises, so MirroredStrategy can be tested
in-process without GPUs (the default strategy still runs on /cpu:0 alone). MNIST-1D is cached in a
per-session folder so tests never depend on (or write to) the user's cache.
"""

import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="lrbs_tf_test_cache_"))

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    from lrbs_tf.core.resources import quiet_import_tensorflow

    try:
        # As the binaries do: TensorFlow's C++ start-up lines (CUDA probing on a machine without a GPU, the
        # "failed call to cuInit" error among them) would otherwise head every test session's output.
        quiet_import_tensorflow()
        import tensorflow as tf
    except ImportError:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    except RuntimeError:
        pass  # already initialised by an earlier plugin; strategy tests then check the device count


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one test process per core this process may use (lrbs_tf.sweep.workers'
    count, as bin/sweep sizes its workers: the affinity mask capped by a container's CPU quota), at most 4:
    every test process starts TensorFlow (about 1 GB), and many tests start bin/* processes of their own."""
    from lrbs_tf.core.resources import available_cores

    return min(4, available_cores())
