#!/usr/bin/env python3
"""bin/sharpness over many runs: one process for all of them against one process per run.

    .venv/bin/python benchmarks/sharpness_many_bench.py --results=outputs/quick            # 2 rounds
    .venv/bin/python benchmarks/sharpness_many_bench.py --results=outputs/quick --rounds=3

`--results` is a folder of finished runs (the quick study's 25); it is only read: each round copies its
run folders (without sharpness.json) into a fresh temporary folder. A round measures both ways, in
alternating order from round to round, so drift of a noisy machine hits both alike:
- one process: `bin/sharpness --results=COPY` (every run below it, data loaded and functions traced once);
- per run: `bin/sharpness --ckpt=COPY/<run>` once per run, one after another (what bin/sweep did before).
Both use the quick study's sharpness flags (flags/quick.flags' --sharpness_flags) unless --flags is given.
Recorded: wall seconds and CPU seconds (user + system of the child processes) of each way per round,
their medians over rounds, the speed-up, and whether every run's numbers agree between the two ways
(lambda_max and trace equal to the last bit). Printed as markdown; saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrbs_tf.runs import folder as runfolder  # noqa: E402

QUICK_FLAGS = ["--quantities=eigenvalues,trace", "--top_k=1", "--num_examples=1024", "--hvp_batch_size=1024"]
COMPARED = ("lambda_max", "trace")


def timed_run(argv: list[str]) -> tuple[float, float]:
    """Runs argv to completion (failing loudly); its wall and CPU seconds (benchmarks/trajectory_bench.py uses
    it too)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _copy_runs(runs: list[Path]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="sharpness_bench_"))
    for run in runs:
        shutil.copytree(run, root / run.name, ignore=shutil.ignore_patterns(runfolder.SHARPNESS, "tb"))
    return root


def _numbers(root: Path) -> dict[str, list]:
    return {d.name: [runfolder.read_json(d / runfolder.SHARPNESS)[k] for k in COMPARED]
            for d in sorted(root.iterdir()) if d.is_dir()}


def one_round(runs: list[Path], flags: list[str], first: str) -> dict:
    binary = [sys.executable, str(REPO / "bin" / "sharpness")]
    out, numbers = {}, {}
    for way in (["one_process", "per_run"] if first == "one_process" else ["per_run", "one_process"]):
        root = _copy_runs(runs)
        if way == "one_process":
            wall, cpu = timed_run([*binary, f"--results={root}", *flags])
        else:
            wall = cpu = 0.0
            for run in sorted(root.iterdir()):
                w, c = timed_run([*binary, f"--ckpt={run}", *flags])
                wall, cpu = wall + w, cpu + c
        out[way] = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
        numbers[way] = _numbers(root)
        shutil.rmtree(root)
    out["identical"] = numbers["one_process"] == numbers["per_run"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a folder of finished runs (read only)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flags", default=" ".join(QUICK_FLAGS), help="bin/sharpness flags, space-separated")
    parser.add_argument("--out", default="sharpness_many_bench.json")
    args = parser.parse_args()
    runs = [d for d in runfolder.iter_run_dirs(Path(args.results)) if (d / runfolder.RESULT).exists()]
    if not runs:
        raise SystemExit(f"{args.results}: no finished run folders")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
              "cores": os.cpu_count(), "runs": len(runs), "flags": args.flags.split(),
              "load_average_start": os.getloadavg()[0], "rounds": []}
    for i in range(args.rounds):
        record["rounds"].append(one_round(runs, args.flags.split(), "one_process" if i % 2 == 0 else "per_run"))
        print(json.dumps(record["rounds"][-1]), flush=True)
    record["load_average_end"] = os.getloadavg()[0]
    med = {way: {k: statistics.median(r[way][k] for r in record["rounds"]) for k in ("wall_seconds", "cpu_seconds")}
           for way in ("one_process", "per_run")}
    record["median"] = med
    record["speedup_wall"] = med["per_run"]["wall_seconds"] / med["one_process"]["wall_seconds"]
    record["speedup_cpu"] = med["per_run"]["cpu_seconds"] / med["one_process"]["cpu_seconds"]
    record["identical"] = all(r["identical"] for r in record["rounds"])
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{len(runs)} runs, {args.rounds} rounds, load average {record['load_average_start']:.2f} -> "
          f"{record['load_average_end']:.2f}\n")
    print("| way | wall s (median) | CPU s (median) |\n|---|---|---|")
    for way in ("per_run", "one_process"):
        print(f"| {way} | {med[way]['wall_seconds']:.1f} | {med[way]['cpu_seconds']:.1f} |")
    print(f"\nspeed-up: {record['speedup_wall']:.1f}x wall, {record['speedup_cpu']:.1f}x CPU; "
          f"numbers identical in every round: {record['identical']}")


if __name__ == "__main__":
    main()
