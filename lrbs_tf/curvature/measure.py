"""What bin/sharpness computes for one model: `measure` runs every asked-for quantity (its settings:
lrbs_tf.curvature.settings) on one objective and returns the fields of sharpness.json.

Importing this module does not import TensorFlow (the binary checks its input first); `measure` does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from lrbs_tf.core.errors import UsageError
from lrbs_tf.curvature.settings import DEFAULT_HVP_BATCH, Settings
from lrbs_tf.runs import folder as runfolder

if TYPE_CHECKING:
    from lrbs_tf.curvature.slq import SpectrumResult



def measure(model, x: np.ndarray, y: np.ndarray, settings: Settings, weight_decay: float = 0.0,
            batch_size: int = DEFAULT_HVP_BATCH, log=print, traces: dict | None = None,
            train_batch_size: int | None = None, keep: dict | None = None
            ) -> tuple[dict, SpectrumResult | None]:
    """Computes `settings.quantities` for `model` on examples x (N, ...) float32, y (N,) int.

    Returns (the sharpness.json fields, the SLQ result for plotting or None). Never changes the model.
    traces: a dict the caller keeps across calls on the same model object (measured at other weights, e.g.
    one model per architecture with each run's weights set into it): the traced functions are then built
    once, not once per call; the numbers are the same either way.
    train_batch_size: the run's training batch size, the minibatch of batch_sharpness (required for it).
    keep: a dict that receives what sharpness.json does not hold: "eigenvectors", the (d, top_k) float64
    top eigenvectors of H (for the eigenspace overlap of a trajectory, curvature.trajectory).
    """
    from lrbs_tf.curvature import eigen, hvp, sharpness_measures, slq, trace
    from lrbs_tf.curvature.line import Evaluator
    from lrbs_tf.curvature.progress import Meter, run_passes

    start = time.perf_counter()
    wd = weight_decay if settings.include_weight_decay else 0.0
    traces = {} if traces is None else traces
    obj = hvp.keras_objective(model, x, y, batch_size, bn_mode=settings.bn_mode, hvp_mode=settings.hvp_mode,
                              weight_decay=wd, traces=traces)
    if settings.top_k > obj.dim:
        raise UsageError(f"--top_k={settings.top_k} is more than the model's {obj.dim} parameters")
    ev = Evaluator(model, traces)
    loss, accuracy = ev.evaluate([np.asarray(v.value) for v in model.trainable_variables],
                                 [np.asarray(v.value) for v in model.non_trainable_variables], obj.batches)
    out: dict = {key: None for key in (
        "lambda_max", "top_eigenvalues", "eigen_converged", "eigen_solver", "trace", "trace_stderr",
        "trace_num_probes", "trace_converged", "frobenius_norm", "frobenius_stderr", "spectrum", "eps_sharpness",
        "eps_sharpness_perturbed_loss", "avg_sharpness", "avg_sharpness_stderr", "grad_cov_trace", "grad_norm",
        *runfolder.NOISE_SCALE_KEYS, *runfolder.BATCH_SHARPNESS_KEYS, *runfolder.GGN_KEYS,
        *runfolder.ADAPTIVE_KEYS)}
    out.update(num_examples=obj.num_examples, num_params=obj.dim, train_loss=loss, train_accuracy=accuracy)
    costs: dict = {}
    spectrum = None
    q = set(settings.quantities)
    meter = Meter(run_passes(settings), log, memo=traces)  # the cost estimate when large, progress lines
    hv = meter.wrap(obj.hvp)
    timed = _timer(obj, meter, costs, log)
    if "eigenvalues" in q:
        res = timed("eigenvalues", lambda: eigen.top_k(hv, obj.dim, settings.top_k, settings.eig_method,
                                                       settings.tol, settings.max_hvps,
                                                       settings.seed_for("eigenvalues")), cap=settings.max_hvps)
        vals = [float(v) for v in res.eigenvalues]
        out.update(lambda_max=vals[0] if vals else None, top_eigenvalues=vals, eigen_converged=res.converged,
                   eigen_solver=res.method)
        if keep is not None:
            keep["eigenvectors"] = np.asarray(res.eigenvectors)
    if "trace" in q:
        res = timed("trace", lambda: trace.hutchinson(hv, obj.dim, settings.hutchinson_rtol,
                                                      settings.max_probes, seed=settings.seed_for("trace")),
                    cap=settings.max_probes)
        out.update(trace=res.trace, trace_stderr=res.trace_stderr, trace_num_probes=res.num_probes,
                   trace_converged=res.converged, frobenius_norm=res.frobenius_norm,
                   frobenius_stderr=res.frobenius_stderr)
    if "spectrum" in q:
        spectrum = timed("spectrum", lambda: slq.slq(hv, obj.dim, settings.slq_steps, settings.slq_runs,
                                                     seed=settings.seed_for("spectrum")),
                         cap=settings.slq_steps * settings.slq_runs)
        grid, sigma = spectrum.default_grid()
        slq_trace, slq_trace_se = spectrum.trace_estimate()
        out["spectrum"] = {"nodes": [t.tolist() for t in spectrum.nodes],
                           "weights": [w.tolist() for w in spectrum.weights], "sigma": sigma,
                           "slq_trace": slq_trace, "slq_trace_stderr": slq_trace_se}
    if "eps_sharpness" in q:
        res = timed("eps_sharpness", lambda: sharpness_measures.eps_sharpness(
            meter.objective(obj), settings.eps, settings.eps_steps, seed=settings.seed_for("eps_sharpness")),
            kind="gradient", cap=settings.eps_steps)
        out.update(eps_sharpness=res.sharpness, eps_sharpness_perturbed_loss=res.perturbed_loss)
    if "avg_sharpness" in q:
        res = timed("avg_sharpness", lambda: sharpness_measures.average_sharpness(
            meter.objective(obj), settings.noise_sigma, settings.noise_draws, seed=settings.seed_for("avg_sharpness")),
            kind="loss", cap=2 * settings.noise_draws + 1)
        out.update(avg_sharpness=res.mean_increase, avg_sharpness_stderr=res.stderr)
    _adaptive_quantities(obj, settings, timed, out)
    if q & {"grad_cov", "noise_scale"}:
        # One per-example pass serves both, in the Hessian's BN mode (batch mode: the rows of each batch's
        # Jacobian, differentiated through its statistics), so tr C / tr H in bin/bound is taken in one mode.
        name = "grad_cov" if "grad_cov" in q else "noise_scale"
        res = timed(name, lambda: sharpness_measures.grad_cov_trace(
            hvp.keras_losses_fn(model, settings.bn_mode, traces), obj.params, obj.batches, traces=traces,
            jacobian=settings.bn_mode == "batch"))
        if "grad_cov" in q:
            out.update(grad_cov_trace=res.trace, grad_norm=res.grad_norm)
        if "noise_scale" in q:
            out.update(res.noise.fields() if res.noise else {"noise_scale_note": "needs at least 2 examples"})
            if name != "noise_scale":
                costs["noise_scale"] = {"seconds": 0.0, "hvps": 0, "gradients": 0, "losses": 0,
                                        "shared_with": name}
    _stability_quantities(model, x, y, settings, obj, wd, batch_size, train_batch_size, traces, timed, out)
    out.update(objective_loss=obj.loss(), num_hvps=obj.num_hvps, num_gradients=obj.num_gradients,
               num_losses=obj.num_losses,
               seconds=time.perf_counter() - start, costs=costs)
    return out, spectrum


def _timer(obj, meter, costs: dict, log):
    """timed(name, fn, extra, kind, cap): runs estimator `fn` under `meter` (progress lines), records its
    seconds and products in `costs[name]` and logs them; `timed.meter` is the meter."""
    def timed(name: str, fn, extra=lambda result: {}, kind: str = "hvp", cap: int = 0):
        meter.begin(name, kind, cap)
        t0, h0, g0, l0 = time.perf_counter(), obj.num_hvps, obj.num_gradients, obj.num_losses
        result = fn()
        costs[name] = {"seconds": time.perf_counter() - t0, "hvps": obj.num_hvps - h0,
                       "gradients": obj.num_gradients - g0, "losses": obj.num_losses - l0, **extra(result)}
        log(f"{name}: {costs[name]['hvps']} HVPs, {costs[name]['gradients']} gradients, "
            f"{costs[name]['losses']} losses" + "".join(f", {v} {k}" for k, v in extra(result).items())
            + f", {costs[name]['seconds']:.1f} s")
        return result

    timed.meter = meter
    return timed


def _adaptive_quantities(obj, settings: Settings, timed, out: dict) -> None:
    """Adaptive sharpness (curvature.adaptive) into `out`, on the same objective (examples, BN mode, weight
    decay) as every other quantity, each variant on its own random stream."""
    from lrbs_tf.curvature import adaptive

    q = set(settings.quantities)
    for name, p, rho in (("adaptive_sharpness", "2", settings.adaptive_rho),
                         ("adaptive_sharpness_linf", "inf", settings.adaptive_rho_linf)):
        if name in q:
            res = timed(name, lambda p=p, rho=rho, name=name: adaptive.worst_case(
                timed.meter.objective(obj), rho, p, settings.adaptive_steps, settings.adaptive_restarts,
                settings.seed_for(name)), kind="gradient", cap=settings.adaptive_steps * settings.adaptive_restarts)
            out[name] = res.sharpness
    if "adaptive_sharpness_avg" in q:
        res = timed("adaptive_sharpness_avg", lambda: adaptive.average_case(
            timed.meter.objective(obj), settings.adaptive_rho_avg, settings.adaptive_draws,
            settings.seed_for("adaptive_sharpness_avg")), kind="loss", cap=2 * settings.adaptive_draws + 1)
        out.update(adaptive_sharpness_avg=res.mean_increase, adaptive_sharpness_avg_stderr=res.stderr)


def _stability_quantities(model, x, y, settings: Settings, obj, wd: float, batch_size: int,
                          train_batch_size: int | None, traces: dict, timed, out: dict) -> None:
    """batch_sharpness and the Gauss-Newton quantities into `out` (measure's keys), timed by `timed`."""
    from lrbs_tf.curvature import eigen, hvp, trace

    q = set(settings.quantities)
    if "batch_sharpness" in q:
        if not train_batch_size:
            raise UsageError("batch_sharpness needs the run's training batch size (its config.json)")
        from lrbs_tf.curvature.batch_sharpness import batch_sharpness

        # Batch-mode BN: a minibatch is one chunk, normalised with its own statistics as in training.
        chunk = train_batch_size if settings.bn_mode == "batch" else batch_size
        res = timed("batch_sharpness", lambda: batch_sharpness(
            hvp.keras_losses_fn(model, settings.bn_mode, traces), obj.params, x, y, train_batch_size,
            settings.batch_sharpness_batches, settings.seed_for("batch_sharpness"), chunk, settings.hvp_mode, wd,
            traces), lambda r: {"minibatch_gradients": r.num_gradients, "minibatch_hvps": r.num_hvps,
                                "minibatch_size": r.batch_size})
        out.update(batch_sharpness=res.mean, batch_sharpness_stderr=res.stderr,
                   batch_sharpness_batches=res.batches, batch_sharpness_batch_size=res.batch_size)
    if q & {"ggn_eigenvalues", "ggn_trace"}:
        from lrbs_tf.curvature.ggn import GaussNewton
        from lrbs_tf.curvature.hvp import keras_logits_fn

        gn = GaussNewton(keras_logits_fn(model, settings.bn_mode, traces), obj.params, obj.batches, wd, traces)
        if "ggn_eigenvalues" in q:
            gvp = timed.meter.wrap(gn.gvp, "gvp")
            res = timed("ggn_eigenvalues", lambda: eigen.top_k(gvp, gn.dim, settings.top_k, settings.eig_method,
                                                               settings.tol, settings.max_hvps,
                                                               settings.seed_for("ggn_eigenvalues")),
                        # the first GGN quantity: all products so far
                        lambda r: {"gvps": gn.num_gvps}, kind="gvp", cap=settings.max_hvps)
            vals = [float(v) for v in res.eigenvalues]
            out.update(ggn_lambda_max=vals[0] if vals else None, ggn_top_eigenvalues=vals,
                       ggn_eigen_converged=res.converged)
        if "ggn_trace" in q:
            before = gn.num_gvps
            gvp = timed.meter.wrap(gn.gvp, "gvp")
            res = timed("ggn_trace", lambda: trace.hutchinson(gvp, gn.dim, settings.hutchinson_rtol,
                                                              settings.max_probes, seed=settings.seed_for("ggn_trace")),
                        lambda r: {"gvps": gn.num_gvps - before}, kind="gvp", cap=settings.max_probes)
            out.update(ggn_trace=res.trace, ggn_trace_stderr=res.trace_stderr, ggn_trace_num_probes=res.num_probes,
                       ggn_trace_converged=res.converged)
