#!/usr/bin/env python3
"""Benchmark of bin/correlate: 1,600 generated runs (the paper's 4 settings x 20 x 20 grid), 200 epochs each.

Generates run folders that follow the run-folder contract (config.json, a 200-line metrics.jsonl,
result.json, sharpness.json), then times lrbs_tf.analysis.correlate.run() on them: with figures, and without
(--nofigures), each in a fresh process so that import time is counted as a user would see it.

    .venv/bin/python benchmarks/correlate_bench.py            # numbers recorded in benchmarks/correlate.md
    .venv/bin/python benchmarks/correlate_bench.py --root=/tmp/bench --keep

Accuracy model of the generated runs (not a claim about real networks): best test accuracy falls linearly
in log(BS/LR) plus Gaussian noise; 2% of runs diverge, 0.5% fail, 1% end below 99% training accuracy.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrbs_tf.runs import (
    config as config_lib,  # noqa: E402
    folder as rf,  # noqa: E402
)

SETTINGS = (("resnet110", "cifar10"), ("resnet110", "cifar100"), ("vgg19", "cifar10"), ("vgg19", "cifar100"))
BATCH_SIZES = tuple(range(16, 321, 16))
LRS = tuple(round(0.01 * i, 2) for i in range(1, 21))
EPOCHS = 200


def generate(root: Path, seed: int = 0) -> int:
    """Writes the 1,600 run folders under `root`; returns the number written."""
    rng = np.random.default_rng(seed)
    n = 0
    for arch, dataset in SETTINGS:
        base = 0.95 if dataset == "cifar10" else 0.75
        for bs in BATCH_SIZES:
            for lr in LRS:
                run = root / config_lib.run_name(arch, dataset, bs, lr, 0)
                run.mkdir(parents=True)
                rf.atomic_write_json(run / rf.CONFIG, {
                    "arch": arch, "dataset": dataset, "batch_size": bs, "lr": lr, "seed": 0, "epochs": EPOCHS,
                    "momentum": 0.0, "weight_decay": 0.0, "augment": True, "stop_at_train_loss": 0.0,
                    "workdir": str(root), "run_name": run.name, "num_params": 20040522,
                    "versions": {"tensorflow": "2.x"}, "git_commit": "0" * 40})
                best = float(np.clip(base - 0.02 * math.log(bs / lr) + rng.normal(0, 0.005), 0, 1))
                curve = best * (1 - np.exp(-np.arange(1, EPOCHS + 1) / 20.0))
                train_final = 1.0 if rng.random() > 0.01 else 0.95
                lines = [rf.dumps({"epoch": e, "train_loss": 2.3 * math.exp(-e / 15), "train_accuracy":
                                   train_final * (1 - math.exp(-e / 15)), "test_loss": 1.0,
                                   "test_accuracy": float(curve[e - 1]), "weight_norm_sq": 100.0 + e,
                                   "effective_lr": lr / (100.0 + e), "seconds": 30.0}, indent=None)
                         for e in range(1, EPOCHS + 1)]
                (run / rf.METRICS).write_text("\n".join(lines) + "\n")
                u = rng.random()
                status = rf.STATUS_DIVERGED if u < 0.02 else rf.STATUS_FAILED if u < 0.025 else rf.STATUS_DONE
                result = {"status": status, "epochs": EPOCHS, "best_test_accuracy": float(curve.max()),
                          "best_epoch": int(curve.argmax()) + 1, "final_train_loss": 0.001,
                          "final_train_accuracy": train_final, "final_test_accuracy": float(curve[-1])}
                if status == rf.STATUS_DIVERGED:
                    result.update(diverged_epoch=int(rng.integers(1, 10)), final_train_loss=None)
                if status == rf.STATUS_FAILED:
                    result["error"] = "ResourceExhaustedError: OOM"
                rf.atomic_write_json(run / rf.RESULT, result)
                lam = 1e4 / (bs / lr) ** 0.5 * math.exp(rng.normal(0, 0.1))
                rf.atomic_write_json(run / rf.SHARPNESS, {
                    "lambda_max": lam, "top_eigenvalues": [lam, lam / 2], "trace": 20 * lam,
                    "trace_stderr": lam, "frobenius_norm": 3 * lam, "grad_cov_trace": 50 * lam,
                    "num_examples": 4096, "num_hvps": 120, "seconds": 60.0})
                n += 1
    return n


def time_correlate(results: Path, out: Path, figures: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of `bin/correlate` in a fresh process, imports included.

    CPU seconds (user + system of the child) are reported beside wall time because a shared machine's
    load stretches wall time but not the work done.
    """
    cmd = [sys.executable, str(ROOT / "bin" / "correlate"), f"--results={results}", f"--out={out}"]
    if not figures:
        cmd.append("--nofigures")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_run_in_process(results: Path, out: Path) -> dict[str, float]:
    """Seconds of the phases of run() in this process (imports done beforehand)."""
    from lrbs_tf.analysis import correlate
    from lrbs_tf.analysis.report import document as report  # noqa: F401  (imports not timed here)

    start = time.perf_counter()
    analysis = correlate.analyse(results)
    analysed = time.perf_counter()
    correlate.run(results, out, figures=False)
    tables_only = time.perf_counter()
    correlate.run(results, out, figures=True)
    full = time.perf_counter()
    return {"analyse (read 1,600 folders + all tests)": analysed - start,
            "run(figures=False)": tables_only - analysed, "run(figures=True)": full - tables_only,
            "tests (Spearman, p_ratio, permutation; in families)": int(analysis.families[
                analysis.families["statistic"].isin(["spearman_p", "p_ratio", "p_permutation"])]["tests"].sum()),
            "families (all statistics)": len(analysis.families)}


