"""A run's curvature over training: which kept epochs bin/sharpness --epoch=all / --epoch=1,5,20 measures,
the top eigenvectors it keeps beside each sharpness-epoch<E>.json, and the run's `curvature.csv`, one row
per measured epoch (bin/sharpness is its one writer; rebuilt whole from the epoch files, atomically, after
every trajectory measurement, so it always holds every epoch measured so far).

Does the curvature settle? Per row, against the row before it (the previous measured epoch):

- `topk_overlap` = |U_s' U_t|_F^2 / k, U_s, U_t the (d, k) orthonormal top-k eigenvectors of H at the two
  epochs: 1 when the two top-k eigenspaces coincide, k / d expected for unrelated random subspaces (Gur-Ari,
  Roberts & Dyer 2018). Invariant to the sign and to any rotation of the vectors within the subspace, so
  near-degenerate eigenvalues do not spoil it. From `eigenvectors-epoch<E>.npy` (float32, d x k), which
  bin/sharpness writes beside each epoch's file when it measures `eigenvalues`.
- `lambda_max_change`, `trace_change`, `ggn_trace_change`: (x_t - x_s) / |x_s|.

No TensorFlow here.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from lrbs_tf.core.errors import RunFolderError, UsageError
from lrbs_tf.runs import folder as runfolder

CURVATURE_CSV = runfolder.CURVATURE_CSV
EIGENVECTORS_AT_EPOCH = runfolder.EIGENVECTORS_AT_EPOCH
ALL = "all"
EpochSpec = Union[None, str, tuple]  # None: the final model; "all": every kept checkpoint; (E, ...): those

COLUMNS = ("epoch", "step", "train_loss", "lr", "batch_size", "lambda_max", "stability_ratio", "batch_sharpness",
           "batch_sharpness_stderr", "batch_sharpness_ratio", "batch_sharpness_batches", "trace", "trace_stderr",
           "ggn_lambda_max", "ggn_trace", "ggn_trace_stderr", "ggn_ratio", "overlap_k", "topk_overlap",
           "lambda_max_change", "trace_change", "ggn_trace_change", "measured_loss", "num_examples", "bn_mode")


def parse_epochs(values: Sequence[str] | None) -> EpochSpec:
    """--epoch's values: None, 'all', or a tuple of epochs (1-based, each once, ascending); UsageError else."""
    if values is None:
        return None
    values = [str(v).strip() for v in values]
    if values == [ALL]:
        return ALL
    try:
        epochs = sorted({int(v) for v in values})
    except ValueError:
        raise UsageError(f"--epoch={','.join(values)}: give 'all' or epochs, e.g. --epoch=1,5,20") from None
    if not epochs or epochs[0] < 1:
        raise UsageError(f"--epoch={','.join(values)}: {epochs[0] if epochs else 'nothing'} is not an epoch "
                         "(the first is 1)")
    return tuple(epochs)


def kept_epochs(run_dir: str | os.PathLike) -> list[int]:
    """Epochs whose checkpoints the run folder's ckpt/ holds, ascending (checkpoints.candidates: by file)."""
    from lrbs_tf.runs.checkpoints import candidates

    return sorted(e for e, _ in candidates(Path(run_dir) / runfolder.CKPT_DIR))


def epochs_to_measure(run_dir: str | os.PathLike, spec: EpochSpec) -> list[int]:
    """The epochs `spec` names for this run: every kept one for 'all' (RunFolderError when none is kept), or
    the listed ones, each of which must be kept (CheckpointError naming the kept ones, before anything is
    measured)."""
    from lrbs_tf.runs.checkpoints import CheckpointError

    kept = kept_epochs(run_dir)
    if spec == ALL:
        if not kept:
            raise RunFolderError(f"{run_dir} keeps no checkpoint in {runfolder.CKPT_DIR}/ (train with "
                                 "--checkpoint_every, --checkpoint_geometric or --checkpoint_epochs)")
        return kept
    missing = [e for e in spec if e not in kept]
    if missing:
        raise CheckpointError(f"{Path(run_dir) / runfolder.CKPT_DIR} has no checkpoint of epoch {missing[0]} "
                              f"(epochs kept: {', '.join(map(str, kept)) or 'none'})")
    return list(spec)


