"""Writes run folders exactly as the run-folder contract says (lrbs_tf.runfolder), for tests and benchmarks.

No TensorFlow: a folder holds config.json, metrics.jsonl (one line per epoch), and result.json unless the
run is unfinished; sharpness.json optionally.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

from lrbs_tf import config as config_lib
from lrbs_tf import runfolder as rf

PAPER_BATCH_SIZES = tuple(range(16, 321, 16))
PAPER_LRS = tuple(round(0.01 * i, 2) for i in range(1, 21))


def _write_json(path: Path, obj: dict) -> None:
    """The bytes rf.atomic_write_json writes, without its fsync (hundreds of folders per test)."""
    path.write_text(rf.dumps(obj) + "\n")


def config(arch: str = "vgg19", dataset: str = "cifar10", batch_size: int = 64, lr: float = 0.05,
           seed: int = 0, epochs: int = 3, momentum: float = 0.0, weight_decay: float = 0.0, **extra) -> dict:
    """A config.json as bin/train writes it (the contract's keys plus bookkeeping)."""
    cfg = {"arch": arch, "dataset": dataset, "batch_size": batch_size, "lr": lr, "seed": seed,
           "epochs": epochs, "momentum": momentum, "weight_decay": weight_decay, "augment": True,
           "stop_at_train_loss": 0.0, "workdir": "outputs",
           "run_name": config_lib.run_name(arch, dataset, batch_size, lr, seed, momentum, weight_decay),
           "num_params": 1234, "versions": {"python": "3"}, "git_commit": "abc"}
    cfg.update(extra)
    return cfg


def write_run(root: Path, best_test_accuracy: float, *, status: str | None = "done",
              final_train_accuracy: float = 1.0, epochs: int = 3, sharpness: dict | None = None,
              result_overrides: dict | None = None, name: str | None = None, **config_kw) -> Path:
    """One run folder under `root` whose best test accuracy is `best_test_accuracy` (a fraction).

    status: done, diverged, failed, or None for an unfinished run (no result.json).
    metrics.jsonl holds `epochs` lines consistent with result.json: test accuracy rises to the best at the
    last epoch, training accuracy ends at `final_train_accuracy`.
    """
    cfg = config(epochs=epochs, **config_kw)
    run_dir = Path(root) / (name or cfg["run_name"])
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / rf.CONFIG, cfg)
    lines = []
    for e in range(1, epochs + 1):
        frac = e / epochs
        lines.append(rf.dumps({"epoch": e, "train_loss": 0.5 * (1 - frac) + 0.01,
                               "train_accuracy": final_train_accuracy * frac,
                               "test_loss": 1.0 - 0.5 * frac, "test_accuracy": best_test_accuracy * frac,
                               "weight_norm_sq": 10.0 + e, "effective_lr": cfg["lr"] / (10.0 + e),
                               "seconds": 1.0}, indent=None))
    (run_dir / rf.METRICS).write_text("".join(line + "\n" for line in lines))
    if status is not None:
        result = {"status": status, "epochs": epochs, "best_test_accuracy": best_test_accuracy,
                  "best_epoch": epochs, "final_train_loss": 0.01,
                  "final_train_accuracy": final_train_accuracy, "final_test_accuracy": best_test_accuracy}
        if status == rf.STATUS_DIVERGED:
            result.update(diverged_epoch=epochs, final_train_loss=math.nan, final_train_accuracy=math.nan)
        if status == rf.STATUS_FAILED:
            result["error"] = "RuntimeError: out of memory"
        result.update(result_overrides or {})
        _write_json(run_dir / rf.RESULT, result)
    if sharpness is not None:
        _write_json(run_dir / rf.SHARPNESS, sharpness)
    return run_dir


def write_grid(root: Path, accuracy: Callable[[int, float], float], batch_sizes: Iterable[int] = (16, 32, 64, 128),
               lrs: Iterable[float] = (0.01, 0.02, 0.05, 0.1), **kw) -> list[Path]:
    """A BS x LR grid of done runs whose best test accuracy is accuracy(batch_size, lr)."""
    return [write_run(root, accuracy(bs, lr), batch_size=bs, lr=lr, **kw) for bs in batch_sizes for lr in lrs]

