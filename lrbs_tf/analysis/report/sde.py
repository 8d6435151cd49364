"""report.md's section on the SDE approximation (lrbs_tf.analysis.sde, issue 25): per cell, plain SGD against
SVAG at the largest l, the cells where the approximation holds and where it fails, the recorded size of the
test, and the ratio test repeated on the cells where it holds."""

from __future__ import annotations

import math

import pandas as pd

from lrbs_tf.analysis import calibration
from lrbs_tf.analysis.report.format import cut, fmt_p, md_table
from lrbs_tf.analysis.sde import SDE, SDE_ALPHA, SDE_FILE, TEST_METHOD

TITLE = "## The SDE approximation: SGD against SVAG"
CALIBRATION_TEST = "sde"  # the test's name in benchmarks/calibration.json's `sde` rows


def _points(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _cell_name(r: dict) -> str:
    return f"BS {r['batch_size']}, lr {r['lr']:g}"


def _table(cells: pd.DataFrame) -> str:
    rows = []
    for r in cells.to_dict("records"):
        low, high = r["l_low"], r["l_high"]
        rows.append([r["group"], r["batch_size"], f"{r['lr']:g}", f"{r['ratio']:g}", r["seeds_paired"],
                     f"{_points(r[f'acc_mean_l{low}'])} / {_points(r[f'acc_mean_l{high}'])}",
                     f"{_points(r['diff_acc'])} ± {_points(r['se_acc'])}", fmt_p(r["p_acc"], SDE_ALPHA, r["p_holm_acc"]),
                     fmt_p(r["p_cell_acc"], SDE_ALPHA),
                     f"{r[f'loss_mean_l{low}']:.3g} / {r[f'loss_mean_l{high}']:.3g}",
                     f"{r['diff_log_loss']:.2f}" if math.isfinite(r["diff_log_loss"]) else "—",
                     fmt_p(r["p_log_loss"], SDE_ALPHA, r["p_holm_log_loss"]), r["sde_holds"], r["note"]])
    shown, more = cut(rows, "cells", SDE_FILE)
    return md_table(["group", "BS", "lr", "BS/LR", "seeds", "best test acc. % (l low / high)",
                     "difference (points) ± s.e.", "p", "p (cell alone)", "final train loss (l low / high)",
                     "Δ ln loss", "p",
                     "SDE holds", "note"], shown) + more


def _verdicts(cells: pd.DataFrame) -> str:
    parts = []
    for group, g in cells.groupby("group", sort=False):
        named = {v: ", ".join(_cell_name(r) for r in g[g["sde_holds"] == v].to_dict("records")) or "none"
                 for v in ("yes", "no", "untested")}
        parts.append(f"**{group}** (l = {g['l_low'].iloc[0]} against l = {g['l_high'].iloc[0]}): the SDE "
                     f"approximation holds (no difference beyond the seed noise) in {int((g['sde_holds'] == 'yes').sum())} "
                     f"of {len(g)} cells ({named['yes']}); fails in {int((g['sde_holds'] == 'no').sum())} "
                     f"({named['no']})" + (f"; untested in {named['untested']}" if named["untested"] != "none" else "")
                     + ".")
    return "\n\n".join(parts)


def _spread(cells: pd.DataFrame) -> str:
    sd = cells["sd_diff_acc"][cells["sd_diff_acc"] > 0]  # 0: the seeds' differences tie (accuracy is discrete)
    if len(sd) < 2:
        return ""
    return (f"The seeds' spread of the accuracy difference ranges over {_points(sd.min())}-{_points(sd.max())} "
            f"points between cells (a factor of {sd.max() / sd.min():.1f}; the size below is measured with "
            "equal and with 4-fold unequal noise).")


def _ratio_rows(t: pd.DataFrame, which: str) -> list[list]:
    return [[which, r["measure"], r.get("n_cells", ""), r.get("p_ratio_method", ""), f"{r['p_ratio']:.3g}"
             if isinstance(r["p_ratio"], float) and math.isfinite(r["p_ratio"]) else "—", r.get("reason", "")]
            for r in t.to_dict("records")]


def _ratio(s: SDE) -> str:
    intro = ("The ratio test (section \"Does the ratio alone govern?\", `p_ratio`) repeated on the plain-SGD "
             "(l = 1) runs of the cells where the approximation holds, beside the same test on the l = 1 runs of "
             "every compared cell. The SDE predicts that only lr/B matters where it holds; a small p there "
             "says the ratio does not govern even inside the SDE's domain.")
    if s.ratio_test.empty:
        return intro + "\n\nNo cell where the approximation holds has l = 1 runs to test."
    rows = _ratio_rows(s.ratio_test, "cells where the SDE holds") + _ratio_rows(s.ratio_test_all, "every compared cell")
    return intro + "\n\n" + md_table(["runs", "measure", "cells", "method", "p_ratio", "reason"], rows)


def section(s: SDE | None) -> str:
    """The section; a pointer to bin/train --svag when no cell has runs at two values of l."""
    if s is None or s.cells.empty:
        return (f"{TITLE}\n\nNo cell has runs at two values of SVAG's l (bin/train --svag=L; e.g. "
                "flags/sde/svag_mnist1d.flags).")
    size = calibration.size_summary((calibration.load() or {}).get("sde"), CALIBRATION_TEST)
    return "\n\n".join([
        TITLE,
        "SVAG (Li, Malladi & Arora 2021; bin/train --svag=l) runs l steps of lr/l, each on r1 g1 + r2 g2 of two "
        "independent minibatches, for every SGD step: the same SDE time, the SDE's noise, and a discretisation "
        "that vanishes as l grows. Where plain SGD (l = 1) and the largest l end alike, SGD behaves as its SDE "
        f"in that cell (and the linear scaling rule can hold); where they differ, it does not. `{SDE_FILE}`: one "
        "row per cell, pooled over l. Test (`" + TEST_METHOD + "`): the difference l = 1 minus l_max paired by "
        "seed (a seed's runs share their initial weights), its noise pooled over the group's cells; accuracy in "
        "points, the final training loss on a log scale; Holm over every cell and both measures of a group; a "
        f"cell fails when an adjusted p < {SDE_ALPHA:g} (bold: raw p < {SDE_ALPHA:g}; `*`: adjusted too) or "
        "when only one l diverged. \"Holds\" means no difference was detected: the s.e. says how large one "
        "could hide. Pooling assumes the cells' seed noise is alike; `p (cell alone)` is the cell's own paired "
        "t (seeds - 1 degrees of freedom), valid without that assumption but weak with few seeds. "
        + _spread(s.cells),
        (f"Measured size of the family (any cell of a group rejected when no cell differs): {size}." if size
         else f"The test's size is measured by benchmarks/calibration.py --sde ({calibration.CITE}); no "
         "recorded SDE table was found."),
        _verdicts(s.cells),
        _table(s.cells),
        _ratio(s),
    ])
