#!/usr/bin/env python3
"""Size a grid on your GPU host: images/s of bin/train for ResNet-110 and VGG-19 on 32x32 inputs, and the
projected GPU-hours of He et al.'s 400-run grid (20 batch sizes x 20 learning rates x 200 epochs).

    .venv/bin/python benchmarks/gpu_bench.py                       # the full matrix (1-3 GPU-hours)
    .venv/bin/python benchmarks/gpu_bench.py --archs=resnet110 --batch_sizes=64,320 --columns=1,20
    .venv/bin/python benchmarks/gpu_bench.py --smoke               # tiny settings, runs on a CPU in ~30 s
    .venv/bin/python benchmarks/gpu_bench.py --archs=resnet50,resnet18 --image_size=224 --num_classes=1000 \
        --grid_images=1281167 --n_train=2560 --columns=1 --variants=plain,xla_fp16   # the grid on ImageNet

No GPU numbers were measured by lrbs_tf's developers: the machines they had carry no GPU TensorFlow. Run this
on yours (one visible GPU: set CUDA_VISIBLE_DEVICES) and keep the JSON it writes beside your grid.

How it measures (benchmarks/train_bench.py's method):
- every measurement is a fresh `bin/train` process, as a sweep's would be, on a synthetic npz (uint8
  --image_size x --image_size x 3, --num_classes classes, --n_train images; CIFAR-shaped by default) with the
  paper's augmentation (--augment). At --image_size=224 this times the model's steps on ImageNet-sized
  inputs, not imagenet2012's JPEG decoding and cropping on the CPU, which may be slower;
- it trains 1 + --epochs epochs and keeps the median `train_seconds` (steps only) of all but the first
  epoch, which traces and compiles; images/s per run = steps x batch / that median; a K-member column
  process does K runs' worth of images at once;
- the variants (plain float32, `--jit_compile`, `--mixed_precision=float16`, both) and the cases are
  measured in interleaved rounds (--rounds), so drift hits all alike; medians over rounds;
- a process that fails (out of memory, say) is recorded with its last error line and the rest goes on.

The projection: per (arch, variant, K), images/s per run at the paper's batch sizes 16, 32, ..., 320 are
interpolated log-log between the measured batch sizes (held constant beyond them); a batch size's 20
learning rates take ceil(20 / K) processes of 200 epochs x --grid_images images each (50,000: CIFAR;
1,281,167: ImageNet); GPU-hours are their sum on one GPU (divide by the number of GPUs bin/sweep --workers
spreads them over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAPER_BATCH_SIZES = tuple(range(16, 321, 16))
PAPER_LRS = 20
PAPER_EPOCHS = 200
PAPER_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100
VARIANTS = {"plain": [], "xla": ["--jit_compile"], "fp16": ["--mixed_precision=float16"],
            "xla_fp16": ["--jit_compile", "--mixed_precision=float16"]}
FULL = dict(archs="resnet110,vgg19", batch_sizes="16,64,128,320", columns="1,4,20", variants=",".join(VARIANTS),
            n_train=10_240, n_test=1_000, epochs=2, rounds=1, image_size=32, num_classes=10,
            grid_images=PAPER_TRAIN_IMAGES)
SMOKE = dict(archs="resnet20", batch_sizes="16", columns="1,2", variants="plain", n_train=64, n_test=32, epochs=1,
             rounds=1, image_size=32, num_classes=10, grid_images=PAPER_TRAIN_IMAGES)


def synthetic_cifar(path: Path, n_train: int, n_test: int, size: int = 32, classes: int = 10) -> Path:
    """An npz of random size x size x 3 images (CIFAR-shaped by default): throughput does not depend on what the
    pixels show. Every class occurs in the training split (the loader refuses test classes it lacks)."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % classes,
             x_test=rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
             y_test=rng.integers(0, min(classes, n_train), n_test))
    return path


def device() -> dict:
    """What TensorFlow sees in a child process (this script never imports TensorFlow itself)."""
    code = ("import json, tensorflow as tf; g = tf.config.list_physical_devices('GPU'); "
            "print(json.dumps({'tensorflow': tf.__version__, 'gpus': [tf.config.experimental.get_device_details(d)"
            ".get('device_name', d.name) for d in g]}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                            timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = []
    return info


def measure(arch: str, batch_size: int, k: int, variant: str, data_path: Path, epochs: int, tmp: Path) -> dict:
    """One fresh bin/train process: a K-member column (K = 1: a single run) of `arch` at `batch_size`."""
    workdir = Path(tempfile.mkdtemp(dir=tmp))
    lrs = ",".join(f"{0.01 * (i + 1):.2f}" for i in range(k))
    argv = [sys.executable, str(REPO / "bin" / "train"), f"--arch={arch}", "--dataset=npz",
            f"--data_path={data_path}", "--augment", f"--batch_size={batch_size}", f"--lr={lrs}",
            f"--epochs={1 + epochs}", f"--workdir={workdir}", "--noprogress", *VARIANTS[variant]]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    row = {"arch": arch, "batch_size": batch_size, "k": k, "variant": variant,
           "process_seconds": time.perf_counter() - start}
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return {**row, "status": "failed", "error": lines[-1] if lines else f"exit {proc.returncode}"}
    (run_dir,) = [d for d in workdir.iterdir() if d.name.endswith(f"-lr{lrs.split(',')[0]}-s0")]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run_dir / "config.json").read_text())
    images = config["steps_per_epoch"] * batch_size
    return {**row, "status": "ok", "images_per_epoch": images, "epoch_train_seconds": [r["train_seconds"] for r in rows]}