def eigenvectors_file(epoch: int) -> str:
    return EIGENVECTORS_AT_EPOCH.format(epoch=epoch)


def save_eigenvectors(out_dir: str | os.PathLike, epoch: int, vectors: np.ndarray) -> Path:
    """Writes the (d, k) top eigenvectors of epoch `epoch` as float32 .npy, atomically."""
    path = Path(out_dir) / eigenvectors_file(epoch)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, np.float32))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def subspace_overlap(u: np.ndarray, v: np.ndarray) -> float:
    """|U' V|_F^2 / k for (d, k) matrices with orthonormal columns (k the smaller column count), in [0, 1].
    The columns are re-orthonormalised first (float32 storage, Lanczos to its tolerance)."""
    u, v = np.linalg.qr(np.asarray(u, np.float64))[0], np.linalg.qr(np.asarray(v, np.float64))[0]
    k = min(u.shape[1], v.shape[1])
    return float(np.sum((u.T @ v) ** 2) / k) if k else math.nan


def _num(record: dict, key: str) -> float:
    v = record.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _change(now: float, before: float) -> float:
    return (now - before) / abs(before) if before and math.isfinite(before) and math.isfinite(now) else math.nan


def _load_vectors(run_dir: Path, epoch: int) -> np.ndarray | None:
    path = run_dir / eigenvectors_file(epoch)
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def rows(run_dir: str | os.PathLike) -> list[dict]:
    """curvature.csv's rows: one per sharpness-epoch<E>.json of the run folder, ascending by epoch, with
    step and train_loss from metrics.jsonl (NaN where it has no row for that epoch)."""
    run_dir = Path(run_dir)
    metrics = {r.get("epoch"): r for r in runfolder.read_metrics(run_dir)}
    out: list[dict] = []
    previous: tuple[dict, np.ndarray | None] | None = None
    for epoch, path in runfolder.sharpness_epoch_files(run_dir).items():
        try:
            rec = runfolder.read_json(path)
        except RunFolderError:
            continue
        cfg = rec.get("run_config") or {}
        m = metrics.get(epoch, {})
        lam, ggn = _num(rec, "lambda_max"), _num(rec, "ggn_lambda_max")
        vectors = _load_vectors(run_dir, epoch)
        row = {"epoch": epoch, "step": _num(m, "step"), "train_loss": _num(m, "train_loss"),
               "lr": cfg.get("lr"), "batch_size": cfg.get("batch_size"),
               **{k: _num(rec, k) for k in ("lambda_max", "stability_ratio", "batch_sharpness",
                                            "batch_sharpness_stderr", "batch_sharpness_ratio",
                                            "batch_sharpness_batches", "trace", "trace_stderr", "ggn_lambda_max",
                                            "ggn_trace", "ggn_trace_stderr")},
               "ggn_ratio": ggn / lam if lam and math.isfinite(lam) else math.nan,
               "overlap_k": vectors.shape[1] if vectors is not None else math.nan, "topk_overlap": math.nan,
               "measured_loss": _num(rec, "train_loss"), "num_examples": rec.get("num_examples"),
               "bn_mode": (rec.get("settings") or {}).get("bn_mode")}
        if previous is not None:
            before, before_vectors = previous
            row.update(lambda_max_change=_change(lam, before["lambda_max"]),
                       trace_change=_change(row["trace"], before["trace"]),
                       ggn_trace_change=_change(row["ggn_trace"], before["ggn_trace"]))
            if vectors is not None and before_vectors is not None and vectors.shape[0] == before_vectors.shape[0]:
                row["topk_overlap"] = subspace_overlap(before_vectors, vectors)
        out.append({c: row.get(c, math.nan) for c in COLUMNS})
        previous = (row, vectors)
    return out


def write_curvature_csv(run_dir: str | os.PathLike) -> Path | None:
    """Rebuilds the run's curvature.csv from its epoch files (atomically); None when there is none."""
    import pandas as pd

    table = rows(run_dir)
    if not table:
        return None
    path = Path(run_dir) / CURVATURE_CSV
    runfolder.atomic_write_text(path, pd.DataFrame(table, columns=list(COLUMNS)).to_csv(index=False))
    return path
