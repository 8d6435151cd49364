#!/usr/bin/env python3
"""Where an epoch's time goes besides the training steps, for the quick study's columns.

    .venv/bin/python benchmarks/epoch_overhead.py                  # the 5 quick-study columns, 12 epochs each
    .venv/bin/python benchmarks/epoch_overhead.py --batch_sizes=96 --epochs=20

Each column (a batch size's 5 learning rates, the 4x128 MLP on MNIST-1D, flags/quick.flags' settings but a
fixed number of epochs) trains in a fresh process, as bin/sweep runs it, with bin/train's code timed from
outside: the loop's functions are wrapped by timers (nothing in lrbs_tf is changed). Per epoch:
- steps: inside the tf.function calls that run the training steps;
- iterator: building the epoch's input pipeline and iterator, and releasing it;
- evaluation: the whole test set, every member;
- record: the metrics lines (appended and fsynced), TensorBoard scalars, the weight norms, the console line;
- checkpoint: members.save_checkpoint (one per member, when due: --checkpoint_seconds, default 10 s);
- other: the rest (chunk bookkeeping, the engine's unstack, Python).
The first two epochs (tracing) are dropped; medians over the rest. Printed as markdown, saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("steps", "iterator", "evaluation", "record", "checkpoint", "other")


def _timed(store: dict, key: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[key] = store.get(key, 0.0) + time.perf_counter() - start
    return wrapper


def measure_column(batch_size: int, epochs: int, workdir: str) -> list[dict]:
    """Trains one quick-study column in this process with timers around the loop's parts; per-epoch seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    from lrbs_tf.runs.config import TrainConfig
    from lrbs_tf.training import loop, members, steps
    from lrbs_tf.training.run import run_column

    current: dict = {}
    epochs_log: list[dict] = []

    def make_step_functions(strategy, active):
        functions = steps.make_step_functions(strategy, active)
        functions.train_steps = _timed(current, "steps", functions.train_steps)
        functions.eval_step = _timed(current, "evaluation_steps", functions.eval_step)
        return functions

    run_epoch, close_epoch = loop.run_epoch, loop.close_epoch

    def timed_run_epoch(*args, **kwargs):
        current.clear()
        current["start"] = time.perf_counter()
        return run_epoch(*args, **kwargs)

    def timed_close_epoch(*args, **kwargs):
        out = close_epoch(*args, **kwargs)
        stats = args[2]
        current["epoch"] = time.perf_counter() - current.pop("start")
        current["train_seconds"] = stats.train_seconds
        epochs_log.append(dict(current))
        return out

    loop.make_step_functions = make_step_functions
    loop.run_epoch, loop.close_epoch = timed_run_epoch, timed_close_epoch
    loop.evaluate = _timed(current, "evaluation", loop.evaluate)
    members.record_epoch = _timed(current, "record", members.record_epoch)
    members.save_checkpoint = _timed(current, "checkpoint", members.save_checkpoint)
    cfg = TrainConfig(arch="mlp", mlp_depth=4, mlp_width=128, dataset="mnist1d", batch_size=batch_size,
                      lr=0.06, epochs=epochs, workdir=workdir, progress=False, intra_op_threads=1,
                      inter_op_threads=1)
    run_column(cfg, [0.06, 0.09, 0.12, 0.15, 0.18])
    return epochs_log


def breakdown(epochs: list[dict]) -> dict:
    """Median seconds of each part over the epochs after the first two, and each part's share of the epoch."""
    rows = []
    for e in epochs[2:]:
        parts = {"steps": e.get("steps", 0.0), "iterator": e["train_seconds"] - e.get("steps", 0.0),
                 "evaluation": e.get("evaluation", 0.0), "record": e.get("record", 0.0),
                 "checkpoint": e.get("checkpoint", 0.0)}
        parts["other"] = e["epoch"] - sum(parts.values())
        rows.append({**parts, "epoch": e["epoch"]})
    med = {k: statistics.median(r[k] for r in rows) for k in (*PARTS, "epoch")}
    overhead = [1 - r["steps"] / r["epoch"] for r in rows]
    return {"median_seconds": med, "median_overhead_share": statistics.median(overhead),
            "share_of_median_epoch": {k: med[k] / med["epoch"] for k in PARTS}, "epochs_used": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="32,48,64,80,96")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="epoch_overhead.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure_column(spec["batch_size"], spec["epochs"], spec["workdir"])))
        return
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_start": os.getloadavg()[0], "columns": []}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        spec = json.dumps({"batch_size": bs, "epochs": args.epochs, "workdir": tempfile.mkdtemp()})
        proc = subprocess.run([sys.executable, __file__, f"--child={spec}"], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"batch size {bs} failed:\n{proc.stderr[-3000:]}")
        epochs = json.loads(proc.stdout.strip().splitlines()[-1])
        results["columns"].append({"batch_size": bs, "epochs": epochs, **breakdown(epochs)})
    results["load_average_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average {results['load_average_start']:.2f} -> {results['load_average_end']:.2f}\n")
    print("| batch | epoch ms | steps ms | overhead | iterator | evaluation | record | checkpoint | other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in results["columns"]:
        m, s = c["median_seconds"], c["share_of_median_epoch"]
        print(f"| {c['batch_size']} | {1e3 * m['epoch']:.0f} | {1e3 * m['steps']:.0f} | "
              f"**{100 * c['median_overhead_share']:.0f}%** | " +
              " | ".join(f"{1e3 * m[k]:.0f} ms ({100 * s[k]:.0f}%)" for k in PARTS[1:]) + " |")


if __name__ == "__main__":
    main()
