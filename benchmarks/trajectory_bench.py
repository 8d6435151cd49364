#!/usr/bin/env python3
"""A curvature trajectory: one bin/sharpness process for all kept epochs against one process per epoch.

    .venv/bin/python benchmarks/trajectory_bench.py --run=outputs/stability/gd_mnist1d/mlp-mnist1d-bs4000-lr0.2-s0
    .venv/bin/python benchmarks/trajectory_bench.py --run=RUN --epochs=13 --rounds=2 --flags='--quantities=eigenvalues'

`--run` is a finished run folder that kept checkpoints (bin/train --checkpoint_geometric / --checkpoint_every);
it is only read: each round copies it (without its sharpness-epoch files, eigenvectors and curvature.csv)
into a fresh temporary folder. `--epochs` of its kept epochs, spread evenly over them, are measured both
ways, in alternating order from round to round, so drift of a noisy machine hits both alike:
- one process: `bin/sharpness --ckpt=COPY --epoch=E1,E2,...` (data and model loaded, functions traced once);
- per epoch: `bin/sharpness --ckpt=COPY --epoch=E` once per epoch, one after another (the way before issue 24).
Recorded: wall and CPU seconds (user + system of the child processes) of each way per round, their medians,
the speed-up, and whether every epoch's numbers agree between the two ways (to the last bit). Printed as
markdown; saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sharpness_many_bench import timed_run  # noqa: E402  (benchmarks/ is this script's sys.path[0])

from lrbs_tf.curvature import trajectory  # noqa: E402
from lrbs_tf.runs import folder as runfolder  # noqa: E402

COMPARED = ("lambda_max", "trace", "batch_sharpness", "ggn_lambda_max", "ggn_trace")


def _copy(run: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="trajectory_bench_"))
    shutil.copytree(run, root / run.name, ignore=shutil.ignore_patterns(
        "sharpness-epoch*.json", "eigenvectors-epoch*.npy", trajectory.CURVATURE_CSV, "hessian_spectrum-*", "tb"))
    return root / run.name


def _numbers(run: Path, epochs: list[int]) -> dict:
    return {e: {k: runfolder.read_json(run / f"sharpness-epoch{e}.json").get(k) for k in COMPARED} for e in epochs}


def _spread(kept: list[int], n: int) -> list[int]:
    if n >= len(kept):
        return kept
    return sorted({kept[round(i * (len(kept) - 1) / (n - 1))] for i in range(n)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--epochs", type=int, default=13, help="kept epochs measured (spread evenly)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flags", default="--quantities=eigenvalues",
                        help="bin/sharpness flags of both ways, as on a shell line")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "trajectory.json"))
    args = parser.parse_args()
    run = Path(args.run)
    epochs = _spread(trajectory.kept_epochs(run), args.epochs)
    binary = [sys.executable, str(REPO / "bin" / "sharpness")]
    flags = shlex.split(args.flags)
    rounds = []
    for r in range(args.rounds):
        result = {}
        for way in (("one", "per_epoch") if r % 2 == 0 else ("per_epoch", "one")):
            copy = _copy(run)
            try:
                if way == "one":
                    wall, cpu = timed_run(binary + [f"--ckpt={copy}", f"--epoch={','.join(map(str, epochs))}", *flags])
                else:
                    wall = cpu = 0.0
                    for e in epochs:
                        w, c = timed_run(binary + [f"--ckpt={copy}", f"--epoch={e}", *flags])
                        wall, cpu = wall + w, cpu + c
                result[way] = {"wall": wall, "cpu": cpu, "numbers": _numbers(copy, epochs)}
            finally:
                shutil.rmtree(copy.parent, ignore_errors=True)
            print(f"round {r + 1}: {way}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        result["same_numbers"] = result["one"]["numbers"] == result["per_epoch"]["numbers"]
        rounds.append(result)
    med = {w: {k: statistics.median(r[w][k] for r in rounds) for k in ("wall", "cpu")} for w in ("one", "per_epoch")}
    record = {"run": str(run), "epochs": epochs, "flags": flags, "rounds": [
        {w: {k: r[w][k] for k in ("wall", "cpu")} for w in ("one", "per_epoch")} | {"same_numbers": r["same_numbers"]}
        for r in rounds], "median": med,
        "speedup_wall": med["per_epoch"]["wall"] / med["one"]["wall"],
        "speedup_cpu": med["per_epoch"]["cpu"] / med["one"]["cpu"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_end": os.getloadavg()},
        "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.json)
    existing = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(existing + [record], indent=2) + "\n")
    print(f"| way | {' | '.join(f'round {i + 1} wall / CPU s' for i in range(len(rounds)))} | median wall s | median CPU s |")
    print("|---|" + "---|" * (len(rounds) + 2))
    for way, name in (("per_epoch", f"{len(epochs)} processes (one per epoch)"), ("one", "one process")):
        cells = " | ".join(f"{r[way]['wall']:.1f} / {r[way]['cpu']:.1f}" for r in rounds)
        print(f"| {name} | {cells} | {med[way]['wall']:.1f} | {med[way]['cpu']:.1f} |")
    print(f"speed-up {record['speedup_wall']:.1f}x wall, {record['speedup_cpu']:.1f}x CPU; same numbers in every "
          f"round: {all(r['same_numbers'] for r in rounds)}; saved {path}")


if __name__ == "__main__":
    main()