def time_phases(results: Path) -> dict[str, float]:
    """CPU seconds of each analysis phase in a fresh interpreter (process_time; imports excluded)."""
    code = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from lrbs_tf import correlate, ratio, correlate_plots, report\n"
        "from lrbs_tf.analysis.model import group_columns, group_labels, DEFAULT_GROUP_BY\n"
        "from lrbs_tf.runs.table import collect_runs\n"
        "t = time.process_time\n"
        "s = t(); runs, _ = collect_runs(__import__('pathlib').Path(sys.argv[1]), DEFAULT_GROUP_BY, 0.99)\n"
        "read = t() - s\n"
        "cols = group_columns(DEFAULT_GROUP_BY); labels = group_labels(runs, cols)\n"
        "done = runs[runs['status'] == 'done']; q = ['lambda_max', 'trace', 'frobenius_norm', 'grad_cov_trace']\n"
        "s = t(); correlate.correlation_tables(runs, cols, labels, q); corr = t() - s\n"
        "s = t(); ratio.ratio_test_table(done, cols, labels, q); rt = t() - s\n"
        "s = t(); ratio.invariance_table(done, cols, labels, q); inv = t() - s\n"
        "s = t(); a = correlate.analyse(sys.argv[1]); full = t() - s\n"
        "s = t(); [f(a) for f in (correlate_plots.figure_ratio, correlate_plots.figure_curves,\n"
        "   correlate_plots.figure_heatmap, correlate_plots.figure_sharpness)]; figs = t() - s\n"
        "s = t(); __import__('lrbs_tf.analysis.plots.ratio').ratio_plots.figure_equal_ratio(a); fig5 = t() - s\n"
        "print(json.dumps({'CPU: read 1,600 folders': read, 'CPU: Tables 1-3 + sharpness tests': corr,\n"
        "  'CPU: ratio_test (20 fits)': rt, 'CPU: ratio_invariance (20 permutation tests)': inv,\n"
        "  'CPU: analyse() in all': full, 'CPU: build Figures 1-4 (not saved)': figs,\n"
        "  'CPU: build Figure 5 (reads metrics.jsonl of the runs drawn)': fig5}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(results)], check=True, capture_output=True, text=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="folder to generate the runs in (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="correlate-bench-"))
    results = root / "runs"
    if results.exists():
        shutil.rmtree(results)
    start = time.perf_counter()
    n = generate(results)
    print(f"generated {n} runs x {EPOCHS} epochs in {time.perf_counter() - start:.1f} s under {results}")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    try:
        print(f"load average before timing: {os.getloadavg()[0]:.2f}")
        phases = time_phases(results)
        for figures in (False, True):
            times = [time_correlate(results, root / "out", figures) for _ in range(args.repeats)]
            wall, cpu = sorted(t[0] for t in times), sorted(t[1] for t in times)
            print(f"bin/correlate {'with' if figures else 'without'} figures (fresh process, {len(times)} runs): "
                  f"wall min {wall[0]:.2f} s / median {wall[len(wall) // 2]:.2f} s; "
                  f"CPU min {cpu[0]:.2f} s / median {cpu[len(cpu) // 2]:.2f} s")
        print(f"load average after the fresh-process timings: {os.getloadavg()[0]:.2f}")
        for k, v in {**phases, **time_run_in_process(results, root / "out")}.items():
            print(f"in process, {k}: " + (f"{v}" if isinstance(v, int) else f"{v:.2f} s"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
