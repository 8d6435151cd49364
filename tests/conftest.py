"""Test session set-up shared by every test file.

The CPU is split into two logical devices before TensorFlow initialises, so MirroredStrategy can be tested
in-process without GPUs (the default strategy still runs on /cpu:0 alone). MNIST-1D is cached in a
per-session folder so tests never depend on (or write to) the user's cache.

The fast tier (`python -m pytest -m fast`): test files that import no TensorFlow carry
`pytestmark = pytest.mark.fast`. A session that selects only such tests does not start TensorFlow, and
fails a test after which TensorFlow was found imported, so a file cannot stay in the tier by mistake.
"""

import os
import pathlib
import sys
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="lrbs_tf_test_cache_"))

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAST = "fast"
_ONLY_FAST: list[bool] = []  # set once the session's tests are collected


def _fast_tier_only(config) -> bool:
    return (config.getoption("markexpr", "") or "").strip() == FAST


def pytest_configure(config):
    if _fast_tier_only(config):
        return  # the fast tier never starts TensorFlow
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


def pytest_ignore_collect(collection_path, config):
    """In a `-m fast` session, files outside the tier are not even imported (importing one may start
    TensorFlow): a file is in the tier when it says `pytestmark = pytest.mark.fast`."""
    if _fast_tier_only(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return "pytestmark = pytest.mark.fast" not in collection_path.read_text()
    return None


def pytest_collection_finish(session):
    # Checked only in a `-m fast` session, the one that did not start TensorFlow in pytest_configure.
    _ONLY_FAST[:] = [_fast_tier_only(session.config) and all(i.get_closest_marker(FAST) for i in session.items)]


@pytest.fixture(autouse=True)
def _fast_tests_stay_free_of_tensorflow(request):
    yield
    if _ONLY_FAST and _ONLY_FAST[0] and "tensorflow" in sys.modules:
        pytest.fail(f"{request.node.nodeid} is in the fast tier but TensorFlow is imported after it: import "
                    "it nowhere in a file marked fast, or take the file out of the tier", pytrace=False)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one test process per core this process may use (lrbs_tf.core.resources'
    count, as bin/sweep sizes its workers: the affinity mask capped by a container's CPU quota), at most 4:
    every test process starts TensorFlow (about 1 GB), and many tests start bin/* processes of their own."""
    from lrbs_tf.core.resources import available_cores

    return min(4, available_cores())
