"""Writes run folders exactly as the run-folder contract says (lrbs_tf.runs.folder), for tests and benchmarks.

No TensorFlow: a folder holds config.json, metrics.jsonl (one line per epoch), and result.json unless the
run is unfinished; sharpness.json optionally. `write_scaling_study` writes a grid whose steps to a target
training loss follow a known law S(B) = S_min (1 + B_crit / B) at the best learning rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from lrbs_tf.runs import config as config_lib, folder as rf

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
              result_overrides: dict | None = None, name: str | None = None, metrics: list[dict] | None = None,
              **config_kw) -> Path:
    """One run folder under `root` whose best test accuracy is `best_test_accuracy` (a fraction).

    status: done, diverged, failed, or None for an unfinished run (no result.json).
    metrics.jsonl holds `epochs` lines consistent with result.json: test accuracy rises to the best at the
    last epoch, training accuracy ends at `final_train_accuracy`; or, when given, the rows `metrics` (whose
    best test accuracy and its epoch result.json then holds).
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
    if metrics is not None:
        lines = [rf.dumps(row, indent=None) for row in metrics]
    (run_dir / rf.METRICS).write_text("".join(line + "\n" for line in lines))
    if status is not None:
        result = {"status": status, "epochs": epochs, "best_test_accuracy": best_test_accuracy,
                  "best_epoch": epochs, "final_train_loss": 0.01,
                  "final_train_accuracy": final_train_accuracy, "final_test_accuracy": best_test_accuracy}
        if status == rf.STATUS_DIVERGED:
            result.update(diverged_epoch=epochs, final_train_loss=math.nan, final_train_accuracy=math.nan)
        if status == rf.STATUS_FAILED:
            result["error"] = "RuntimeError: out of memory"
        scored = [r for r in metrics or () if rf.is_number(r.get("test_accuracy"))]
        if scored:  # given rows: result.json says what they say, as bin/train writes it (readers check it)
            best = max(scored, key=lambda r: r["test_accuracy"])
            result.update(best_test_accuracy=best["test_accuracy"], best_epoch=best["epoch"])
        result.update(result_overrides or {})
        _write_json(run_dir / rf.RESULT, result)
    if sharpness is not None:
        _write_json(run_dir / rf.SHARPNESS, sharpness)
    return run_dir


def write_grid(root: Path, accuracy: Callable[[int, float], float], batch_sizes: Iterable[int] = (16, 32, 64, 128),
               lrs: Iterable[float] = (0.01, 0.02, 0.05, 0.1), **kw) -> list[Path]:
    """A BS x LR grid of done runs whose best test accuracy is accuracy(batch_size, lr)."""
    return [write_run(root, accuracy(bs, lr), batch_size=bs, lr=lr, **kw) for bs in batch_sizes for lr in lrs]



def law_steps(batch_size: float, s_min: float, b_crit: float) -> float:
    """McCandlish et al.'s S(B) = S_min (1 + B_crit / B): steps to the target at the best learning rate."""
    return s_min * (1.0 + b_crit / batch_size)


def loss_rows(steps_to_target: float, target: float, steps_per_epoch: int, epochs: int, *, curve: str = "exp",
              initial_loss: float = 2.3, with_step: bool = False, batch_size: int = 1) -> list[dict]:
    """metrics.jsonl rows whose training loss crosses `target` at exactly `steps_to_target` optimizer steps,
    up to the first row at half the target and one more (bin/train's --stop_at_train_loss), at most `epochs`.

    curve "exp": loss(s) = L0 (target / L0)^(s / S), a smooth decay (linear interpolation between epoch rows
    then misses the crossing slightly); "linear": loss falls on one straight line in steps from 1.9 x target
    through the target (interpolation is exact; the line stays positive up to 2.1 S). with_step: rows carry
    `step` (optimizer steps so far) and `examples_seen`.
    """
    rows = []
    for e in range(1, epochs + 1):
        s = e * steps_per_epoch
        if curve == "exp":
            loss = initial_loss * (target / initial_loss) ** (s / steps_to_target)
        else:
            loss = 1.9 * target - 0.9 * target * s / steps_to_target
        row = {"epoch": e, "train_loss": loss, "train_accuracy": min(1.0, 0.1 + e / epochs),
               "test_loss": loss + 0.5, "test_accuracy": min(0.9, 0.1 + 0.8 * e / epochs),
               "weight_norm_sq": 10.0 + e, "effective_lr": 0.0, "seconds": 1.0, "train_seconds": 0.5}
        if with_step:
            row.update(step=s, examples_seen=s * batch_size)
        rows.append(row)
        if len(rows) >= 2 and rows[-2]["train_loss"] <= target / 2:
            break
    return rows


def write_scaling_study(root: Path, s_min: float, b_crit: float, batch_sizes: Iterable[int],
                        lrs: Iterable[float], *, target: float = 0.05, num_train: int = 8192, epochs: int = 0,
                        noise: float = 0.0, curve: str = "exp", seed: int = 0, best_lr: str = "middle",
                        **config_kw) -> dict:
    """A batch size x learning rate grid of done runs whose steps to training loss `target` follow
    S(B) = S_min (1 + B_crit / B) at the best learning rate of each batch size, and S(B) (1 + log(lr /
    lr_best(B))^2 / 2) at the others, times a lognormal factor of s.d. `noise` (seeded). lr_best(B) is the middle
    learning rate of the grid (best_lr "middle"), or ("scaled") the grid learning rate nearest to
    lrs[0] * B / min(batch_sizes) (perfect scaling of the learning rate); either way each batch size's
    minimum is a grid point.

    Every run has the budget `epochs` (0: enough for every run) and stops early (loss_rows); a run whose
    budget ends first may not have reached the target. Every other batch size records the `step` column. Returns
    {(batch_size, lr): steps to target} as generated (reached or not)."""
    rng = np.random.default_rng(seed)
    lrs, batch_sizes = sorted(lrs), sorted(batch_sizes)
    truth = {}
    for bs in batch_sizes:
        best = lrs[len(lrs) // 2] if best_lr == "middle" else \
            min(lrs, key=lambda lr: abs(math.log(lr / (lrs[0] * bs / batch_sizes[0]))))
        for lr in lrs:
            steps = law_steps(bs, s_min, b_crit) * (1 + 0.5 * math.log(lr / best) ** 2)
            truth[(bs, lr)] = steps * (math.exp(noise * rng.standard_normal()) if noise else 1.0)
    budget = epochs or max(math.ceil(2 * s / (num_train // bs)) + 2 for (bs, _), s in truth.items())
    for i, bs in enumerate(batch_sizes):
        spe = num_train // bs
        for lr in lrs:
            rows = loss_rows(truth[(bs, lr)], target, spe, budget, curve=curve, with_step=i % 2 == 1,
                             batch_size=bs)
            write_run(root, max(r["test_accuracy"] for r in rows), epochs=budget, batch_size=bs, lr=lr,
                      metrics=rows, steps_per_epoch=spe, num_train=num_train, stop_at_train_loss=target / 2,
                      result_overrides={"epochs": len(rows), "best_epoch": len(rows),
                                        "final_train_loss": rows[-1]["train_loss"],
                                        "stopped_early": len(rows) < budget}, **config_kw)
    return truth
