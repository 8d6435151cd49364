"""bin/sharpness --interpolate: loss and accuracy along the line between two runs (Jastrzebski et al. Fig. 4).

    bin/sharpness --interpolate=outputs/<a>,outputs/<b> --out=DIR   # -> DIR/interpolation.csv, .json, plot

Both run folders are checked (finished, same architecture and data) before anything is computed; the files
are written at the end, atomically.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from lrbs_tf.core.errors import UsageError
from lrbs_tf.curvature.settings import DEFAULTS, INTERP_BATCH, INTERP_BN_STATS
from lrbs_tf.curvature.targets import first_examples, load_checked_data, load_model, resolve_run_dir, versions
from lrbs_tf.runs import folder as runfolder

INTERPOLATION_CSV = "interpolation.csv"
INTERPOLATION_JSON = "interpolation.json"
INTERPOLATION_STEM = "interpolation"   # + .png / .pdf


def parse_alphas(alpha_range: Sequence[str]) -> list[float]:
    """START,STOP,NUM -> sorted linspace with 0 and 1 added (each model's own point is always measured)."""
    try:
        start, stop, num = float(alpha_range[0]), float(alpha_range[1]), int(alpha_range[2])
    except (ValueError, IndexError, TypeError):
        raise UsageError(f"--alpha_range={','.join(map(str, alpha_range))} is not START,STOP,NUM") from None
    if len(alpha_range) != 3 or num < 2 or not stop > start:
        raise UsageError(f"--alpha_range={','.join(map(str, alpha_range))}: need START < STOP and NUM >= 2")
    grid = np.round(np.linspace(start, stop, num), 10)
    return sorted(set(float(a) for a in grid) | {0.0, 1.0})


def interpolate(run_a: str, run_b: str, out: str, alphas: Sequence[float],
                num_examples: int = DEFAULTS["num_examples"], batch_size: int = INTERP_BATCH,
                bn_stats: str = INTERP_BN_STATS[0], log=print) -> list[dict]:
    """Loss and accuracy along (1 - alpha) theta_a + alpha theta_b, on the first num_examples training
    examples and the first min(num_examples, test size) test examples (0 = all), in chunks of batch_size.
    Writes out/interpolation.csv, out/interpolation.json and the plot; returns the rows."""
    from lrbs_tf.curvature.hvp import make_batches
    from lrbs_tf.curvature.line import check_same_architecture, interpolation_curve
    from lrbs_tf.curvature.plots import plot_interpolation

    if not out:
        raise UsageError("--interpolate needs --out=DIR for the curve")
    if bn_stats not in INTERP_BN_STATS:
        raise UsageError(f"--interp_bn_stats={bn_stats}; valid: {', '.join(INTERP_BN_STATS)}")
    if num_examples < 0 or batch_size < 1:
        raise UsageError(f"--num_examples={num_examples} must be >= 0 and the batch size {batch_size} >= 1")
    configs = [resolve_run_dir(r) for r in (run_a, run_b)]
    for key in ("arch", "dataset", "num_params"):
        if configs[0].raw.get(key) != configs[1].raw.get(key):
            raise UsageError(f"{run_a} and {run_b} differ in {key}: {configs[0].raw.get(key)!r} vs "
                             f"{configs[1].raw.get(key)!r}; interpolation needs the same model on the same data")
    models = [load_model(Path(r) / runfolder.MODEL, c) for r, c in zip((run_a, run_b), configs)]
    try:
        check_same_architecture(*models)
    except ValueError as e:
        raise UsageError(f"{run_a} and {run_b}: {e}") from None
    c = configs[0]
    data = load_checked_data(c.data_source, c.data_dir, c.data_path, models[0])
    train = first_examples(data, num_examples)
    test = first_examples(data, min(num_examples, len(data.y_test)), split="test")
    start = time.perf_counter()
    rows = interpolation_curve(models[0], models[1], alphas, make_batches(*train, batch_size),
                               make_batches(*test, batch_size), bn_stats=bn_stats)
    out_dir = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["alpha", "train_loss", "train_accuracy", "test_loss", "test_accuracy"],
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: repr(float(v)) for k, v in r.items()})
    plot_interpolation(rows, out_dir / INTERPOLATION_STEM, Path(run_a).name, Path(run_b).name)
    runfolder.atomic_write_json(out_dir / INTERPOLATION_JSON, {
        "run_a": str(run_a), "run_b": str(run_b), "alphas": list(alphas), "num_train_examples": len(train[1]),
        "num_test_examples": len(test[1]), "bn_stats": bn_stats, "seconds": time.perf_counter() - start,
        "rows": rows, "versions": versions()})
    runfolder.atomic_write_text(out_dir / INTERPOLATION_CSV, buf.getvalue())
    log(f"wrote {out_dir / INTERPOLATION_CSV}: {len(rows)} alphas from {alphas[0]} to {alphas[-1]}")
    return rows