def summarise(rows: list[dict]) -> list[dict]:
    """One row per case: the median steady-state epoch over every round, images/s per run and per process."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        cases.setdefault((r["arch"], r["batch_size"], r["k"], r["variant"]), []).append(r)
    out = []
    for (arch, bs, k, variant), rs in cases.items():
        ok = [r for r in rs if r["status"] == "ok"]
        case = {"arch": arch, "batch_size": bs, "k": k, "variant": variant, "measurements": len(rs),
                "failed": len(rs) - len(ok)}
        if ok:
            median = statistics.median(s for r in ok for s in r["epoch_train_seconds"][1:])
            case.update(median_epoch_seconds=median, images_per_s_per_run=ok[0]["images_per_epoch"] / median,
                        images_per_s_per_process=k * ok[0]["images_per_epoch"] / median)
        else:
            case["error"] = rs[-1].get("error")
        out.append(case)
    return out


def interpolate_log(x: float, xs: list[float], ys: list[float]) -> float:
    """log-log linear interpolation of y at x between the points (xs ascending), constant beyond them."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = next(j for j in range(1, len(xs)) if xs[j] >= x)
    t = (math.log(x) - math.log(xs[i - 1])) / (math.log(xs[i]) - math.log(xs[i - 1]))
    return math.exp(math.log(ys[i - 1]) + t * (math.log(ys[i]) - math.log(ys[i - 1])))


def project(cases: list[dict], epochs: int = PAPER_EPOCHS, images: int = PAPER_TRAIN_IMAGES) -> list[dict]:
    """GPU-hours of the paper's 400-run grid per (arch, variant, K), from the measured images/s per run."""
    groups: dict[tuple, list[dict]] = {}
    for c in cases:
        if "images_per_s_per_run" in c:
            groups.setdefault((c["arch"], c["variant"], c["k"]), []).append(c)
    out = []
    for (arch, variant, k), cs in sorted(groups.items()):
        cs = sorted(cs, key=lambda c: c["batch_size"])
        xs, ys = [c["batch_size"] for c in cs], [c["images_per_s_per_run"] for c in cs]
        processes = math.ceil(PAPER_LRS / k)
        seconds = sum(processes * epochs * images / interpolate_log(bs, xs, ys) for bs in PAPER_BATCH_SIZES)
        out.append({"arch": arch, "variant": variant, "k": k, "measured_batch_sizes": xs,
                    "grid_gpu_hours": seconds / 3600})
    return out


def print_tables(results: dict, images: int = PAPER_TRAIN_IMAGES) -> None:
    print("\n| arch | batch | K | variant | img/s per run | img/s per process | median epoch s |")
    print("|---|---|---|---|---|---|---|")
    for c in results["cases"]:
        if "images_per_s_per_run" in c:
            print(f"| {c['arch']} | {c['batch_size']} | {c['k']} | {c['variant']} | {c['images_per_s_per_run']:,.0f} "
                  f"| {c['images_per_s_per_process']:,.0f} | {c['median_epoch_seconds']:.3g} |")
        else:
            print(f"| {c['arch']} | {c['batch_size']} | {c['k']} | {c['variant']} | failed: {c['error']} | | |")
    print(f"\nProjected GPU-hours of one 400-run grid ({len(PAPER_BATCH_SIZES)} batch sizes x {PAPER_LRS} learning "
          f"rates x {PAPER_EPOCHS} epochs x {images:,} images), one GPU:\n")
    print("| arch | variant | K | GPU-hours | from batch sizes |")
    print("|---|---|---|---|---|")
    for p in results["projection"]:
        print(f"| {p['arch']} | {p['variant']} | {p['k']} | {p['grid_gpu_hours']:,.1f} | "
              f"{','.join(map(str, p['measured_batch_sizes']))} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run on a CPU (a test runs them)")
    for name, default in FULL.items():
        parser.add_argument(f"--{name}", type=type(default), default=None, help=f"default {default}")
    parser.add_argument("--out", default="gpu_bench.json", help="JSON of every measurement and the projection")
    args = parser.parse_args(argv)
    plan = {name: getattr(args, name) if getattr(args, name) is not None else (SMOKE if args.smoke else FULL)[name]
            for name in FULL}
    unknown = [v for v in plan["variants"].split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; valid: {','.join(VARIANTS)}")
    tmp = Path(tempfile.mkdtemp(prefix="lrbs_gpu_bench_"))
    data_path = synthetic_cifar(tmp / "synthetic.npz", plan["n_train"], plan["n_test"], plan["image_size"],
                                plan["num_classes"])
    results = {"plan": plan, "date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(),
               "python": platform.python_version(), "device": device(), "rows": []}
    print(f"device: {results['device']}", flush=True)
    cases = [(a, int(b), int(k), v) for a in plan["archs"].split(",") for b in plan["batch_sizes"].split(",")
             for k in plan["columns"].split(",") for v in plan["variants"].split(",")]
    for round_ in range(plan["rounds"]):
        for arch, bs, k, variant in cases:
            row = measure(arch, bs, k, variant, data_path, plan["epochs"], tmp)
            row["round"] = round_
            results["rows"].append(row)
            print(json.dumps({key: v for key, v in row.items() if key != "epoch_train_seconds"}), flush=True)
    results["cases"] = summarise(results["rows"])
    results["projection"] = project(results["cases"], images=plan["grid_images"])
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, plan["grid_images"])
    return 0 if all(c["failed"] == 0 for c in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
