#!/usr/bin/env python3
"""Benchmark of lrbs_tf.curvature: the cost of a Hessian-vector product, and how many products the top
eigenvalue needs.

1. Seconds per HVP / seconds per gradient of the same objective (same examples, same chunks), for
   forward-over-reverse and reverse-over-reverse. Goal: at most 3.
   - mlp: the registry's default MLP (4 x 256, 210,442 parameters) on MNIST-1D shapes (40 features),
     2048 examples in chunks of 256.
   - resnet20: 32x32x3 Gaussian inputs, 256 examples in chunks of 128, random labels, at initialisation.
2. HVPs to get lambda_max within 1e-3 (relative) of a reference (ARPACK, tol 1e-10), for Lanczos and power
   iteration, over several start vectors: "oracle" counts (the first step whose estimate is within 1e-3,
   read off a single run: Lanczos' largest Ritz value of T_m over 60 steps, power's Rayleigh quotients) and
   the counts of the solvers' own stopping rules at tol=1e-3 (eigsh; power with the two-part rule, at most
   500 products), with the error they actually reach. On the mlp after 20 epochs of SGD on MNIST-1D (a
   realistic point), the same mlp untrained (mlp_init), and resnet20 at initialisation.
3. Optionally (--top_k_models) the top-5 at tol=1e-3: eigsh against power iteration with deflation.

    .venv/bin/python benchmarks/curvature_bench.py                       # numbers in benchmarks/curvature.md
    .venv/bin/python benchmarks/curvature_bench.py --models=mlp --repeats=3 --out=/tmp/c.json
    .venv/bin/python benchmarks/curvature_bench.py --models=mlp,mlp_init --no_timing --eigen_models= \
        --top_k_models=mlp,mlp_init                                      # top-5: eigsh vs power + deflation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

from lrbs_tf.curvature import eigen, hvp, slq  # noqa: E402
from lrbs_tf.models.builders import build_model, count_trainable_params  # noqa: E402

REL = 1e-3


def setup(name: str, train_epochs: int, resnet_examples: int = 256
          ) -> tuple[keras.Model, np.ndarray, np.ndarray, int]:
    """(model, x, y, chunk size) for a benchmark model: mlp (trained), mlp_init (untrained), resnet20."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "mlp_init":
        name, train_epochs = "mlp", 0
    if name == "mlp":
        from lrbs_tf.data.loaders import load_data

        data = load_data("mnist1d")
        model = build_model("mlp", 10, data.input_shape)
        if train_epochs:
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
            model.fit(data.normalize(data.x_train), data.y_train, batch_size=64, epochs=train_epochs, verbose=0,
                      shuffle=True)
        return model, data.normalize(data.x_train[:2048]), data.y_train[:2048].astype(np.int32), 256
    if name == "resnet20":
        model = build_model("resnet20", 10, (32, 32, 3))
        x = rng.standard_normal((resnet_examples, 32, 32, 3)).astype(np.float32)
        return model, x, rng.integers(0, 10, resnet_examples).astype(np.int32), min(128, resnet_examples)
    raise ValueError(name)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_products(model, x, y, chunk: int, repeats: int) -> dict:
    fwd = hvp.keras_objective(model, x, y, chunk, hvp_mode="forward_over_reverse")
    rev = hvp.keras_objective(model, x, y, chunk, hvp_mode="reverse_over_reverse")
    v = np.random.default_rng(0).standard_normal(fwd.dim)
    grad = _median_seconds(lambda: fwd.loss_and_gradient(), repeats)
    t_fwd = _median_seconds(lambda: fwd.hvp(v), repeats)
    t_rev = _median_seconds(lambda: rev.hvp(v), repeats)
    return {"num_params": fwd.dim, "num_examples": fwd.num_examples, "chunk": chunk,
            "seconds_per_gradient": grad, "seconds_per_hvp_forward_over_reverse": t_fwd,
            "seconds_per_hvp_reverse_over_reverse": t_rev, "ratio_forward_over_reverse": t_fwd / grad,
            "ratio_reverse_over_reverse": t_rev / grad}


def _first_within(estimates, truth: float) -> int | None:
    for i, e in enumerate(estimates):
        if abs(e - truth) <= REL * abs(truth):
            return i + 1
    return None


