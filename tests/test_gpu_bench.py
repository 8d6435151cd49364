"""benchmarks/gpu_bench.py: its CPU smoke run, and the projection of the paper's grid from measured rates."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
gpu_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bench)


def test_projection_sums_the_grid_from_interpolated_rates():
    """Rates that follow T(B) = 50 B^0.5 exactly are interpolated exactly, so the projected hours equal the
    grid's sum computed directly: 20 learning rates x 200 epochs x 50,000 images / T(B), over B = 16..320."""
    cases = [{"arch": "a", "variant": "plain", "k": k, "batch_size": b, "images_per_s_per_run": 50 * b ** 0.5}
             for b in (16, 64, 320) for k in (1, 20)]
    hours = {p["k"]: p["grid_gpu_hours"] for p in gpu_bench.project(cases)}
    direct = sum(200 * 50_000 / (50 * b ** 0.5) for b in range(16, 321, 16)) / 3600
    assert hours[1] == pytest.approx(20 * direct, rel=1e-12)
    assert hours[20] == pytest.approx(direct, rel=1e-12)  # one column process per batch size
    assert gpu_bench.interpolate_log(8, [16, 64], [1.0, 4.0]) == 1.0  # held constant beyond the measurements
    assert gpu_bench.interpolate_log(32, [16, 64], [1.0, 4.0]) == pytest.approx(2.0)


def test_smoke_run_measures_real_bin_train_processes(tmp_path):
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--smoke", f"--out={out}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    results = json.loads(out.read_text())
    assert [(c["arch"], c["batch_size"], c["k"], c["variant"]) for c in results["cases"]] == \
        [("resnet20", 16, 1, "plain"), ("resnet20", 16, 2, "plain")]
    for row, case in zip(results["rows"], results["cases"]):
        assert row["status"] == "ok" and row["images_per_epoch"] == 64 and len(row["epoch_train_seconds"]) == 2
        assert case["median_epoch_seconds"] == row["epoch_train_seconds"][1]
        assert case["images_per_s_per_process"] == pytest.approx(case["k"] * 64 / case["median_epoch_seconds"])
    for p in results["projection"]:
        case = next(c for c in results["cases"] if c["k"] == p["k"])
        expected = math.ceil(20 / p["k"]) * 20 * 200 * 50_000 / case["images_per_s_per_run"] / 3600
        assert p["grid_gpu_hours"] == pytest.approx(expected, rel=1e-12)
    assert "Projected GPU-hours" in proc.stdout


def test_imagenet_sized_synthetic_data_and_projection(tmp_path):
    """--image_size/--num_classes shape the synthetic npz (every class in its training split); --grid_images
    scales the projection: ImageNet's 1,281,167 images an epoch instead of CIFAR's 50,000."""
    import numpy as np

    path = gpu_bench.synthetic_cifar(tmp_path / "s.npz", 40, 8, size=64, classes=20)
    with np.load(path) as f:
        assert f["x_train"].shape == (40, 64, 64, 3) and f["x_test"].shape == (8, 64, 64, 3)
        assert set(f["y_train"].tolist()) == set(range(20)) and set(f["y_test"].tolist()) <= set(range(20))
    cases = [{"arch": "resnet50", "variant": "plain", "k": 1, "batch_size": 256, "images_per_s_per_run": 909.0}]
    (p,) = gpu_bench.project(cases, images=1_281_167)
    assert p["grid_gpu_hours"] == pytest.approx(400 * 200 * 1_281_167 / 909 / 3600, rel=1e-12)
    assert round(p["grid_gpu_hours"]) == 31_321  # flags/rebuttal/resnet_imagenet.flags quotes it
