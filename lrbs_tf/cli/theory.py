"""bin/nqm and bin/bound: the theory in seconds, beside (or before) the experiments.

bin/nqm: for each optimizer and batch size, the learning rate (and momentum or EMA decay) that reaches the
target loss of the Noisy Quadratic Model in the fewest steps; writes <out>/nqm.csv, nqm.json, nqm.png/.pdf.
bin/bound: He et al. (2019) Theorem 2 for a run with a sharpness.json, beside its measured gap; with --out
writes bound.json, bound_sweep.csv, bound.png/.pdf. Bad input: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.core import provenance
from lrbs_tf.core.errors import UsageError
from lrbs_tf.data.specs import known_train_size
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.theory import bounds, nqm

CSV_COLUMNS = ("batch_size", "optimizer", "steps_to_target", "best_lr", "best_momentum", "best_ema_decay",
               "stationary_loss", "steps_infinite_batch", "exact_first_crossing")
STEPS_DEFINITION = ("steps_to_target: the first step t at which the exact expected loss 0.5 sum_i h_i "
                    "E[theta_i(t)^2] is <= target_loss, minimised over the learning rate (and momentum or EMA "
                    "decay on its grid); inf when no setting gets there within nqm_max_steps. "
                    "exact_first_crossing is false where the loss may oscillate and the crossing lies beyond "
                    f"{nqm.VERIFY_BELOW} steps: there it is the crossing found by bisection.")
CRITICAL_DEFINITION = ("critical_batch_size: the batch size at which steps_to_target falls to twice its "
                       "infinite-batch (noise-free) value, interpolated log-log between sweep points; in the "
                       "model steps = S_min (1 + B_crit/B) it is B_crit, where doubling B stops halving the "
                       "steps. null when the sweep does not bracket it.")


def _versions() -> dict:
    return provenance.versions(("numpy", "scipy"))


def check_out_dir(out: str | None, flag: str = "--out") -> Path:
    """The output folder, checked writable (or creatable) without creating anything."""
    if not out:
        raise UsageError(f"{flag} is required (the output folder)")
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag}={out} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag}={out} is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}={out} cannot be created: {parent} is not a writable folder")
    return path


def _fractions(flag: str, values: Sequence[str] | None) -> tuple[float, ...]:
    out = []
    for v in values or ():
        try:
            x = float(v)
        except ValueError:
            raise UsageError(f"--{flag}: {v!r} is not a number") from None
        if not 0.0 <= x < 1.0:
            raise UsageError(f"--{flag}: {v} is outside [0, 1)")
        out.append(x)
    if not out:
        raise UsageError(f"--{flag} is empty")
    return tuple(sorted(set(out)))


@dataclasses.dataclass(frozen=True)
class NQMRequest:
    """A validated bin/nqm invocation (batch sizes ascending, examples per step)."""
    batch_sizes: tuple[int, ...]
    optimizers: tuple[str, ...]
    momenta: tuple[float, ...]
    ema_decays: tuple[float, ...]
    precond_power: float
    dim: int
    target_loss: float
    lr_per_decade: int
    max_steps: int
    out: Path


def nqm_request(batch_sizes: Sequence[str] | None, optimizers: Sequence[str] | None,
                momenta: Sequence[str] | None, ema_decays: Sequence[str] | None, precond_power: float,
                dim: int, target_loss: float, lr_per_decade: int, max_steps: int, out: str | None) -> NQMRequest:
    """Validates bin/nqm's flag values; UsageError names the offending value. Creates nothing."""
    if batch_sizes is None:
        sizes = nqm.DEFAULT_BATCH_SIZES
    else:
        if not [b for b in batch_sizes if b.strip()]:
            raise UsageError("--batch_sizes is empty")
        sizes = []
        for b in batch_sizes:
            try:
                n = int(b)
            except ValueError:
                raise UsageError(f"--batch_sizes: {b!r} is not an integer") from None
            if n <= 0:
                raise UsageError(f"--batch_sizes: {n} is not positive")
            sizes.append(n)
        if len(set(sizes)) != len(sizes):
            raise UsageError(f"--batch_sizes has duplicates: {','.join(batch_sizes)}")
    names = [o.strip() for o in optimizers or () if o.strip()]
    if not names:
        raise UsageError("--optimizers is empty")
    for o in names:
        if o not in nqm.OPTIMIZERS:
            raise UsageError(f"--optimizers: unknown optimizer {o!r}; known: {', '.join(nqm.OPTIMIZERS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--optimizers has duplicates: {','.join(names)}")
    if not 0.0 <= precond_power <= 1.0:
        raise UsageError(f"--precond_power={precond_power} is outside [0, 1]")
    if dim < 1:
        raise UsageError(f"--nqm_dim={dim} must be at least 1")
    initial = 0.5 * float(np.sum(1.0 / np.arange(1, dim + 1)))
    if not 0.0 < target_loss < initial:
        raise UsageError(f"--target_loss={target_loss} must lie in (0, {initial:.4g}), the initial loss")
    if lr_per_decade < 1:
        raise UsageError(f"--lr_per_decade={lr_per_decade} must be at least 1")
    if max_steps < 1:
        raise UsageError(f"--nqm_max_steps={max_steps} must be at least 1")
    return NQMRequest(tuple(sorted(sizes)), tuple(names), _fractions("momenta", momenta),
                      _fractions("ema_decays", ema_decays), float(precond_power), int(dim), float(target_loss),
                      int(lr_per_decade), int(max_steps), check_out_dir(out))


