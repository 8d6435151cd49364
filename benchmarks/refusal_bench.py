"""Times how long each binary takes to refuse the bad inputs of docs/guide.md's list ("Bad input"), and
whether it loaded TensorFlow.

    .venv/bin/python benchmarks/refusal_bench.py                      # 5 interleaved rounds, medians
    .venv/bin/python benchmarks/refusal_bench.py --rounds=3 --out=/tmp/refusal.json

Method: each measurement is a fresh process (`python -c` running bin/<binary> through runpy, as a user's
shell would start it), so nothing is cached in the interpreter; the cases are run in interleaved rounds
(case 1..N, then again) so a burst of load from other processes spreads over all cases instead of landing
on one; the recorded figure is the median per case. Each process also writes, at exit, whether
`tensorflow` was in sys.modules: a refusal must come before TensorFlow is imported (tests/test_refusals.py
asserts that without timing it). The load average before and after is recorded beside the times, since
wall time on a shared machine depends on it. Results: benchmarks/refusal.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]

# A probe: runs bin/<binary> with sys.argv set, and at exit appends {"tensorflow": bool} to a file.
_PROBE = """
import atexit, json, runpy, sys
out, binary, *args = sys.argv[1:]
def _report():
    with open(out, "w") as f:
        json.dump({"tensorflow": "tensorflow" in sys.modules}, f)
atexit.register(_report)
sys.argv = [binary, *args]
runpy.run_path(binary, run_name="__main__")
"""


def _other_config(root: Path) -> list[str]:
    """A run folder of another configuration (epochs 3) where bin/train is asked for epochs 2."""
    run = root / "mlp-mnist1d-bs64-lr0.1-s0"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({
        "arch": "mlp", "dataset": "mnist1d", "batch_size": 64, "lr": 0.1, "seed": 0, "epochs": 3}))
    return ["--arch=mlp", "--dataset=mnist1d", "--batch_size=64", "--lr=0.1", "--epochs=2", f"--workdir={root}"]


def _malformed_npz(root: Path) -> list[str]:
    path = root / "bad.npz"
    path.write_bytes(b"not a zip archive")
    return ["--dataset=npz", f"--data_path={path}", f"--workdir={root}"]


def _results_folder(root: Path) -> list[str]:
    """bin/sharpness --ckpt given a results folder (it holds run folders, is none)."""
    (root / "quick" / "mlp-run").mkdir(parents=True, exist_ok=True)
    (root / "quick" / "mlp-run" / "config.json").write_text("{}")
    return [f"--ckpt={root / 'quick'}"]


MNIST1D = ["--arch=mlp", "--dataset=mnist1d"]
# (name, binary, arguments, or a function of a scratch folder that prepares it and returns them)
CASES: list[tuple[str, str, list[str] | Callable[[Path], list[str]]]] = [
    ("unknown arch", "train", ["--arch=nope"]),
    ("unknown dataset", "train", ["--dataset=nope"]),
    ("lr <= 0", "train", [*MNIST1D, "--lr=0"]),
    ("batch_size <= 0", "train", [*MNIST1D, "--batch_size=0"]),
    ("batch larger than the training set", "train", [*MNIST1D, "--batch_size=5000"]),
    ("batch not divisible by the replicas", "train", [*MNIST1D, "--batch_size=64", "--cpu_devices=3"]),
    ("epochs <= 0", "train", [*MNIST1D, "--epochs=0"]),
    ("max_steps <= 0", "train", [*MNIST1D, "--max_steps=0"]),
    ("more steps than --epochs allow", "train", [*MNIST1D, "--epochs=1", "--batch_size=64", "--max_steps=1000"]),
    ("missing npz file", "train", ["--dataset=npz", "--data_path=/nonexistent/x.npz"]),
    ("malformed npz file", "train", _malformed_npz),
    ("a folder of another configuration", "train", _other_config),
    ("--learning_rate (did you mean --lr)", "train", ["--learning_rate=0.1"]),
    ("sweep: batch larger than the training set", "sweep", [*MNIST1D, "--batch_sizes=5000", "--lrs=0.1"]),
    ("sweep: --batch_size=32,64", "sweep", [*MNIST1D, "--batch_size=32,64", "--lrs=0.1"]),
    ("sharpness: missing --results folder", "sharpness", ["--results=/nonexistent/outputs"]),
    ("sharpness: missing --ckpt", "sharpness", ["--ckpt=/nonexistent/run"]),
    ("sharpness: --ckpt is a results folder", "sharpness", _results_folder),
    ("correlate: missing --results folder", "correlate", ["--results=/nonexistent/outputs"]),
    ("bound: missing sharpness.json", "bound", ["--sharpness_json=/nonexistent/run"]),
]


def refuse(binary: str, args: list[str], scratch: Path) -> dict:
    """One fresh process: bin/<binary> args. Its exit status, seconds, stderr, and whether TF was loaded."""
    marker = scratch / f"probe-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-c", _PROBE, str(marker), str(REPO / "bin" / binary), *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=scratch, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    seconds = time.perf_counter() - start
    loaded = json.loads(marker.read_text())["tensorflow"] if marker.exists() else None
    return {"returncode": proc.returncode, "seconds": seconds, "stderr": proc.stderr.strip(),
            "tensorflow": loaded}


def case_args(case, scratch: Path) -> list[str]:
    name, _, args = case
    if callable(args):
        folder = scratch / name.replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        return args(folder)
    return list(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    opts = parser.parse_args()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {c[0]: [] for c in CASES}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for _ in range(opts.rounds):
            for case in CASES:
                result = refuse(case[1], case_args(case, scratch), scratch)
                times[case[0]].append(result["seconds"])
                last[case[0]] = result
    rows = [{"case": c[0], "binary": c[1], "median_s": statistics.median(times[c[0]]),
             "min_s": min(times[c[0]]), "max_s": max(times[c[0]]), "returncode": last[c[0]]["returncode"],
             "tensorflow": last[c[0]]["tensorflow"], "stderr": last[c[0]]["stderr"]} for c in CASES]
    record = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} "
                         f"CPUs", "python": sys.version.split()[0], "rounds": opts.rounds,
              "load_before": load_before, "load_after": os.getloadavg(), "cases": rows}
    for r in rows:
        print(f"{r['median_s']:6.2f} s  (min {r['min_s']:.2f}, max {r['max_s']:.2f})  exit {r['returncode']}  "
              f"tf={r['tensorflow']}  {r['case']}: {r['stderr'][:110]}")
    print(f"load average before {load_before}, after {record['load_after']}")
    if opts.out:
        Path(opts.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