def eigen_counts(obj: hvp.Objective, seeds: int, max_power: int, lanczos_steps: int) -> dict:
    op = LinearOperator((obj.dim, obj.dim), matvec=obj.hvp, dtype=np.float64)
    n0 = obj.num_hvps
    ref = float(eigsh(op, k=1, which="LA", tol=1e-10, v0=np.ones(obj.dim) / np.sqrt(obj.dim))[0][0])
    ref_hvps = obj.num_hvps - n0
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        alphas, betas, _ = slq.lanczos_tridiagonal(obj.hvp, slq.rademacher(rng, obj.dim), lanczos_steps)
        ritz = [float(np.linalg.eigvalsh(np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1)
                                         + np.diag(betas[:m - 1], -1))[-1]) for m in range(1, len(alphas) + 1)]
        lz = eigen.lanczos_top_k(obj.hvp, obj.dim, 1, tol=REL, max_hvps=10_000, seed=seed)
        # One power run gives both counts: the two-part rule runs on past the first estimate within 1e-3.
        pw = eigen.power_iteration(obj.hvp, obj.dim, tol=REL, max_hvps=max_power, seed=seed)
        rows.append({
            "seed": seed,
            "lanczos_oracle_hvps": _first_within(ritz, ref),
            "power_oracle_hvps": _first_within(pw.history, ref),
            "eigsh_tol1e-3_hvps": lz.num_hvps, "eigsh_tol1e-3_rel_error": abs(lz.eigenvalues[0] - ref) / abs(ref),
            "power_tol1e-3_hvps": pw.num_hvps, "power_tol1e-3_converged": pw.converged,
            "power_tol1e-3_rel_error": abs(pw.eigenvalue - ref) / abs(ref)})
    return {"lambda_max": ref, "reference_hvps": ref_hvps, "runs": rows}


def top_k_counts(obj: hvp.Objective, k: int, max_power: int) -> dict:
    """Top-k at tol=1e-3: ARPACK vs power iteration with deflation, HVPs and worst relative error."""
    op = LinearOperator((obj.dim, obj.dim), matvec=obj.hvp, dtype=np.float64)
    ref = np.sort(eigsh(op, k=k, which="LA", tol=1e-10, v0=np.ones(obj.dim) / np.sqrt(obj.dim))[0])[::-1]
    lz = eigen.lanczos_top_k(obj.hvp, obj.dim, k, tol=REL, max_hvps=10_000, seed=0)
    pw = eigen.power_top_k(obj.hvp, obj.dim, k, tol=REL, max_hvps=max_power, seed=0)
    err = lambda vals: float(np.max(np.abs(np.asarray(vals) - ref) / np.abs(ref)))  # noqa: E731
    return {"k": k, "reference": ref.tolist(), "eigsh_hvps": lz.num_hvps, "eigsh_max_rel_error": err(lz.eigenvalues),
            "power_hvps": pw.num_hvps, "power_converged": pw.converged, "power_max_rel_error": err(pw.eigenvalues)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet20", help="comma-separated: mlp, mlp_init, resnet20")
    parser.add_argument("--resnet_examples", type=int, default=256, help="resnet20's Gaussian examples")
    parser.add_argument("--no_timing", action="store_true", help="only the eigenvalue counts")
    parser.add_argument("--eigen_models", default="mlp,mlp_init,resnet20", help="models for the eigenvalue counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--seeds", type=int, default=3, help="start vectors for the eigenvalue counts")
    parser.add_argument("--train_epochs", type=int, default=20, help="SGD epochs of the mlp before measuring")
    parser.add_argument("--max_power_hvps", type=int, default=500)
    parser.add_argument("--lanczos_steps", type=int, default=60)
    parser.add_argument("--top_k_models", default="", help="models for the top-k counts (eigsh vs deflation)")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "gpu": tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None,
               "load_average_at_start": os.getloadavg()}  # other processes on the machine skew the seconds
    print(json.dumps(machine), flush=True)
    results = {"machine": machine, "timing": {}, "eigen": {}, "top_k": {}}
    for name in args.models.split(","):
        model, x, y, chunk = setup(name, args.train_epochs, args.resnet_examples)
        assert count_trainable_params(model) > 0
        if not args.no_timing:
            results["timing"][name] = time_products(model, x, y, chunk, args.repeats)
            print(name, json.dumps(results["timing"][name]), flush=True)
        if name in args.eigen_models.split(","):
            obj = hvp.keras_objective(model, x, y, chunk)
            t0 = time.perf_counter()
            results["eigen"][name] = eigen_counts(obj, args.seeds, args.max_power_hvps, args.lanczos_steps)
            results["eigen"][name]["seconds"] = time.perf_counter() - t0
            print(name, json.dumps(results["eigen"][name]), flush=True)
        if name in args.top_k_models.split(","):
            obj = hvp.keras_objective(model, x, y, chunk)
            results["top_k"][name] = top_k_counts(obj, args.top_k, max_power=3 * args.max_power_hvps)
            print(name, json.dumps(results["top_k"][name]), flush=True)
    results["load_average_at_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