def _fmt(x: float) -> str:
    return "inf" if x == math.inf else ("nan" if not np.isfinite(x) else f"{x:.10g}")


def nqm_sweeps(req: NQMRequest) -> dict[str, list[nqm.Tuned]]:
    """Every requested optimizer's sweep (batch sizes, then B = inf); base sweeps are shared."""
    problem = nqm.default_problem(req.dim, req.target_loss)
    done: dict[str, list[nqm.Tuned]] = {}

    def get(name: str) -> list[nqm.Tuned]:
        if name not in done:
            spec = nqm.optimizer_spec(name, req.precond_power)
            base = None if spec.second is None else get(nqm.base_optimizer(spec).name)
            grid = req.momenta if spec.second == "momentum" else req.ema_decays
            done[name] = nqm.sweep(problem, spec, req.batch_sizes, grid, base=base,
                                   lr_per_decade=req.lr_per_decade, max_steps=req.max_steps)
        return done[name]

    return {name: get(name) for name in req.optimizers}


def run_nqm(req: NQMRequest, log: Callable[[str], None] = print) -> dict:
    """Computes the sweeps and writes nqm.csv, nqm.json and nqm.png/.pdf into req.out; returns the summary."""
    start = time.perf_counter()
    results = nqm_sweeps(req)
    critical = {name: nqm.critical_batch_size(req.batch_sizes, [r.steps for r in rows[:-1]], rows[-1].steps)
                for name, rows in results.items()}
    seconds = time.perf_counter() - start
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, rows in results.items():
        for r in rows[:-1]:
            writer.writerow([int(r.batch_size), name, _fmt(r.steps), _fmt(r.lr), _fmt(r.momentum),
                             _fmt(r.ema_decay), _fmt(r.stationary_loss), _fmt(rows[-1].steps),
                             "true" if r.exact else "false"])
    summary = {
        "problem": {"curvatures": "h_i = 1/i", "noise": "C = H (c_i = h_i)", "init_second_moment": 1.0,
                    "dim": req.dim, "target_loss": req.target_loss,
                    "initial_loss": nqm.default_problem(req.dim, req.target_loss).initial_loss},
        "settings": {"batch_sizes": list(req.batch_sizes), "optimizers": list(req.optimizers),
                     "momenta": list(req.momenta), "ema_decays": list(req.ema_decays),
                     "precond_power": req.precond_power, "lr_per_decade": req.lr_per_decade,
                     "max_steps": req.max_steps},
        "definitions": {"steps_to_target": STEPS_DEFINITION, "critical_batch_size": CRITICAL_DEFINITION},
        "optimizers": {name: {"critical_batch_size": critical[name], "steps_infinite_batch": rows[-1].steps,
                              "best_lr_infinite_batch": rows[-1].lr, "best_momentum_infinite_batch": rows[-1].momentum,
                              "best_ema_decay_infinite_batch": rows[-1].ema_decay,
                              "settings_evaluated": sum(r.evaluated for r in rows)}
                       for name, rows in results.items()},
        "seconds": seconds, "command": sys.argv, "versions": _versions()}
    from lrbs_tf.theory.plots import plot_nqm  # matplotlib only when writing

    req.out.mkdir(parents=True, exist_ok=True)
    runfolder.atomic_write_text(req.out / "nqm.csv", buf.getvalue())
    runfolder.atomic_write_json(req.out / "nqm.json", summary)
    title = (f"NQM: h_i = 1/i, d = {req.dim}, C = H, target {req.target_loss:g}"
             + (f", P = H^-{req.precond_power:g}" if any(o.startswith("precond") for o in req.optimizers) else ""))
    plot_nqm(results, critical, req.out / "nqm", title)
    for name, rows in results.items():
        bc = critical[name]
        log(f"{name:>16}: steps {_fmt(rows[0].steps)} at B={req.batch_sizes[0]}, {_fmt(rows[-2].steps)} at "
            f"B={req.batch_sizes[-1]}, {_fmt(rows[-1].steps)} at B=inf; critical batch size "
            + ("not bracketed by the sweep" if bc is None else f"{bc:.4g}"))
    log(f"wrote {req.out}/nqm.csv, nqm.json, nqm.png, nqm.pdf ({seconds:.1f} s)")
    return summary


