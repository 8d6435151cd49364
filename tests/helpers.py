"""Small shared pieces for the training tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from lrbs_tf.runs.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_config(workdir: str | os.PathLike, **kw) -> TrainConfig:
    """A run that trains in seconds: an MNIST-1D MLP of 2 hidden layers x 32 units, batch 64, lr 0.1,
    2 epochs, no progress bar, a checkpoint every epoch (the tests of resuming cut runs between any two
    epochs; tests/test_checkpoint_policy.py covers the time-based default), under `workdir`; `kw` overrides
    any setting."""
    base = dict(arch="mlp", dataset="mnist1d", mlp_depth=2, mlp_width=32, batch_size=64, lr=0.1, epochs=2,
                workdir=str(workdir), progress=False, checkpoint_seconds=0.0)
    return TrainConfig(**{**base, **kw})


def run_bin(name: str, *args: str, cwd: str | os.PathLike | None = None, timeout: int = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs bin/<name> with the test interpreter, capturing text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]


def write_blobs(path: pathlib.Path, seed: int):
    """A tiny npz dataset (32 training, 8 test examples of 6 Gaussian features, 3 classes) for hand-checked
    training steps; returns (x, y), the 40 examples in file order (training first)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    return x, y
