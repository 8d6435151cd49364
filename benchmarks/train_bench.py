#!/usr/bin/env python3
"""Training throughput: lrbs_tf's loop vs Keras Model.fit, a K-member LR column vs K separate runs, GFLOP/s.

    .venv/bin/python benchmarks/train_bench.py [--quick] [--out benchmarks/train_results.json]

Every number is a steady-state epoch (the first epoch, which traces and compiles, is excluded), measured
in this process on random data of the stated shapes (MNIST-1D itself for the MLP). Results are printed as
a markdown table and written as JSON; BENCHMARKS.md records them with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lrbs_tf import models, runfolder  # noqa: E402
from lrbs_tf.data import load_data  # noqa: E402
from lrbs_tf.train import TrainConfig, run_column  # noqa: E402

RESNET20_FWD_FLOPS = 2 * 40.55e6  # multiply-adds of resnet20 on 32x32 (He et al. 2016: 41M) x 2


def matmul_peak(n: int = 2048, reps: int = 20) -> float:
    """float32 GFLOP/s of a large matmul: the machine's practical arithmetic ceiling."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    start = time.perf_counter()
    for _ in range(reps):
        c = f(a, b)
    c.numpy()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def flops_per_example(arch: str, model: keras.Model) -> float:
    """Training FLOPs per example: forward + backward ~ 3 x forward; forward = 2 x multiply-adds."""
    if arch == "mlp":
        return 3 * 2 * models.count_trainable_params(model)
    return 3 * RESNET20_FWD_FLOPS


def dataset_for(arch: str, tmp: Path, n_train: int) -> dict:
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


def lrbs_epoch_seconds(arch: str, batch_size: int, lrs: list[float], tmp: Path, data_kw: dict,
                       jit: bool = False) -> float:
    """Training seconds (`train_seconds`: steps only, like Model.fit's epoch without validation) of the
    second epoch of a column (K = len(lrs)) trained by lrbs_tf."""
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    cfg = TrainConfig(arch=arch, batch_size=batch_size, lr=lrs[0], epochs=2, workdir=str(workdir), progress=False,
                      mlp_depth=4, mlp_width=256, jit_compile=jit, **data_kw)
    run_column(cfg, lrs)
    name = runfolder.run_name(arch, cfg.dataset, batch_size, lrs[0], 0)
    return runfolder.read_metrics(workdir / name)[1]["train_seconds"]


