"""Figures of the theory binaries, drawn on `matplotlib.figure.Figure` objects (no pyplot, no backend to
choose) and written atomically as PNG and PDF by `lrbs_tf.core.figures.save`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from lrbs_tf.core import figures
from lrbs_tf.theory.nqm_tune import Tuned


def plot_nqm(results: dict[str, list[Tuned]], critical: dict[str, float | None], stem: Path,
             title: str) -> list[Path]:
    """Steps to target vs batch size (log-log) per optimizer; dashed: perfect scaling from the smallest
    batch size; dotted: the infinite-batch floor; a marker at the critical batch size."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    shown = [r.steps for rows in results.values() for r in rows if np.isfinite(r.steps) and r.steps > 0]
    for i, (name, rows) in enumerate(results.items()):
        color = f"C{i}"
        finite = [r for r in rows[:-1] if np.isfinite(r.steps)]
        if not finite:
            continue
        b = np.array([r.batch_size for r in finite])
        s = np.array([r.steps for r in finite])
        ax.plot(b, s, "o-", color=color, ms=3.5, label=name)
        ax.plot(b, s[0] * b[0] / b, "--", color=color, lw=0.8, alpha=0.6)
        floor = rows[-1].steps
        if np.isfinite(floor):
            ax.axhline(floor, color=color, ls=":", lw=0.8, alpha=0.8)
        bc = critical.get(name)
        if bc is not None:
            ax.plot([bc], [2.0 * floor], "D", color=color, ms=6, mfc="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if shown:  # the perfect-scaling lines would otherwise stretch the axis far below any data
        ax.set_ylim(min(shown) / 3.0, max(shown) * 3.0)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("steps to target loss")
    ax.set_title(title, fontsize=9)
    ax.plot([], [], "k--", lw=0.8, label="perfect scaling")
    ax.plot([], [], "k:", lw=0.8, label="B = inf")
    ax.plot([], [], "kD", mfc="none", label="critical B (2x floor)")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return figures.save(fig, stem)


def plot_bound_sweep(ratios: Sequence[float], gaps: Sequence[float], run_ratio: float, flip_ratio: float,
                     measured_gap: float | None, stem: Path, title: str) -> list[Path]:
    """He et al. Theorem 2 bound vs eta/S (log-log), the run's eta/S, the slope flip and the measured gap."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    ax.plot(ratios, gaps, "-", color="C0", label="Theorem 2 gap bound")
    ax.axvline(run_ratio, color="C1", ls="--", lw=1, label=f"this run: eta/S = {run_ratio:.3g}")
    ax.axvline(flip_ratio, color="C2", ls=":", lw=1, label=f"slope flips (tr Sigma = d): {flip_ratio:.3g}")
    ax.axhline(1.0, color="k", lw=0.8, alpha=0.5, label="vacuous above 1")
    if measured_gap is not None and measured_gap > 0:
        ax.axhline(measured_gap, color="C3", lw=1, label=f"measured 0-1 gap {measured_gap:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eta / S")
    ax.set_ylabel("bound on R(Q) - R^(Q)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return figures.save(fig, stem)
