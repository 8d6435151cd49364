"""What bin/train's terminal progress bar (--progress) costs: the quick study's model trained with and
without it, in a pseudo-terminal as a user would see it.

    .venv/bin/python benchmarks/progress_bench.py                     # 3 interleaved rounds, medians
    .venv/bin/python benchmarks/progress_bench.py --rounds=5 --epochs=30 --out=/tmp/progress.json

Method: each run is a fresh `bin/train` process (flags/quick.flags' MLP, 4 x 128, on MNIST-1D, batch 32,
one thread) whose stdout is a pseudo-terminal, so the bar draws exactly as in a shell; the runs alternate
(with, without, with, ...) so load from other processes falls on both; the figure compared is the sum of
`train_seconds` over the epochs after the first (metrics.jsonl: the training steps alone; the first epoch
traces the functions), its median over the rounds. The load average is recorded beside it.
Results: benchmarks/progress.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--arch=mlp", "--mlp_depth=4", "--mlp_width=128", "--dataset=mnist1d", "--batch_size=32", "--lr=0.1",
         "--intra_op_threads=1", "--inter_op_threads=1", "--checkpoint_seconds=1000"]


def train(workdir: Path, progress: bool, epochs: int, repo: Path = REPO) -> dict:
    """One bin/train run in a pseudo-terminal; its training seconds (epochs 2..) and the bytes it drew."""
    master, slave = pty.openpty()
    drawn = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    flag = "--progress" if progress else "--noprogress"
    proc = subprocess.run([sys.executable, str(repo / "bin" / "train"), *MODEL, f"--epochs={epochs}", flag,
                           f"--workdir={workdir}"], stdout=slave, stderr=subprocess.PIPE, text=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=1800)
    os.close(slave)
    reader.join(timeout=5)
    os.close(master)
    if proc.returncode:
        raise SystemExit(f"bin/train failed: {proc.stderr.decode()[-2000:]}")
    run_dir = next(p.parent for p in workdir.rglob("metrics.jsonl"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"train_seconds": sum(r["train_seconds"] for r in rows[1:]), "bytes_drawn": len(drawn)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=None)
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose bin/train runs (e.g. an older "
                        "commit's, exported with git archive, to compare)")
    opts = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.rounds):
            for name in ("with", "without") if i % 2 == 0 else ("without", "with"):
                results[name].append(train(Path(tmp) / f"{name}{i}", name == "with", opts.epochs, Path(opts.repo)))
    med = {k: statistics.median(r["train_seconds"] for r in v) for k, v in results.items()}
    record = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "repo": opts.repo, "epochs": opts.epochs, "rounds": opts.rounds, "load_before": load_before,
              "load_after": os.getloadavg(), "runs": results, "median_train_seconds": med,
              "overhead": med["with"] / med["without"] - 1}
    print(json.dumps({k: record[k] for k in ("median_train_seconds", "overhead", "load_before", "load_after")}))
    if opts.out:
        Path(opts.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