def keras_fit_epoch_seconds(arch: str, batch_size: int, data_kw: dict) -> float:
    """Seconds of the second epoch of Model.fit(jit_compile=True, steps_per_execution=steps per epoch)."""
    data = load_data(data_kw["dataset"], data_path=data_kw.get("data_path"))
    x, y = data.normalize(data.x_train), data.y_train
    keras.utils.set_random_seed(0)
    model = models.build_model(arch, data.num_classes, data.input_shape)
    steps = len(y) // batch_size
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True, steps_per_execution=steps,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).batch(
        batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    model.fit(ds, epochs=2, verbose=0, callbacks=[timer])
    return timer.seconds


def end_to_end(batch_size: int, lrs: list[float], epochs: int, tmp: Path) -> dict:
    """Wall seconds of whole bin/train processes: one column process vs one process per learning rate.

    This is what a sweep pays: each process also imports TensorFlow, loads the data and traces its step.
    """
    common = ["--arch=mlp", "--dataset=mnist1d", f"--batch_size={batch_size}", f"--epochs={epochs}",
              "--progress=false"]
    binary = [sys.executable, str(Path(__file__).resolve().parents[1] / "bin" / "train")]

    def timed(args: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(binary + common + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    column = timed([f"--lr={','.join(map(str, lrs))}", f"--workdir={tmp / 'e2e_column'}"])
    separate = sum(timed([f"--lr={lr}", f"--workdir={tmp / 'e2e_separate'}"]) for lr in lrs)
    return {"batch_size": batch_size, "k": len(lrs), "epochs": epochs, "column_process_s": column,
            "separate_processes_s": separate, "speedup": separate / column}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases (a smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("train_results.json")))
    parser.add_argument("--cases", default="mlp,resnet20", help="architectures to time (mlp, resnet20)")
    parser.add_argument("--end_to_end_epochs", type=int, default=5,
                        help="epochs of the whole-process comparison (mlp, batch 16; 0 skips it)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lrbs_bench_"))
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                                 "gpus": [d.name for d in tf.config.list_logical_devices("GPU")]}}
    peak = matmul_peak()
    results["matmul_peak_gflops"] = peak
    print(f"matmul peak: {peak:.1f} GFLOP/s", flush=True)

    k = 5 if args.quick else 20
    lrs = [round(0.01 * (i + 1), 2) for i in range(k)]
    rows = []
    archs = args.cases.split(",")
    cases = [(a, bs) for a in ("mlp", "resnet20") if a in archs for bs in (16, 128)]
    if args.quick:
        cases = [c for c in cases if c[0] == "mlp"]
    for arch, bs in cases:
        data_kw = dataset_for(arch, tmp, 1024)
        n_train = load_data(data_kw["dataset"], data_path=data_kw.get("data_path")).num_train
        images = (n_train // bs) * bs
        keras.utils.set_random_seed(0)
        probe = models.build_model(arch, 10, (40,) if arch == "mlp" else (32, 32, 3))
        fpe = flops_per_example(arch, probe)
        one = lrbs_epoch_seconds(arch, bs, lrs[:1], tmp, data_kw)
        one_xla = lrbs_epoch_seconds(arch, bs, lrs[:1], tmp, data_kw, jit=True)
        fit = keras_fit_epoch_seconds(arch, bs, data_kw)
        column = lrbs_epoch_seconds(arch, bs, lrs, tmp, data_kw)
        # K separate runs, each trained alone (each its own epoch; summed).
        separate = sum(lrbs_epoch_seconds(arch, bs, [lr], tmp, data_kw) for lr in lrs) \
            if (arch == "mlp" or bs == 128) else None
        row = {"arch": arch, "batch_size": bs, "images_per_epoch": images, "train_flops_per_image": fpe,
               "lrbs_images_per_s": images / one, "lrbs_xla_images_per_s": images / one_xla,
               "fit_images_per_s": images / fit, "lrbs_vs_fit": fit / one, "k": k,
               "column_epoch_s": column, "separate_epochs_s": separate,
               "column_speedup": (separate / column) if separate else None,
               "column_gflops": k * images * fpe / column / 1e9,
               "single_gflops": images * fpe / one / 1e9}
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["cases"] = rows
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.end_to_end_epochs and "mlp" in archs:
        results["end_to_end"] = end_to_end(16, lrs, args.end_to_end_epochs, tmp)
        print(json.dumps(results["end_to_end"]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    print("\n| model | batch | lrbs img/s | lrbs+XLA img/s | fit img/s | lrbs/fit | column of "
          f"{k} s/epoch | {k} separate s/epoch | speed-up | column GFLOP/s (% of peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sep = f"{r['separate_epochs_s']:.2f}" if r["separate_epochs_s"] else "not run"
        speed = f"{r['column_speedup']:.1f}x" if r["column_speedup"] else "-"
        print(f"| {r['arch']} | {r['batch_size']} | {r['lrbs_images_per_s']:.0f} | {r['lrbs_xla_images_per_s']:.0f} "
              f"| {r['fit_images_per_s']:.0f} | {r['lrbs_vs_fit']:.2f} | {r['column_epoch_s']:.2f} | {sep} | {speed} "
              f"| {r['column_gflops']:.1f} ({100 * r['column_gflops'] / peak:.0f}%) |")
    print(f"\npeak RSS: {results['peak_rss_mb']:.0f} MB")
    if "end_to_end" in results:
        e = results["end_to_end"]
        print(f"whole processes, mlp batch {e['batch_size']}, {e['epochs']} epochs: one column of {e['k']} "
              f"{e['column_process_s']:.1f} s, {e['k']} separate {e['separate_processes_s']:.1f} s "
              f"({e['speedup']:.1f}x)")


if __name__ == "__main__":
    main()
