"""Figures of bin/sharpness: the Hessian spectrum and the interpolation curve, each saved as PNG and PDF.

Drawn on `matplotlib.figure.Figure` objects (no pyplot, no backend to choose) and written by
`lrbs_tf.core.figures.save`: a temporary name in the target folder, then os.replace, like every finished file
of a run folder, so a reader never sees half a figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from lrbs_tf.core import figures


def plot_spectrum(grid: np.ndarray, density: np.ndarray, sigma: float, stem: str | os.PathLike,
                  top_eigenvalues: Sequence[float] = (), title: str = "") -> list[Path]:
    """Smoothed spectral density (log scale; it is dominated by the mass near 0) with the top eigenvalues."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    floor = max(float(np.max(density)) * 1e-12, 1e-300)
    ax.semilogy(grid, np.maximum(density, floor), lw=1.2, label=f"SLQ density (sigma={sigma:.3g})")
    for i, lam in enumerate(top_eigenvalues):
        ax.axvline(lam, color="C3", lw=0.8, ls="--", alpha=0.7, label="top eigenvalues (Lanczos)" if i == 0 else None)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density (fraction of eigenvalues per unit)")
    ax.set_ylim(bottom=max(floor, float(np.max(density)) * 1e-8))
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return figures.save(fig, stem)


def plot_interpolation(rows: Sequence[dict], stem: str | os.PathLike, label_a: str, label_b: str) -> list[Path]:
    """Loss (log scale when it spans more than 10x) and accuracy against alpha, train and test; alpha=0 is
    model a, alpha=1 model b."""
    alpha = np.array([r["alpha"] for r in rows])
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, ls in (("train", "-"), ("test", "--")):
        ax_loss.plot(alpha, [r[f"{split}_loss"] for r in rows], ls, marker=".", label=split)
        ax_acc.plot(alpha, [r[f"{split}_accuracy"] for r in rows], ls, marker=".", label=split)
    losses = [r[f"{split}_loss"] for r in rows for split in ("train", "test")]
    finite = [v for v in losses if np.isfinite(v) and v > 0]
    if finite and max(finite) > 10 * min(finite):  # far from the two minima the loss spans decades
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel(f"alpha  (0: {label_a},  1: {label_b})", fontsize=8)
        for x in (0.0, 1.0):
            ax.axvline(x, color="grey", lw=0.6, ls=":")
        ax.legend(fontsize=8)
    return figures.save(fig, stem)
