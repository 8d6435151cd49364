"""Times the README's main command, `bin/sweep --flagfile=flags/quick.flags`, end to end, and records what
it found.

    .venv/bin/python benchmarks/sweep_bench.py                       # fresh workdir under /tmp
    .venv/bin/python benchmarks/sweep_bench.py --out=/tmp/sweep_bench.json

Wall time depends on what else runs on the machine, so beside it this records the load average before and
after and the CPU seconds (user + system) of the whole process tree: CPU seconds / cores is the wall time
the same work needs on idle cores. The phases (training, sharpness, correlate) are read from the sweep's
own progress lines, stamped as they arrive. The result: bin/correlate's Table 3 row (Spearman rho of best
test accuracy vs BS/LR, p, n), the curvature rows of its sharpness table, and every run's status, epochs
and final training accuracy (the premise of near-zero training error).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrbs_tf.runs import folder as runfolder  # noqa: E402


def run_sweep(flagfile: str, workdir: Path) -> dict:
    """Runs bin/sweep, stamping each output line with seconds since the start."""
    argv = [sys.executable, str(REPO / "bin" / "sweep"), f"--flagfile={flagfile}", f"--workdir={workdir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    lines = []
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append((round(time.monotonic() - start, 1), line.rstrip("\n")))
            print(line, end="", flush=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = {kind: max((t for t, line in lines if f"] end {kind} " in line), default=None)
            for kind in ("train", "sharpness")}
    correlate_start = next((t for t, line in lines if line.startswith("sweep: ") and "--results=" in line), None)
    return {"command": " ".join(argv[1:]), "exit_code": proc.returncode, "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1), "last_train_end_s": last["train"],
            "last_sharpness_end_s": last["sharpness"], "correlate_start_s": correlate_start,
            "correlate_seconds": round(wall - correlate_start, 1) if correlate_start is not None else None}


def findings(workdir: Path) -> dict:
    """What the study found: Table 3, the sharpness correlations, and each run's premise."""
    out: dict = {"runs": []}
    for run_dir in runfolder.iter_run_dirs(workdir):
        result = runfolder.read_json(run_dir / runfolder.RESULT) if (run_dir / runfolder.RESULT).exists() else {}
        config = runfolder.read_config(run_dir).raw
        out["runs"].append({"run": run_dir.name, "batch_size": config["batch_size"], "lr": config["lr"],
                            "status": result.get("status"), "epochs": result.get("epochs"),
                            "final_train_loss": result.get("final_train_loss"),
                            "final_train_accuracy": result.get("final_train_accuracy"),
                            "best_test_accuracy": result.get("best_test_accuracy"),
                            "sharpness": (run_dir / runfolder.SHARPNESS).exists()})
    corr = workdir / "correlate"
    if (corr / "table3.csv").exists():
        with open(corr / "table3.csv") as f:
            out["table3"] = [{k: r[k] for k in ("subset", "n", "spearman_rho", "spearman_p", "kendall_tau")}
                             for r in csv.DictReader(f)]
    if (corr / "sharpness.csv").exists():
        with open(corr / "sharpness.csv") as f:
            out["sharpness_table"] = list(csv.DictReader(f))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default="flags/quick.flags")
    parser.add_argument("--workdir", default=None, help="default: a fresh folder under /tmp (must not exist)")
    parser.add_argument("--out", default=None, help="write the record as JSON here too")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sweep_bench_")) / "quick"
    if workdir.exists():
        sys.exit(f"{workdir} exists: the benchmark times a sweep from nothing")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    record = {"machine": f"{platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} cores",
              "python": platform.python_version(), "git_commit": commit + ("-dirty" if dirty else ""),
              "load_average_before": os.getloadavg(), "workdir": str(workdir)}
    record.update(run_sweep(args.flagfile, workdir))
    record["load_average_after"] = os.getloadavg()
    record.update(findings(workdir))
    runs = record["runs"]
    summary = {
        "wall_seconds": record["wall_seconds"], "cpu_seconds": record["cpu_seconds"],
        "idle_estimate_seconds": round(record["cpu_seconds"] / len(os.sched_getaffinity(0)), 1),
        "load_average_before": record["load_average_before"], "load_average_after": record["load_average_after"],
        "runs_by_status": {s: sum(r["status"] == s for r in runs) for s in {r["status"] for r in runs}},
        "min_final_train_accuracy": min((r["final_train_accuracy"] for r in runs
                                         if r["final_train_accuracy"] is not None), default=None),
        "max_epochs": max((r["epochs"] or 0 for r in runs), default=None),
        "with_sharpness": sum(r["sharpness"] for r in runs), "table3": record.get("table3")}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