def _main(f: flags.FlagValues) -> int:
    req = nqm_request(f.batch_sizes, f.optimizers, f.momenta, f.ema_decays, f.precond_power, f.nqm_dim,
                      f.target_loss, f.lr_per_decade, f.nqm_max_steps, f.out)
    run_nqm(req)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """bin/nqm, python -m lrbs_tf.nqm and the lrbs-nqm console script."""
    run_app("nqm", _main, argv)


@dataclasses.dataclass(frozen=True)
class BoundRequest:
    """A validated bin/bound invocation: the run's sharpness record and what the bound needs beside it."""
    sharpness_path: Path
    record: dict
    lr: float
    batch_size: int
    num_train: int
    delta: float
    noise_model: str
    momentum: float
    measured_gap: float | None
    out: Path | None


def _mistyped_numbers(record: dict, integers: Sequence[str], numbers: Sequence[str]) -> list[str]:
    """`key=value` of each present, non-null key of `record` that is not an int (`integers`) or a finite
    number (`numbers`); JSON strings and booleans are neither."""
    check = [(k, runfolder.is_int) for k in integers] + [(k, runfolder.is_number) for k in numbers]
    return [f"{k}={record[k]!r}" for k, ok in check if record.get(k) is not None and not ok(record[k])]


def bound_request(sharpness_json: str | None, num_train: int | None, delta: float, noise_model: str,
                  lr: float | None, batch_size: int | None, out: str | None) -> BoundRequest:
    """Reads sharpness.json (and the run's config.json / result.json beside it) and validates the rest."""
    if not sharpness_json:
        raise UsageError("--sharpness_json is required (a sharpness.json or the run folder holding it)")
    path = Path(sharpness_json)
    if path.is_dir():
        path = path / runfolder.SHARPNESS
    record = runfolder.read_json(path)
    if not isinstance(record, dict):
        raise UsageError(f"{path} does not hold a JSON object")
    mistyped = _mistyped_numbers(record, ("num_params",), ("trace", "grad_cov_trace", "lambda_max"))
    top = record.get("top_eigenvalues")
    if top is not None and not (isinstance(top, list) and all(runfolder.is_number(v) for v in top)):
        mistyped.append(f"top_eigenvalues={top!r}")
    if mistyped:  # a string "12" is not the number 12: a file edited by hand, or not bin/sharpness's
        raise UsageError(f"{path} has {', '.join(mistyped)}, not numbers")
    run_dir = path.parent
    config = record.get("run_config") or {}  # what bin/sharpness copied of it, for a file without its folder
    if (run_dir / runfolder.CONFIG).is_file():
        config = {**config, **runfolder.read_config(run_dir).raw}
    if not isinstance(config, dict):
        raise UsageError(f"{path} has run_config={config!r}, not a JSON object")
    mistyped = _mistyped_numbers(config, ("num_train",), ("momentum",))
    if mistyped:
        raise UsageError(f"{run_dir}: the run's settings have {', '.join(mistyped)}, not numbers")
    lr = lr if lr is not None else config.get("lr")
    batch_size = batch_size if batch_size is not None else config.get("batch_size")
    if not runfolder.is_number(lr) or not lr > 0:
        raise UsageError(f"learning rate {lr!r} is not a finite positive number (pass --bound_lr)")
    if not runfolder.is_int(batch_size) or batch_size <= 0:
        raise UsageError(f"batch size {batch_size!r} is not a positive integer (pass --bound_batch_size)")
    dataset = record.get("dataset") or config.get("dataset")
    if num_train is None:  # the run's own count (config.json records it), else the dataset's known size
        num_train = config.get("num_train") or known_train_size(dataset)
        if num_train is None:
            raise UsageError(f"training-set size of dataset {dataset!r} is unknown: pass --num_train")
    if num_train < 1:
        raise UsageError(f"--num_train={num_train} must be at least 1")
    if not 0.0 < delta < 1.0:
        raise UsageError(f"--delta={delta} must lie in (0, 1)")
    result = runfolder.read_result(run_dir)
    gap = None
    if result is not None and math.isfinite(result.final_train_accuracy - result.final_test_accuracy):
        gap = result.final_train_accuracy - result.final_test_accuracy
    return BoundRequest(path, record, float(lr), int(batch_size), int(num_train), float(delta), noise_model,
                        float(config.get("momentum") or 0.0), gap, check_out_dir(out) if out else None)


