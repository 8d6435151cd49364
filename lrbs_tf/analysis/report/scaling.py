"""The sections of report.md on optimisation rather than generalisation: steps to result and McCandlish's
fit (lrbs_tf.analysis.scaling), early B_simple beside the fitted B_crit, and the edge of stability.

Formatting only: every number comes from the Analysis (the same numbers as the CSV files).
"""

from __future__ import annotations

import math

from lrbs_tf.analysis.model import Analysis
from lrbs_tf.analysis.report.format import md_table

STABILITY_EDGE = 1.0  # lambda_max lr / 2 at which plain SGD on the quadratic diverges


def _g(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{'0' if low == 0 else _g(low)}, {'∞' if math.isinf(high) else _g(high)}]"


def steps_section(a: Analysis) -> str:
    s = a.steps_to_result
    if s is None:
        return ""
    reached = s.runs["reached"].astype(bool)
    unusable = s.runs[~s.runs["usable"]]
    head = (f"## Steps to result: {s.target}\n\nEach done or diverged run's optimizer steps to the target, "
            "interpolated linearly between the epoch rows that bracket the crossing (steps: metrics.jsonl's "
            "`step`, else epoch x steps_per_epoch); per batch size the fewest over learning rates (the median "
            "over seeds of a cell, a seed that never reached counting as infinitely many), and McCandlish et "
            f"al.'s S(B) = S_min (1 + B_crit / B) fitted on log steps with {s.fit['level'].iloc[0]:.0%} "
            "profile-likelihood intervals. "
            f"{int(reached.sum())} of {len(s.runs)} runs reached it; runs that did not are kept (n_runs) "
            "and never counted as reaching it (n_reached). steps_to_result.csv, steps_to_result_runs.csv, "
            "scaling_fit.csv; Figure 6.")
    if len(unusable):
        head += (f" {len(unusable)} run(s) have no usable step axis and count as not reached "
                 f"(steps_to_result_runs.csv, `note`: first: {unusable['note'].iloc[0]}).")
    steps = md_table(["group", "batch size", "min steps", "best LR", "runs", "reached", "best LR at grid edge"],
                     [[a.label(r), r["batch_size"], _g(r["min_steps"], 4), _g(r["best_lr"]), r["n_runs"],
                       r["n_reached"], "yes" if r["best_lr_at_edge"] else ""] for r in s.steps.to_dict("records")])
    fit = md_table(["group", "S_min", "interval", "B_crit", "interval", "E_min = S_min B_crit", "batch sizes",
                    "residual s.d. (log)", "note"],
                   [[a.label(r), _g(r["s_min"], 4), _interval(r["s_min_low"], r["s_min_high"]), _g(r["b_crit"], 4),
                     _interval(r["b_crit_low"], r["b_crit_high"]), _g(r["e_min"], 4), r["n_batch_sizes"],
                     _g(r["residual_sd_log"], 2), r["note"]] for r in s.fit.to_dict("records")])
    edge = ("A best learning rate at the edge of the grid means the grid may not hold the best one: that batch "
            "size's minimum is then an upper bound, and so is a target met at the first epoch row. Upper bounds "
            "are left out of the fit (scaling_fit.csv `note` names them); an interval that is unbounded is shown "
            "with ∞ or 0 and said so in the note.")
    return "\n\n".join([head, steps, edge, fit])


def critical_batch_section(a: Analysis) -> str:
    c = a.critical_batch
    head = "## Critical batch size and the gradient noise scale"
    if c is None or c.empty:
        return (f"{head}\n\nNo run has B_simple measured early in training (bin/sharpness --epoch=E "
                "--quantities=noise_scale writes sharpness-epoch{E}.json; at the end of training G -> 0 and "
                "B_simple means nothing).")
    text = ("McCandlish et al. predict B_crit ~ B_simple = tr(C) / |G|^2, measured early in training. B_simple "
            "per run from its earliest sharpness-epoch{E}.json with a noise_scale (|G|^2 > 0; runs.csv: "
            "noise_scale_early, noise_scale_epoch), summarised over the group's done runs; B_crit from the fit "
            "above (— without --target_train_loss / --target_test_accuracy). B_crit / B_simple is given only where the "
            "fit bounds B_crit on both sides: a ratio to an unbounded estimate shows no agreement. critical_batch.csv.")
    rows = [[a.label(r), r["n_runs"], f"{r['epoch_min']}..{r['epoch_max']}" if r["epoch_min"] != r["epoch_max"]
             else r["epoch_min"], _g(r["b_simple_median"]), f"{_g(r['b_simple_min'])}..{_g(r['b_simple_max'])}",
             _g(r["b_simple_stderr_median"], 2), _g(r["b_crit"]), _interval(r["b_crit_low"], r["b_crit_high"]),
             _g(r["b_crit_over_b_simple"], 2)] for r in c.to_dict("records")]
    late = [f"{a.label(r)}: {r['n_late']} of {r['n_runs']}" for r in c.to_dict("records") if r["n_late"]]
    warn = ("Measured in the second half of the run's epochs, so not early in training (B_simple grows as G "
            f"-> 0 and then overstates the early value): {'; '.join(late)} runs. Keep an early checkpoint "
            "(bin/train --checkpoint_epochs=1,2,...) and measure it with bin/sharpness --epoch.") if late else ""
    return "\n\n".join([head, text, md_table(["group", "runs", "epoch", "B_simple (median)", "range",
                                              "median s.e.", "B_crit", "interval", "B_crit / B_simple"], rows),
                         *([warn] if warn else [])])


def stability_section(a: Analysis) -> str:
    done = a.done
    have = done[done["stability_ratio"].notna()] if "stability_ratio" in done else done.iloc[:0]
    if have.empty:
        return ""
    rows = []
    for _, label, g in a.groups(have):
        over = g[g["stability_ratio"] >= STABILITY_EDGE]
        rows.append([label, len(g), len(over), _g(float(g["stability_ratio"].median()), 3),
                     _g(float(g["stability_ratio"].max()), 3),
                     ", ".join(f"BS {r.batch_size}/LR {r.lr:g}" for r in over.head(8).itertuples())
                     + (" …" if len(over) > 8 else "")])
    return "\n\n".join([
        "## Edge of stability",
        "stability_ratio = lambda_max x lr / 2 (sharpness.json, runs.csv): plain SGD on a quadratic with that "
        "curvature diverges along the top eigenvector above 1, and Cohen et al. (2021) find full-batch GD "
        "hovering at 1. With momentum mu the limit is (1 + mu) instead. Figure 4 draws 2 / lr beside "
        "lambda_max.",
        md_table(["group", "runs with lambda_max", "at or above 1", "median ratio", "max ratio", "at or above"],
                 rows)])


def sections(a: Analysis) -> list[str]:
    """The sections in report order, the empty ones left out."""
    out = [steps_section(a), stability_section(a)]
    if a.steps_to_result is not None or (a.critical_batch is not None and len(a.critical_batch)):
        out.insert(1, critical_batch_section(a))
    return [s for s in out if s]


__all__ = ["sections"]
