"""lrbs_tf: how SGD's batch size and learning rate shape generalisation and the curvature of minima.

The Python API (docs/python_api.md has every column and more examples):

    import lrbs_tf
    runs = lrbs_tf.load_runs("outputs/quick")          # pandas: one row per run folder
    epochs = lrbs_tf.load_metrics("outputs/quick")     # pandas: one row per (run, epoch)
    lrbs_tf.train(arch="mlp", lr=[0.05, 0.1], epochs=5, workdir="outputs/mine")   # as bin/train
    lrbs_tf.correlate("outputs/quick")                 # as bin/correlate

Importing the package loads nothing else: each name is imported on first use (no TensorFlow to read results).
"""

import importlib
import sys
import types

__version__ = "0.1.0"
__all__ = ["load_runs", "load_metrics", "train", "correlate", "TrainConfig", "__version__"]

# lrbs_tf.train and lrbs_tf.correlate are also the modules behind bin/train and bin/correlate, and importing
# a submodule binds its name on the package: a function of either name would be replaced by the module as
# soon as the binary's code is imported. So those two modules are made callable instead (a documented use
# of a module's __class__): lrbs_tf.train(...) is lrbs_tf.api.train(...), and lrbs_tf.training.run.run_column,
# `from lrbs_tf import correlate; correlate.run(...)` and the like keep working.
_ENTRY_MODULES = ("train", "correlate")
_LAZY = {"load_runs": "lrbs_tf.api", "load_metrics": "lrbs_tf.api", "TrainConfig": "lrbs_tf.runs.config"}


class _EntryModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """lrbs_tf.train(...) = lrbs_tf.api.train(...); lrbs_tf.correlate(...) = lrbs_tf.api.correlate(...)."""
        from lrbs_tf import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _ENTRY_MODULES and isinstance(value, types.ModuleType) and \
                value.__name__ == __name__ + "." + name:
            value.__class__ = _EntryModule
        super().__setattr__(name, value)


def __getattr__(name):
    if name in _ENTRY_MODULES:
        return importlib.import_module(__name__ + "." + name)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


def __dir__():
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