def run_bound(req: BoundRequest, log: Callable[[str], None] = print) -> dict:
    """Computes the bound report, prints it, and writes bound.json, bound_sweep.csv, bound.png/.pdf if asked."""
    try:
        report = bounds.bound_report(req.record, req.lr, req.batch_size, req.num_train, req.delta, req.noise_model)
    except ValueError as e:
        raise UsageError(f"{req.sharpness_path}: {e}") from None
    report.update(sharpness_json=str(req.sharpness_path), measured_gap=req.measured_gap,
                  measured_gap_definition="final_train_accuracy - final_test_accuracy (0-1 error gap) from "
                                          "result.json",
                  approximations=[
                      "OU stationary distribution of plain SGD at a quadratic minimum (He et al. eq. 13-17)"
                      + (f"; this run used momentum {req.momentum:g}, which the theory does not cover"
                         if req.momentum else ""),
                      "A: the measured top eigenvalues, the other d - k all equal to (trace - their sum)/(d - k)",
                      f"C: {req.noise_model} surrogate from grad_cov_trace (per-example gradient covariance on "
                      f"{req.record.get('num_examples')} examples)",
                      "the bound is on the stationary distribution Q = N(theta*, Sigma), not the final weights"],
                  versions=_versions())
    log(f"He et al. Theorem 2 at eta={req.lr:g}, S={req.batch_size}, N={req.num_train}, d={report['num_params']}: "
        f"gap bound {report['gap_bound']:.4g}" + (" (vacuous: >= 1)" if report["vacuous"] else "")
        + (f"; measured 0-1 gap {req.measured_gap:.4g}" if req.measured_gap is not None else ""))
    trend = ("holds (the bound grows with S/eta here)" if report["assumption2"]
             else "fails (the bound shrinks with S/eta here)")
    log(f"tr Sigma = {report['trace_sigma']:.4g} vs d = {report['num_params']}: Assumption 2 {trend}"
        + f"; slope flips at eta/S = {report['flip_lr_over_batch_size']:.4g}, where the bound is "
        f"{report['gap_bound_at_flip']:.4g}; eta * lambda_max = {report['lr_times_lambda_max']:.4g}")
    if req.out is not None:
        from lrbs_tf.theory.plots import plot_bound_sweep

        req.out.mkdir(parents=True, exist_ok=True)
        runfolder.atomic_write_json(req.out / "bound.json", report)
        sweep = report["sweep"]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(list(sweep))
        for row in zip(*sweep.values()):
            writer.writerow([_fmt(v) if isinstance(v, float) else v for v in row])
        runfolder.atomic_write_text(req.out / "bound_sweep.csv", buf.getvalue())
        plot_bound_sweep(sweep["ratio"], sweep["gap"], report["lr_over_batch_size"],
                         report["flip_lr_over_batch_size"], req.measured_gap, req.out / "bound",
                         f"{req.sharpness_path.parent.name}: d={report['num_params']}, N={req.num_train}, "
                         f"C {req.noise_model}")
        log(f"wrote {req.out}/bound.json, bound_sweep.csv, bound.png, bound.pdf")
    return report


def _bound_main(f: flags.FlagValues) -> int:
    run_bound(bound_request(f.sharpness_json, f.num_train, f.delta, f.noise_model, f.bound_lr,
                            f.bound_batch_size, f.out))
    return 0


def bound_main(argv: Sequence[str] | None = None) -> None:
    """bin/bound, python -m lrbs_tf.bound and the lrbs-bound console script."""
    run_app("bound", _bound_main, argv)
