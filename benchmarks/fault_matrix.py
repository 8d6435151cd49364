"""Runs the whole fault matrix, with more seeds than CI, and records the outcome of every cell.

    .venv/bin/python benchmarks/fault_matrix.py                     # 4 seeds per kill cell (about 40 min on 2 cores)
    .venv/bin/python benchmarks/fault_matrix.py --seeds=10 --out=/tmp/faults.json
    .venv/bin/python benchmarks/fault_matrix.py --only=kill         # tests/test_faults_kill.py alone
    .venv/bin/python benchmarks/fault_matrix.py --only=lock         # concurrent starts (tests/test_run_lock.py)

It is pytest over tests/test_faults_kill.py, tests/test_faults_disk_full.py and tests/test_run_lock.py (two
and three bin/train started on one run folder at seeded random offsets) with every test selected (the
CI ones and those marked slow) and LRBS_KILL_SEEDS=<seeds>, so each cell is exactly the test
docs/reliability.md names. What it writes (default benchmarks/fault_matrix.json): per test (cell and seed)
its outcome (passed, failed, skipped, with the first line of the reason) and seconds, per cell the counts,
the exit status of pytest, the machine, the load average before and after, and the versions. The exit
status is pytest's: 0 when every cell passed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = {"kill": ["tests/test_faults_kill.py"], "disk": ["tests/test_faults_disk_full.py"],
         "lock": ["tests/test_run_lock.py"]}  # concurrent starts of one run: 2 and 3 processes, random offsets


def _outcome(case: ET.Element) -> tuple[str, str]:
    for kind in ("failure", "error", "skipped"):
        node = case.find(kind)
        if node is not None:
            message = (node.get("message") or node.text or "").strip().splitlines()
            return ("failed" if kind != "skipped" else "skipped"), (message[0] if message else "")
    return "passed", ""


def run_matrix(files: list[str], seeds: int, junit: Path) -> tuple[int, list[dict]]:
    """Runs pytest on `files` (every marker) and returns its exit status and one record per test."""
    env = {**os.environ, "LRBS_KILL_SEEDS": str(seeds)}
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "", f"--junitxml={junit}", *files]
    code = subprocess.run(argv, cwd=REPO, env=env).returncode
    records = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, reason = _outcome(case)
        name = case.get("name", "")
        records.append({"test": f"{case.get('classname', '')}::{name}", "cell": re.sub(r"\[.*\]$", "", name),
                        "params": name[len(re.sub(r"\[.*\]$", "", name)):], "outcome": outcome,
                        "reason": reason, "seconds": round(float(case.get("time", 0.0)), 1)})
    return code, records


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "pytest"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per kill cell (LRBS_KILL_SEEDS)")
    parser.add_argument("--only", choices=sorted(FILES), help="one part of the matrix (default: all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "fault_matrix.json"))
    args = parser.parse_args()
    files = FILES[args.only] if args.only else [f for fs in FILES.values() for f in fs]
    load_before, start = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        code, records = run_matrix(files, args.seeds, Path(tmp) / "junit.xml")
    cells: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        cells[r["cell"]][r["outcome"]] += 1
    summary = {"command": " ".join(sys.argv), "seeds": args.seeds, "pytest_exit_status": code,
               "seconds": round(time.time() - start), "load_average_before": load_before,
               "load_average_after": os.getloadavg(), "cores": os.cpu_count(), "machine": platform.platform(),
               "versions": _versions(), "cells": {c: dict(n) for c, n in sorted(cells.items())}, "tests": records}
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    for cell, counts in sorted(cells.items()):
        print(f"{cell}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"wrote {args.out} ({summary['seconds']} s, pytest exit status {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
