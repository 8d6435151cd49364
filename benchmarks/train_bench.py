#!/usr/bin/env python3
"""Training throughput: lrbs_tf's loop vs Keras Model.fit, LR columns vs separate runs, GFLOP/s vs the
machine's matmul peak, the input pipeline alone, and peak memory.

    .venv/bin/python benchmarks/train_bench.py                 # everything BENCHMARKS.md records (~30 min, 2 cores)
    .venv/bin/python benchmarks/train_bench.py --cases=mlp     # the MLP cases only (~8 min)
    .venv/bin/python benchmarks/train_bench.py --quick         # a smoke run (~2 min)

How it measures, so that a shared, noisy machine still gives comparable numbers:
- every number is a steady-state epoch: each measurement trains 1 + E epochs and drops the first (it traces
  and compiles); lrbs_tf's epochs are its `train_seconds` (steps only), Model.fit's the callback-timed epoch
  (no validation), both including the epoch's iterator set-up;
- every measurement runs in a fresh process, as a bin/train run would (in one long process, the tf.data
  threads and functions left by earlier measurements stalled later epochs by up to 150 ms: measured);
- the single-run variants (lrbs_tf, lrbs_tf --jit_compile, Model.fit with and without XLA) and, for the MLP,
  the K-member column are measured in R interleaved rounds, so drift in the machine's speed hits all of them
  alike; each reports the median epoch;
- K separate runs cost K x the single run's median epoch (the runs differ only in their learning rate);
  the whole-process comparison (--end_to_end_epochs) times K real bin/train processes against one column.
Results are printed as markdown and written as JSON; BENCHMARKS.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lrbs_tf.data.loaders import load_data  # noqa: E402
from lrbs_tf.data.pipelines import Pipelines  # noqa: E402
from lrbs_tf.models import builders as models
from lrbs_tf.runs import (
    config,
    folder as runfolder,  # noqa: E402
)
from lrbs_tf.training.run import TrainConfig, run_column  # noqa: E402

RESNET20_FWD_FLOPS = 2 * 40.55e6  # multiply-adds of resnet20 on 32x32 (He et al. 2016: 41M) x 2
# Per architecture: images per epoch (None: the dataset's), rounds, measured epochs per measurement, column K,
# and whether the column joins the rounds (else it is measured once, after them: a ResNet-20 column is long).
PLAN = {"mlp": dict(n_train=None, rounds=3, epochs=4, k=20, column_in_rounds=True),
        "resnet20": dict(n_train=1024, rounds=2, epochs=2, k=4, column_in_rounds=False)}
QUICK = {"mlp": dict(n_train=None, rounds=1, epochs=2, k=5, column_in_rounds=True),
         "resnet20": dict(n_train=256, rounds=1, epochs=1, k=2, column_in_rounds=False)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def matmul_peak(n: int = 2048, reps: int = 20, tries: int = 5) -> float:
    """float32 GFLOP/s of a large matmul (best of `tries`): the machine's practical arithmetic ceiling.
    Measured at the start and at the end of the benchmark; the higher is the peak (a busy neighbour only
    ever lowers it)."""
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(reps):
            c = f(a, b)
        c.numpy()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_example(arch: str, model: keras.Model) -> float:
    """Training FLOPs per example: forward + backward ~ 3 x forward; forward = 2 x multiply-adds."""
    if arch == "mlp":
        return 3 * 2 * models.count_trainable_params(model)
    return 3 * RESNET20_FWD_FLOPS


def dataset_for(arch: str, tmp: Path, n_train: int | None) -> dict:
    """MNIST-1D for the MLP; a random 32x32x3 npz (n_train examples) for conv nets."""
    if arch == "mlp":
        return {"dataset": "mnist1d"}
    rng = np.random.default_rng(0)
    path = tmp / f"random32-{n_train}.npz"
    if not path.exists():
        np.savez(path, x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                 y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (256, 32, 32, 3), np.uint8),
                 y_test=rng.integers(0, 10, 256))
    return {"dataset": "npz", "data_path": str(path)}


def lrbs_epochs(arch: str, batch_size: int, lrs: list[float], epochs: int, tmp: str | Path, data_kw: dict,
                **kw) -> list[float]:
    """`train_seconds` of epochs 2..1+epochs of a column (K = len(lrs); K = 1 is a single run)."""
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    cfg = TrainConfig(arch=arch, batch_size=batch_size, lr=lrs[0], epochs=1 + epochs, workdir=str(workdir),
                      progress=False, mlp_depth=4, mlp_width=256, augment=False, **data_kw, **kw)
    run_column(cfg, lrs)
    name = config.run_name(arch, cfg.dataset, batch_size, lrs[0], 0)
    return [r["train_seconds"] for r in runfolder.read_metrics(workdir / name)[1:]]


def fit_epochs(arch: str, batch_size: int, epochs: int, data_kw: dict, jit: bool) -> list[float]:
    """Epochs 2..1+epochs of Model.fit(jit_compile=jit, steps_per_execution=steps per epoch), same model,
    loss and plain SGD, fed the equivalent shuffled, batched in-memory pipeline."""
    data = load_data(data_kw["dataset"], data_path=data_kw.get("data_path"))
    x, y = data.normalize(data.x_train), data.y_train
    keras.utils.set_random_seed(0)
    model = models.build_model(arch, data.num_classes, data.input_shape)
    steps = len(y) // batch_size
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit, steps_per_execution=steps,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    # Keras silently drops XLA ("Model doesn't support jit_compile=True") when TF op determinism is on, as
    # bin/train turns it on for its whole process: Model.fit therefore runs in a process of its own.
    if model.jit_compile != jit:
        raise SystemExit(f"Model.fit(jit_compile={jit}) compiled with jit_compile={model.jit_compile}")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).batch(
        batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(ds, epochs=1 + epochs, verbose=0, callbacks=[Timer()])
    return times[1:]


def in_child(function: str, *args, **kwargs):
    """Runs `function(*args, **kwargs)` of this module in a fresh interpreter; returns its JSON result."""
    spec = json.dumps({"function": function, "args": [str(a) if isinstance(a, Path) else a for a in args],
                       "kwargs": kwargs})
    proc = subprocess.run([sys.executable, __file__, f"--child={spec}"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(spec: str) -> None:
    spec = json.loads(spec)  # paths arrive as strings, which the measuring functions accept
    print(json.dumps(globals()[spec["function"]](*spec["args"], **spec["kwargs"])), flush=True)


def pipeline_images_per_s(data_kw: dict, batch_size: int, augment: bool, epochs: int = 4) -> float:
    """The training pipeline alone (Pipelines.train, as bin/train builds it each epoch), drained inside a
    tf.function: images/s of its median epoch after the first."""
    data = load_data(data_kw["dataset"], data_path=data_kw.get("data_path"))
    pipes = Pipelines(data, augment=augment)
    steps = data.num_train // batch_size

    @tf.function
    def drain(iterator, n):
        total = tf.zeros([], tf.float32)
        for _ in tf.range(n):
            x, _ = next(iterator)
            total += x[0, 0] if x.shape.rank == 2 else x[0, 0, 0, 0]
        return total

    times = []
    for epoch in range(1 + epochs):
        start = time.perf_counter()
        drain(iter(pipes.train(batch_size, 0, epoch)), tf.constant(steps)).numpy()
        times.append(time.perf_counter() - start)
    return steps * batch_size / statistics.median(times[1:])


# Runs argv and prints its wall seconds and peak RSS. A small interpreter in between, because a child forked
# straight from this (several GB) process reports the parent's resident pages as its own peak.
_MEASURE = """import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_process(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) of one child process."""
    out = json.loads(subprocess.run([sys.executable, "-c", _MEASURE, *argv], check=True, capture_output=True,
                                    text=True).stdout)
    if out["code"]:
        raise SystemExit(f"{' '.join(argv)} exited with {out['code']}")
    return out["seconds"], out["peak_rss_mb"]


def end_to_end(batch_size: int, lrs: list[float], epochs: int, tmp: Path) -> dict:
    """Whole bin/train processes, MLP on MNIST-1D: one column process vs one process per learning rate.

    This is what a sweep pays: each process also imports TensorFlow, loads the data, traces its step,
    evaluates and writes its run folders."""
    common = ["--arch=mlp", "--dataset=mnist1d", f"--batch_size={batch_size}", f"--epochs={epochs}",
              "--progress=false"]
    binary = [sys.executable, str(REPO / "bin" / "train")]
    column_s, column_mb = run_process(binary + common + [f"--lr={','.join(map(str, lrs))}",
                                                         f"--workdir={tmp / 'e2e_column'}"])
    separate = [run_process(binary + common + [f"--lr={lr}", f"--workdir={tmp / 'e2e_separate'}"]) for lr in lrs]
    separate_s = sum(s for s, _ in separate)
    return {"batch_size": batch_size, "k": len(lrs), "epochs": epochs, "column_process_s": column_s,
            "separate_processes_s": separate_s, "speedup": separate_s / column_s,
            "column_process_peak_rss_mb": column_mb,
            "separate_process_peak_rss_mb": max(mb for _, mb in separate)}


def measure_case(arch: str, bs: int, plan: dict, tmp: Path) -> dict:
    data_kw = dataset_for(arch, tmp, plan["n_train"])
    data = load_data(data_kw["dataset"], data_path=data_kw.get("data_path"))
    images = (data.num_train // bs) * bs
    keras.utils.set_random_seed(0)
    fpe = flops_per_example(arch, models.build_model(arch, 10, data.input_shape))
    k, epochs = plan["k"], plan["epochs"]
    lrs = [round(0.01 * (i + 1), 2) for i in range(k)]
    variants = {"lrbs": lambda: in_child("lrbs_epochs", arch, bs, lrs[:1], epochs, tmp, data_kw),
                "lrbs_xla": lambda: in_child("lrbs_epochs", arch, bs, lrs[:1], epochs, tmp, data_kw,
                                             jit_compile=True),
                "fit_xla": lambda: in_child("fit_epochs", arch, bs, epochs, data_kw, jit=True),
                "fit": lambda: in_child("fit_epochs", arch, bs, epochs, data_kw, jit=False)}
    column_variant = {"column": lambda: in_child("lrbs_epochs", arch, bs, lrs, epochs, tmp, data_kw)}
    if plan["column_in_rounds"]:
        variants.update(column_variant)
    times: dict[str, list[float]] = {v: [] for v in (*variants, "column")}
    for _ in range(plan["rounds"]):
        for name, measure in variants.items():
            times[name] += measure()
    if not plan["column_in_rounds"]:
        times["column"] += column_variant["column"]()
    med = {v: statistics.median(t) for v, t in times.items()}
    column = med["column"]
    stacked = statistics.median(in_child("lrbs_epochs", arch, bs, lrs, epochs, tmp, data_kw,
                                         column_engine="stacked")) if arch == "mlp" else None
    separate = k * med["lrbs"]
    row = {"arch": arch, "batch_size": bs, "images_per_epoch": images, "train_flops_per_image": fpe,
           "epochs_per_measurement": epochs, "rounds": plan["rounds"],
           **{f"{v}_images_per_s": images / med[v] for v in variants if v != "column"},
           **{f"{v}_epoch_s": t for v, t in times.items()},
           "lrbs_vs_fit_xla": med["fit_xla"] / med["lrbs"], "lrbs_vs_fit": med["fit"] / med["lrbs"],
           "k": k, "column_epoch_s": column, "stacked_column_epoch_s": stacked,
           "separate_epochs_s": separate, "column_speedup": separate / column,
           "column_gflops": k * images * fpe / column / 1e9, "single_gflops": images * fpe / med["lrbs"] / 1e9,
           "pipeline_images_per_s": in_child("pipeline_images_per_s", data_kw, bs, augment=False)}
    if data.x_train.ndim == 4:
        row["pipeline_augmented_images_per_s"] = in_child("pipeline_images_per_s", data_kw, bs, augment=True)
    print(json.dumps(row), flush=True)
    return row


def print_tables(results: dict) -> None:
    peak = results["matmul_peak_gflops"]
    print(f"\nmatmul peak {peak:.1f} GFLOP/s\n")
    print("| model | batch | lrbs_tf img/s | lrbs_tf `--jit_compile` | Model.fit (XLA) | Model.fit (no XLA) | "
          "lrbs_tf / fit (XLA) | lrbs_tf / fit (no XLA) | lrbs_tf GFLOP/s (% of peak) | input pipeline alone img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["cases"]:
        pipe = f"{r['pipeline_images_per_s']:,.0f}"
        if "pipeline_augmented_images_per_s" in r:
            pipe += f" ({r['pipeline_augmented_images_per_s']:,.0f} augmented)"
        print(f"| {r['arch']} | {r['batch_size']} | {r['lrbs_images_per_s']:,.0f} | {r['lrbs_xla_images_per_s']:,.0f} "
              f"| {r['fit_xla_images_per_s']:,.0f} | {r['fit_images_per_s']:,.0f} | **{r['lrbs_vs_fit_xla']:.2f}** "
              f"| {r['lrbs_vs_fit']:.2f} | {r['single_gflops']:.1f} ({r['single_pct_of_peak']:.0f}%) | {pipe} |")
    print("\n| model | batch | K | column s/epoch (graph) | column s/epoch (stacked) | K separate runs s/epoch "
          "| column speed-up | column GFLOP/s (% of peak) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["cases"]:
        stacked = f"{r['stacked_column_epoch_s']:.2f}" if r["stacked_column_epoch_s"] else "-"
        print(f"| {r['arch']} | {r['batch_size']} | {r['k']} | {r['column_epoch_s']:.2f} | {stacked} | "
              f"{r['separate_epochs_s']:.2f} | **{r['column_speedup']:.1f}x** | {r['column_gflops']:.1f} "
              f"({r['column_pct_of_peak']:.0f}%) |")
    if "end_to_end" in results:
        e = results["end_to_end"]
        print(f"\nwhole processes, mlp batch {e['batch_size']}, {e['epochs']} epochs: one column of {e['k']} "
              f"{e['column_process_s']:.1f} s (peak RSS {e['column_process_peak_rss_mb']:.0f} MB), {e['k']} "
              f"separate {e['separate_processes_s']:.1f} s (peak RSS {e['separate_process_peak_rss_mb']:.0f} MB "
              f"each): {e['speedup']:.1f}x")
    print(f"peak RSS of this benchmark process: {results['peak_rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases (a smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("train_results.json")))
    parser.add_argument("--cases", default="mlp,resnet20", help="architectures to time (mlp, resnet20)")
    parser.add_argument("--batch_sizes", default="16,128")
    parser.add_argument("--end_to_end_epochs", type=int, default=5,
                        help="epochs of the whole-process comparison (mlp, batch 16, K=20; 0 skips it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    tmp = Path(tempfile.mkdtemp(prefix="lrbs_bench_"))
    load = os.getloadavg()[0]
    results: dict = {"machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                                 "python": platform.python_version(), "tensorflow": tf.__version__,
                                 "keras": keras.__version__,
                                 "gpus": [d.name for d in tf.config.list_logical_devices("GPU")]},
                     "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_start": load}
    peak = matmul_peak()
    results["matmul_peak_gflops_start"] = peak
    print(f"matmul peak: {peak:.1f} GFLOP/s (load average {load:.2f})", flush=True)
    plans = QUICK if args.quick else PLAN
    rows = []
    for arch in [a for a in args.cases.split(",") if a]:
        if arch not in plans:
            raise SystemExit(f"--cases: unknown architecture {arch!r}; valid: {', '.join(plans)}")
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            rows.append(measure_case(arch, bs, plans[arch], tmp))
    results["cases"] = rows
    if args.end_to_end_epochs and not args.quick:
        lrs = [round(0.01 * (i + 1), 2) for i in range(20)]
        results["end_to_end"] = end_to_end(16, lrs, args.end_to_end_epochs, tmp)
        print(json.dumps(results["end_to_end"]), flush=True)
    results["matmul_peak_gflops_end"] = matmul_peak()
    results["matmul_peak_gflops"] = peak = max(peak, results["matmul_peak_gflops_end"])
    for row in rows:
        row["column_pct_of_peak"] = 100 * row["column_gflops"] / peak
        row["single_pct_of_peak"] = 100 * row["single_gflops"] / peak
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


if __name__ == "__main__":
    main()
