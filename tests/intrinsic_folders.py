"""Run folders of batch-norm nets with weight decay whose metrics.jsonl carries `grad_norm_sq`, `step` and
`examples_seen` (the keys bin/train records per epoch), for the intrinsic-LR tests. No TensorFlow.

A run's ||w||^2 rises as 1 - rise exp(-step / tau) to exactly `final_norm_sq` at its last epoch, and its
last epoch's `grad_norm_sq` is set so that measured / predicted equilibrium norm equals `norm_ratio` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

from lrbs_tf.runs import folder as rf
from tests.runfolders import write_run

NUM_TRAIN = 4000  # MNIST-1D's training split


def balance_grad_norm_sq(lr: float, weight_decay: float, norm_sq: float, norm_ratio: float = 1.0) -> float:
    """The E||g||^2 that makes `norm_sq` equal `norm_ratio` times the stationary balance's norm."""
    return norm_sq * weight_decay * (2.0 - lr * weight_decay) / (lr * norm_ratio)


def write_bn_run(root: Path, lr: float, weight_decay: float, final_norm_sq: float, *, norm_ratio: float = 1.0,
                 batch_size: int = 64, seed: int = 0, epochs: int = 10, tau: float = 50.0, rise: float = 0.5,
                 grad_norm_sq: object = "balance", record_steps: bool = True, **config_kw) -> Path:
    """A done run (default: mlp with --mlp_batch_norm on mnist1d) whose metrics end at `final_norm_sq`.

    grad_norm_sq: "balance" (see the module docstring), None (no such key: an older lrbs_tf), or a value
    written as it is into every row. tau: steps of the norm's approach (exp(-step / tau)); rise: the
    fraction of the final norm still missing at step 0 (extrapolated).
    record_steps: False leaves `step` and `examples_seen` out (they come from steps_per_epoch then).
    """
    config_kw.setdefault("arch", "mlp")
    config_kw.setdefault("dataset", "mnist1d")
    if config_kw["arch"] == "mlp":
        config_kw.setdefault("mlp_batch_norm", True)
    spe = NUM_TRAIN // batch_size
    run_dir = write_run(root, 0.7, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                        seed=seed, steps_per_epoch=spe, **config_kw)
    g_final = balance_grad_norm_sq(lr, weight_decay, final_norm_sq, norm_ratio)
    lines = []
    for e in range(1, epochs + 1):
        step = e * spe
        norm = final_norm_sq * (1.0 - rise * math.exp(-step / tau)) / (1.0 - rise * math.exp(-epochs * spe / tau))
        row = {"epoch": e, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 1.0, "test_accuracy": 0.7,
               "weight_norm_sq": norm, "effective_lr": lr / norm, "seconds": 1.0}
        if record_steps:
            row.update(step=step, examples_seen=step * batch_size)
        if grad_norm_sq == "balance":
            row["grad_norm_sq"] = g_final if e == epochs else 2.0 * g_final
        elif grad_norm_sq is not None:
            row["grad_norm_sq"] = grad_norm_sq
        lines.append(rf.dumps(row, indent=None) + "\n")
    (run_dir / rf.METRICS).write_text("".join(lines))
    return run_dir
