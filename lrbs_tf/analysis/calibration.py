"""The recorded calibration of bin/correlate's primary tests (benchmarks/calibration.py writes it), read at
report time so that the report quotes measured sizes, never numbers typed into code.

`load()` returns the recorded table (benchmarks/calibration.json beside the package) or None when it is
absent (an installed wheel without the repository); `size_summary(table, test)` the largest false-positive
rate of one primary test over the recorded null designs, with its Monte Carlo interval and design.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RECORD = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.json"
CITE = "benchmarks/calibration.md"


def load(path: Path = RECORD) -> dict | None:
    """The recorded calibration table, or None when the file is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def size_summary(table: dict | None, test: str, method: str | None = None) -> str:
    """'at most 5.8% [4.4, 7.5] at alpha 0.05 and 0.9% at 0.005 over 6 null designs (largest: <design>)', or
    '' when nothing is recorded for that test (and method)."""
    if not table:
        return ""
    rows = [r for r in table.get("rows", []) if r["test"] == test and r["kind"] == "null"
            and (method is None or r.get("method") in (method, None, ""))]
    rows = [r for r in rows if r.get("n_tested", 0) > 0]
    if not rows:
        return ""
    worst = max(rows, key=lambda r: r["rate_05"])
    worst_005 = max(r["rate_005"] for r in rows)
    return (f"at most {100 * worst['rate_05']:.1f}% (95% Monte Carlo interval {100 * worst['low_05']:.1f}-"
            f"{100 * worst['high_05']:.1f}%) below 0.05 and at most {100 * worst_005:.2f}% below 0.005 over "
            f"{len(rows)} null design(s), {worst['n_tested']} data sets in the worst ({worst['design']}); "
            f"{CITE}, recorded {table.get('recorded', '?')}")


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's 95% interval for a proportion k / n (Monte Carlo error of a rejection rate)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
